"""What the cache reports per route: the hit ratio since start (a gauge) and over the last minute."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from hub.metrics import Counter, Gauge

__all__ = ["RATIO_WINDOW_S", "ROUTES", "Ratio", "Window"]

ROUTES = ("scan", "symbol", "symbols", "universe", "universes", "definitions", "stats")
RATIO_WINDOW_S = 60


class Ratio(Gauge):
    """hits / (hits + misses + coalesced + bypassed) per route since start; no sample without data.
    Over several workers, the ratio of the node's summed requests (a ratio does not add up)."""

    merged_by_kind = False

    def __init__(self, name: str, help_text: str, requests: Counter) -> None:
        super().__init__(name, help_text)
        self._requests = requests

    def points(self) -> Iterable[tuple[dict[str, str], float]]:
        return _ratios(lambda route, result: self._requests.value(route=route, result=result))

    def node_family(self, merged: Mapping[str, Metric]) -> Metric | None:
        requests = merged.get(self._requests.name.removesuffix("_total"))
        counts = {
            (s.labels.get("route"), s.labels.get("result")): s.value
            for s in (requests.samples if requests is not None else ())
        }
        family = GaugeMetricFamily(self.name, self.help)
        for labels, value in _ratios(lambda route, result: counts.get((route, result), 0.0)):
            family.add_sample(self.name, labels, value)
        return family


def _ratios(count: Callable[[str, str], float]) -> Iterable[tuple[dict[str, str], float]]:
    for route in ROUTES:
        total = sum(count(route, r) for r in ("hit", "miss", "coalesced", "bypass"))
        if total:
            yield {"route": route}, count(route, "hit") / total


class Window:
    """Hits and requests per second over the last minute, for a recent ratio."""

    def __init__(self) -> None:
        self._seconds: deque[list[int]] = deque()

    def add(self, hit: bool) -> None:
        now = int(time.monotonic())
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append([now, 0, 0])
            while self._seconds[0][0] <= now - RATIO_WINDOW_S:
                self._seconds.popleft()
        self._seconds[-1][1] += int(hit)
        self._seconds[-1][2] += 1

    def ratio(self) -> tuple[float | None, int]:
        now = int(time.monotonic())
        recent = [s for s in self._seconds if s[0] > now - RATIO_WINDOW_S]
        total = sum(s[2] for s in recent)
        return (round(sum(s[1] for s in recent) / total, 4) if total else None), total
