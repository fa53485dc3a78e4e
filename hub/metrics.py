"""In-process metrics, exposed through prometheus-client (Prometheus text 0.0.4 or OpenMetrics).

Counters, gauges and fixed-bucket histograms with optional labels, plus a per-second rate over a sliding
window for the readiness summary. Each metric keeps its own numbers (cheap on the hot path, readable by
``/health/ready``) and is a prometheus-client *collector*: the library writes the exposition, escaping
and content negotiation included. No global registry: the lifespan builds one :class:`Metrics`, with
its own :class:`Registry`, and hands it to whoever records.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

__all__ = ["Counter", "CounterView", "Gauge", "Histogram", "Metrics", "Registry"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)
RATE_WINDOW_S = 60.0

# How prometheus-client spells a bucket edge ("0.005", "1.0", "+Inf"), as its own histograms do.
_go_float: Callable[[float], str] = floatToGoString  # untyped in the library

Labels = tuple[tuple[str, str], ...]
Point = tuple[dict[str, str], float]  # one sample: its labels and its value
M = TypeVar("M", bound="_Metric")


def _labels(values: dict[str, str]) -> Labels:
    return tuple(sorted(values.items()))


class _Metric:
    """One metric family; a prometheus-client collector (``describe``/``collect``).

    With several workers (:mod:`hub.metrics_files`) each process writes its samples and ``/metrics``
    merges them: counters and histograms are summed, a gauge by its ``multiprocess_mode``
    (prometheus-client's modes); a metric that cannot be merged so computes its node-wide family from
    the merged others (:meth:`node_family`).
    """

    kind = ""
    multiprocess_mode = ""
    merged_by_kind = True  # False: not written per worker; :meth:`node_family` computes it

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text

    def _family(self) -> Metric:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help)
        return GaugeMetricFamily(self.name, self.help)

    def points(self) -> Iterable[Point]:
        """The samples to expose now; a subclass may compute them (read at scrape time)."""
        return ()

    def describe(self) -> list[Metric]:
        return [self._family()]

    def node_family(self, merged: Mapping[str, Metric]) -> Metric | None:
        """The node-wide family from the workers' merged families (by name); None: this metric is
        written by each worker and merged by kind and mode."""
        return None

    def collect(self) -> list[Metric]:
        family = self._family()
        sample_name = family.name + "_total" if self.kind == "counter" else family.name
        for labels, value in self.points():
            family.add_sample(sample_name, labels, value)
        return [family]


class Counter(_Metric):
    """A monotonically increasing count; ``rate()`` is per second over the last minute."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}
        self._recent: deque[list[float]] = deque()  # [second, amount]: at most one entry per second

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        self._values[key] = self._values.get(key, 0.0) + amount
        now = time.monotonic()
        second = float(int(now))
        recent = self._recent
        if recent and recent[-1][0] == second:
            recent[-1][1] += amount
            return
        recent.append([second, amount])
        while recent[0][0] < now - RATE_WINDOW_S:
            recent.popleft()

    def value(self, **labels: str) -> float:
        return self._values.get(_labels(labels), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def rate(self) -> float:
        now = time.monotonic()
        return sum(a for t, a in self._recent if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S

    def points(self) -> Iterable[Point]:
        for key, value in sorted(self._values.items()):
            yield dict(key), value


class CounterView(_Metric):
    """A counter kept elsewhere as a plain number (a hot path cannot afford :meth:`Counter.inc`), read at
    scrape time."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self._read = read

    def value(self) -> float:
        return self._read()

    def points(self) -> Iterable[Point]:
        yield {}, self._read()


class Gauge(_Metric):
    """A value that goes up and down, set directly or read from a callback at scrape time.

    ``multiprocess_mode`` says how several workers' values make the node's: the default,
    ``livemostrecent``, fits what a scrape or check sets about shared state (the newest value of a
    live worker wins); ``livesum`` fits what each worker counts of its own.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float] | None = None,
        *,
        multiprocess_mode: str = "livemostrecent",
    ) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}
        self._stamps: dict[Labels, float] = {}  # when each value was set (UNIX time): the newest wins
        self._read = read
        self.multiprocess_mode = multiprocess_mode

    def set(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        self._values[key] = value
        self._stamps[key] = time.time()

    def replace(self, values: dict[str, float], *, label: str) -> None:
        """Set one labelled value per key and drop labels not given (e.g. a reason no longer seen)."""
        self._values = {_labels({label: key}): value for key, value in values.items()}
        now = time.time()
        self._stamps = dict.fromkeys(self._values, now)

    def stamped(self) -> Iterable[tuple[dict[str, str], float, float]]:
        """:meth:`points` with the time each was set (now for a value read at this moment)."""
        now = time.time()
        for labels, value in self.points():
            yield labels, value, self._stamps.get(_labels(labels), now)

    def value(self, **labels: str) -> float:
        if self._read is not None and not labels:
            return self._read()
        return self._values.get(_labels(labels), 0.0)

    def points(self) -> Iterable[Point]:
        if self._read is not None:
            yield {}, self._read()
        for key, value in sorted(self._values.items()):
            yield dict(key), value


class Histogram(_Metric):
    """Fixed buckets (upper bounds, ``le``), their cumulative counts, the sum and the count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._edges = tuple(_go_float(edge) for edge in (*self.buckets, math.inf))
        self._counts = [0] * (len(self.buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (``times`` observations of it: one event written to many sockets at once)."""
        self._counts[bisect.bisect_left(self.buckets, value)] += times
        self.count += times
        self.sum += value * times

    def quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (the bucket edge it falls in); None when empty."""
        if self.count == 0:
            return None
        target = q * self.count
        running = 0
        for edge, n in zip((*self.buckets, math.inf), self._counts, strict=True):
            running += n
            if running >= target:
                return edge
        return math.inf  # pragma: no cover - the loop always reaches the +Inf bucket

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.help, labels=())

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.help, labels=())
        running = 0
        cumulative: list[tuple[str, float]] = []
        for edge, n in zip(self._edges, self._counts, strict=True):
            running += n
            cumulative.append((edge, float(running)))
        family.add_metric([], cumulative, self.sum)
        return [family]


class Registry(CollectorRegistry):
    """A prometheus-client registry of our metrics, one per :class:`Metrics` (never the global one)."""

    def __init__(self) -> None:
        super().__init__()
        self._ours: dict[str, _Metric] = {}

    def add(self, metric: M) -> M:
        """Register ``metric`` and return it; ValueError when its name is taken."""
        if metric.name in self._ours:
            raise ValueError(f"metric {metric.name} is already registered")
        self.register(metric)
        self._ours[metric.name] = metric
        return metric

    def metrics(self) -> list[_Metric]:
        """Our metrics, in the order they were added."""
        return list(self._ours.values())

    def render(self) -> str:
        """The Prometheus text format, version 0.0.4."""
        return generate_latest(self).decode()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and its content type for a scraper's ``Accept`` header: OpenMetrics when it asks
        for ``application/openmetrics-text``, the text format 0.0.4 otherwise."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self), content_type


class Metrics:
    """The hub's metrics, grouped by the part that records them."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.ingested = r.add(
            Counter("tickstock_events_ingested_total", "Ingest messages received by the writer.")
        )
        self.stored = r.add(Counter("tickstock_events_stored_total", "Events newly stored in PostgreSQL."))
        self.duplicates = r.add(
            Counter("tickstock_events_duplicate_total", "Events whose id was already stored.")
        )
        self.rejected = r.add(Counter("tickstock_events_rejected_total", "Events dead-lettered, by reason."))
        self.published = r.add(
            Counter("tickstock_events_published_total", "Events published to the clean stream.")
        )
        self.redeliveries = r.add(
            Counter(
                "tickstock_writer_redeliveries_total", "Messages received with a delivery count above one."
            )
        )
        self.retries = r.add(
            Counter(
                "tickstock_writer_retries_total",
                "Messages handed back (nak with delay) after a transient failure.",
            )
        )
        self.probes = r.add(
            Counter(
                "tickstock_writer_database_probes_total",
                "Database probes while the writer waits out an outage, by result.",
            )
        )
        self.dead_letters = r.add(
            Counter("tickstock_dead_letters_total", "Dead letters recorded, by reason.")
        )
        self.batch_size = r.add(
            Histogram("tickstock_writer_batch_size", "Messages per writer batch.", SIZE_BUCKETS)
        )
        self.batch_seconds = r.add(
            Histogram("tickstock_writer_batch_seconds", "Time to process one writer batch.")
        )
        self.store_latency = r.add(
            Histogram(
                "tickstock_ingest_to_stored_seconds",
                "From the ingest message's stream timestamp to stored and published.",
            )
        )
        self.http_ingested = r.add(
            Counter("tickstock_http_ingest_total", "Events received over HTTP, by outcome.")
        )
        self.consumer = r.add(Gauge("tickstock_consumer", "Writer consumer state from JetStream, by field."))
        self.dlq_depth = r.add(
            Gauge("tickstock_dead_letters_pending", "Dead letters not replayed, by reason.")
        )
        self.dlq_publish_refused = r.add(
            Counter(
                "tickstock_dlq_publish_refused_total",
                "Dead letters recorded in the table whose DLQ-stream publish JetStream refused (4xx), by code.",
            )
        )
        self.advisories_given_up = r.add(
            Counter(
                "tickstock_advisories_given_up_total",
                "Max-deliveries advisories the watcher stopped retrying; their messages stay in ingest.",
            )
        )
        self.id_conflicts = r.add(
            Counter(
                "tickstock_id_conflicts_total",
                "Events whose id was already stored with a different payload (dead-lettered id_conflict).",
            )
        )
        self.ready = r.add(
            Gauge(
                "tickstock_ready",
                "1 while this node is ready (PostgreSQL and NATS answer, as /health/ready), 0 when not; "
                "checked at each scrape.",
            )
        )
        self.dependency_up = r.add(
            Gauge(
                "tickstock_dependency_up",
                "1 when the dependency answered this node's last check, by dependency.",
            )
        )
        self.partitions_deferred = r.add(
            Counter(
                "tickstock_writer_partition_deferrals_total",
                "Messages kept for a later batch because their month's partition was over the per-batch bound.",
            )
        )

        self.bridge_messages = r.add(
            Counter(
                "tickstock_bridge_messages_total",
                "Redis bridge messages by channel, verdict (forwarded, rejected, dropped) and reason.",
            )
        )
        self.bridge_reconnects = r.add(
            Counter("tickstock_bridge_reconnects_total", "Times the Redis bridge lost its subscription.")
        )
        self.bridge_gap_seconds = r.add(
            Counter(
                "tickstock_bridge_gap_seconds_total",
                "Seconds the Redis bridge was not subscribed after losing Redis (pub/sub loses what is sent then).",
            )
        )

    def render(self) -> str:
        return self.registry.render()
