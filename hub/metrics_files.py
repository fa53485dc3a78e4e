"""One node's metrics over several worker processes, in prometheus-client's multiprocess files.

Each worker writes its metrics' samples into ``<dir>/<type>_<pid>.db`` (prometheus-client's mmap format,
as its own multiprocess values do: ``counter_…``, ``histogram_…``, ``gauge_<mode>_…``) every
:data:`WRITE_INTERVAL_S`, right before it answers a scrape, and when it stops. ``/metrics`` on any
worker then answers for the node: :class:`NodeRegistry` merges every file with prometheus-client's
:class:`~prometheus_client.multiprocess.MultiProcessCollector` (counters and histograms summed, each
gauge by its mode). A file is written whole and renamed into place, so a reader never sees half of
one and a label a worker dropped is gone. The supervisor clears the folder at start and calls
:func:`~prometheus_client.multiprocess.mark_process_dead` when a worker exits (its ``live*`` gauges
leave; its counters stay in the sums, so they never go down). What a worker counted in its last
:data:`WRITE_INTERVAL_S` before a ``kill -9`` is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from hub.metrics import Counter, Gauge, Histogram, Registry

__all__ = ["WRITE_INTERVAL_S", "MetricFiles", "NodeRegistry", "NodeView"]

WRITE_INTERVAL_S = 1.0  # how stale another worker's numbers may be in a scrape

Entry = tuple[str, float, float]  # mmap key, value, timestamp


class MetricFiles:
    """Writes ``registry``'s samples into ``path`` for this process (``pid``) every ``interval_s``
    while entered, and once more on exit."""

    def __init__(
        self, registry: Registry, path: Path, *, interval_s: float = WRITE_INTERVAL_S, pid: int | None = None
    ) -> None:
        self.registry = registry
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def node(self) -> NodeRegistry:
        """The node's metrics, read from every worker's files when collected."""
        return NodeRegistry(self.registry, self.path)

    def view(self) -> NodeView:
        """The node's numbers now (this process's written first), for ``/health/ready``."""
        self.write()
        return NodeView(_merge(self.path))

    def write(self) -> None:
        """Write every metric's current samples (this process's files replaced whole)."""
        files: dict[str, list[Entry]] = defaultdict(list)
        for metric in self.registry.metrics():
            if not metric.merged_by_kind:
                continue  # computed from the merged others at scrape time
            for family in metric.collect():
                if isinstance(metric, Gauge):
                    prefix = f"gauge_{metric.multiprocess_mode}"
                    files[prefix].extend(
                        (_key(family, family.name, labels), value, stamp)
                        for labels, value, stamp in metric.stamped()
                    )
                elif isinstance(metric, Histogram):
                    files["histogram"].extend(_histogram(family))
                else:
                    files["counter"].extend(
                        (_key(family, s.name, s.labels), s.value, 0.0) for s in family.samples
                    )
            if isinstance(metric, Counter):  # its rate over the last minute, summed (never exposed)
                name = _rate_name(metric)
                files["gauge_livesum"].append((mmap_key(name, name, [], [], ""), metric.rate(), 0.0))
        for prefix, entries in files.items():
            _replace(self.path / f"{prefix}_{self.pid}.db", entries)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.write()

    async def __aenter__(self) -> MetricFiles:
        self.path.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._loop(), name="tickstock-metric-files")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):  # the folder may be gone with its node
            self.write()


class NodeRegistry(CollectorRegistry):
    """Every worker's metrics merged, in ``registry``'s order; a metric no worker has written yet (a
    counter never counted) appears as this process has it (with its help and type, no samples)."""

    def __init__(self, registry: Registry, path: Path) -> None:
        super().__init__(auto_describe=False)
        self._ours = registry
        self._path = path
        self.register(_Merged(registry, path))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        encode, content_type = choose_encoder(accept or "")
        return encode(self), content_type


class _Merged:
    def __init__(self, registry: Registry, path: Path) -> None:
        self._registry = registry
        self._path = path

    def collect(self) -> Iterable[Metric]:
        merged = _merge(self._path)
        for metric in self._registry.metrics():
            node = metric.node_family(merged)
            if node is not None:
                yield node
                continue
            for family in metric.collect():
                yield merged.get(family.name, _empty(family))


class NodeView:
    """Totals, rates and quantiles over every worker of the node (what one process's
    :class:`~hub.metrics.Counter` and :class:`~hub.metrics.Histogram` answer for itself)."""

    def __init__(self, merged: Mapping[str, Metric]) -> None:
        self._merged = merged

    def _samples(self, name: str) -> list[Sample]:
        family = self._merged.get(name)
        return family.samples if family is not None else []

    def total(self, counter: Counter, **labels: str) -> float:
        """Summed over the workers, over the samples that carry ``labels`` (all without)."""
        return sum(
            s.value
            for s in self._samples(counter.name.removesuffix("_total"))
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def rate(self, counter: Counter) -> float:
        """Per second over the last minute, as :meth:`hub.metrics.Counter.rate`."""
        return sum(s.value for s in self._samples(_rate_name(counter)))

    def count(self, histogram: Histogram) -> float:
        return sum(s.value for s in self._samples(histogram.name) if s.name.endswith("_count"))

    def quantile(self, histogram: Histogram, q: float) -> float | None:
        """An upper bound of the ``q`` quantile, as :meth:`hub.metrics.Histogram.quantile`."""
        buckets = sorted(
            (float(s.labels["le"]), s.value)
            for s in self._samples(histogram.name)
            if s.name.endswith("_bucket")
        )
        count = buckets[-1][1] if buckets else 0.0
        if count == 0:
            return None
        return next(edge for edge, cumulative in buckets if cumulative >= q * count)


def _rate_name(counter: Counter) -> str:
    return f"{counter.name.removesuffix('_total')}_rate_per_second"


def _merge(path: Path) -> dict[str, Metric]:
    files = glob.glob(os.path.join(path, "*.db"))
    merged = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
    return {m.name: m for m in merged}


def _empty(family: Metric) -> Metric:
    family.samples = []
    return family


def _key(family: Metric, sample: str, labels: dict[str, str]) -> str:
    key: str = mmap_key(family.name, sample, list(labels), list(labels.values()), family.documentation)
    return key


def _histogram(family: Metric) -> list[Entry]:
    """Per-bucket counts (not cumulative) and the sum, as prometheus-client's histograms keep them: the
    merge adds them up across workers and accumulates the buckets and ``_count`` itself."""
    entries: list[Entry] = []
    below = 0.0
    for sample in family.samples:
        if sample.name.endswith("_bucket"):
            entries.append((_key(family, sample.name, sample.labels), sample.value - below, 0.0))
            below = sample.value
        elif sample.name.endswith("_sum"):
            entries.append((_key(family, sample.name, sample.labels), sample.value, 0.0))
    return entries


def _replace(path: Path, entries: list[Entry]) -> None:
    partial = path.with_name(path.name + ".partial")  # not *.db: a scrape never reads it
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    written = MmapedDict(str(partial))  # type: ignore[no-untyped-call]
    try:
        for key, value, stamp in entries:
            written.write_value(key, value, stamp)  # type: ignore[no-untyped-call]
    finally:
        written.close()  # type: ignore[no-untyped-call]
    os.replace(partial, path)
