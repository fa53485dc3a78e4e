"""Several workers' metrics merged into the node's, through prometheus-client's multiprocess files."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from api.cache_metrics import Ratio
from api.cli.serving import metrics_dir
from api.settings import Settings
from hub.metrics import Counter, Gauge, Metrics
from hub.metrics_files import MetricFiles


def _worker(path: Path, pid: int, *, connections: float, ready: float, hits: int, misses: int) -> MetricFiles:
    metrics = Metrics()
    r = metrics.registry
    metrics.stored.inc(10)
    metrics.rejected.inc(2, reason="bad")
    metrics.batch_seconds.observe(0.003)
    metrics.batch_seconds.observe(0.3)
    metrics.ready.set(ready)
    r.add(Gauge("tickstock_ws_connections", "c", read=lambda: connections, multiprocess_mode="livesum"))
    r.add(Gauge("tickstock_ws_queue_high_water", "h", multiprocess_mode="max")).set(connections)
    requests = r.add(Counter("tickstock_cache_requests_total", "r"))
    requests.inc(hits, route="scan", result="hit")
    requests.inc(misses, route="scan", result="miss")
    r.add(Ratio("tickstock_cache_hit_ratio", "ratio", requests))
    files = MetricFiles(r, path, pid=pid)
    path.mkdir(parents=True, exist_ok=True)
    files.write()
    return files


def _samples(files: MetricFiles, accept: str | None = None) -> dict[str, float]:
    body, _ = files.node().exposition(accept)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_the_node_sums_counters_and_histograms_and_merges_gauges_by_mode(tmp_path: Path) -> None:
    first = _worker(tmp_path, 101, connections=3, ready=0, hits=1, misses=3)
    second = _worker(tmp_path, 202, connections=5, ready=1, hits=3, misses=1)  # set last: the newest
    merged = _samples(first)
    assert merged == _samples(second)  # either worker answers for the node
    assert merged["tickstock_events_stored_total"] == 20
    assert merged["tickstock_events_rejected_total{reason=bad}"] == 4
    assert merged["tickstock_writer_batch_seconds_count"] == 4
    assert merged["tickstock_writer_batch_seconds_bucket{le=0.005}"] == 2
    assert merged["tickstock_writer_batch_seconds_bucket{le=+Inf}"] == 4
    assert merged["tickstock_ws_connections"] == 8  # livesum
    assert merged["tickstock_ws_queue_high_water"] == 5  # max
    assert merged["tickstock_ready"] == 1  # livemostrecent: the newest check wins
    assert merged["tickstock_cache_hit_ratio{route=scan}"] == 0.5  # 4 hits of 8, not a sum of ratios
    assert "tickstock_events_published_total" not in merged  # never counted: no sample ...
    body, content_type = first.node().exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert b"# TYPE tickstock_events_published counter" in body  # ... but still described


def test_a_dead_workers_live_gauges_leave_and_its_counts_stay(tmp_path: Path) -> None:
    first = _worker(tmp_path, 101, connections=3, ready=1, hits=1, misses=0)
    _worker(tmp_path, 202, connections=5, ready=1, hits=1, misses=0)
    mark_process_dead(202, str(tmp_path))
    merged = _samples(first)
    assert merged["tickstock_ws_connections"] == 3
    assert merged["tickstock_events_stored_total"] == 20


def test_a_label_a_worker_dropped_is_gone_and_no_partial_file_is_read(tmp_path: Path) -> None:
    files = _worker(tmp_path, 101, connections=1, ready=1, hits=0, misses=0)
    metrics_gauge = next(m for m in files.registry.metrics() if m.name == "tickstock_dead_letters_pending")
    assert isinstance(metrics_gauge, Gauge)
    metrics_gauge.replace({"all": 2.0, "bad": 2.0}, label="reason")
    files.write()
    assert _samples(files)["tickstock_dead_letters_pending{reason=bad}"] == 2
    metrics_gauge.replace({"all": 0.0}, label="reason")
    files.write()
    (tmp_path / "counter_303.db.partial").write_bytes(b"half a file")
    merged = _samples(files)
    assert merged["tickstock_dead_letters_pending{reason=all}"] == 0
    assert "tickstock_dead_letters_pending{reason=bad}" not in merged


def test_the_node_view_answers_totals_rates_counts_and_quantiles_over_workers(tmp_path: Path) -> None:
    first = _worker(tmp_path, 101, connections=1, ready=1, hits=0, misses=0)
    _worker(tmp_path, 202, connections=1, ready=1, hits=0, misses=0)
    metrics = Metrics()  # names only: the view reads the files
    view = first.view()
    assert view.total(metrics.stored) == 20
    assert view.rate(metrics.stored) == 20 / 60  # each worker's rate over the last minute, summed
    assert view.count(metrics.batch_seconds) == 4
    assert view.quantile(metrics.batch_seconds, 0.5) == 0.005
    assert view.quantile(metrics.batch_seconds, 0.95) == 0.5
    assert view.quantile(metrics.store_latency, 0.95) is None  # no sample
    assert view.total(metrics.published) == 0


async def test_files_are_written_while_entered_and_once_more_on_exit(tmp_path: Path) -> None:
    metrics = Metrics()
    async with MetricFiles(metrics.registry, tmp_path / "m", interval_s=0.01) as files:
        metrics.stored.inc(7)
    assert _samples(files)["tickstock_events_stored_total"] == 7
    assert (tmp_path / "m" / f"counter_{os.getpid()}.db").exists()


def test_the_metrics_folder_is_under_the_data_dir_or_a_fresh_temporary_one(tmp_path: Path) -> None:
    assert metrics_dir(Settings(data_dir=tmp_path, port=8123)) == tmp_path.resolve() / "metrics-8123"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    fallback = metrics_dir(Settings(data_dir=blocked, port=8123))
    assert fallback.is_dir() and not fallback.is_relative_to(blocked)
    fallback.rmdir()
