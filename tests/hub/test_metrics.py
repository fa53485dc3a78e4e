"""In-process metrics: counters, gauges, histograms, and their exposition through prometheus-client."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

import hub.metrics
from hub.metrics import RATE_WINDOW_S, Counter, CounterView, Gauge, Histogram, Metrics, Registry

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: Registry) -> Samples:
    """Every sample of the text exposition, read back by prometheus-client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(registry.render())
        for s in family.samples
    }


def one(metric: Counter | CounterView | Gauge | Histogram) -> Samples:
    registry = Registry()
    registry.add(metric)
    return samples(registry)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A settable monotonic clock for hub.metrics only."""
    now = [1000.0]
    monkeypatch.setattr(hub.metrics, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_counter_counts_per_label_set_and_in_total() -> None:
    c = Counter("jobs_total", "Jobs.")
    c.inc()
    c.inc(2, reason="a", node="x")
    c.inc(3, node="x", reason="a")  # label order does not matter
    c.inc(0.5, reason="b")
    assert c.value() == 1
    assert c.value(reason="a", node="x") == 5
    assert c.value(node="x", reason="a") == 5
    assert c.value(reason="b") == 0.5
    assert c.value(reason="never") == 0
    assert c.total() == 6.5
    assert one(c) == {
        ("jobs_total", ()): 1,
        ("jobs_total", (("node", "x"), ("reason", "a"))): 5,
        ("jobs_total", (("reason", "b"),)): 0.5,
    }


def test_counter_rate_is_per_second_over_the_last_minute(clock: list[float]) -> None:
    c = Counter("jobs_total", "Jobs.")
    assert c.rate() == 0
    c.inc(30)
    clock[0] += 30
    c.inc(30, reason="a")
    assert c.rate() == pytest.approx(60 / RATE_WINDOW_S)
    clock[0] += 31  # the first 30 is now older than the window
    assert c.rate() == pytest.approx(30 / RATE_WINDOW_S)
    c.inc(6)  # and recording now forgets it
    assert c.rate() == pytest.approx(36 / RATE_WINDOW_S)
    clock[0] += RATE_WINDOW_S + 1
    assert c.rate() == 0
    assert c.total() == 66  # the rate decays, the count does not


def test_counter_keeps_one_rate_entry_per_second(clock: list[float]) -> None:
    c = Counter("jobs_total", "Jobs.")
    for _ in range(1000):
        c.inc()
    assert len(c._recent) == 1
    clock[0] += 1
    c.inc()
    assert len(c._recent) == 2
    assert c.rate() == pytest.approx(1001 / RATE_WINDOW_S)


def test_counter_view_reads_at_scrape_time() -> None:
    count = [3]
    view = CounterView("frames_total", "Frames.", lambda: count[0])
    registry = Registry()
    registry.add(view)
    assert samples(registry) == {("frames_total", ()): 3}
    count[0] = 7
    assert view.value() == 7
    assert samples(registry) == {("frames_total", ()): 7}


def test_gauge_set_and_labels() -> None:
    g = Gauge("depth", "Depth.")
    assert g.value() == 0
    g.set(3, reason="a")
    g.set(7.25, reason="b")
    g.set(1, reason="a")  # replaces, not adds
    assert g.value(reason="a") == 1
    assert g.value(reason="b") == 7.25
    assert one(g) == {("depth", (("reason", "a"),)): 1, ("depth", (("reason", "b"),)): 7.25}


def test_gauge_with_a_callback_reads_it_at_scrape_time() -> None:
    level = [2.0]
    g = Gauge("level", "Level.", read=lambda: level[0])
    g.set(9, field="other")
    assert g.value() == 2
    assert g.value(field="other") == 9  # labelled values are still the set ones
    level[0] = 4.5
    assert g.value() == 4.5
    assert one(g) == {("level", ()): 4.5, ("level", (("field", "other"),)): 9}


def test_gauge_replace_drops_labels_no_longer_reported() -> None:
    g = Gauge("depth", "per reason")
    g.replace({"all": 3, "not_json": 2, "too_large": 1}, label="reason")
    g.replace({"all": 1, "not_json": 1}, label="reason")
    assert one(g) == {("depth", (("reason", "all"),)): 1, ("depth", (("reason", "not_json"),)): 1}


def test_histogram_buckets_are_cumulative_with_le_upper_bounds() -> None:
    h = Histogram("size", "Size.", buckets=(10, 1, 5))  # sorted on construction
    assert h.buckets == (1, 5, 10)
    for value in (0.5, 1, 3, 5, 7, 20):
        h.observe(value)
    assert h.count == 6
    assert h.sum == 36.5
    assert one(h) == {
        ("size_bucket", (("le", "1.0"),)): 2,  # 0.5 and 1: le is "less than or equal"
        ("size_bucket", (("le", "5.0"),)): 4,
        ("size_bucket", (("le", "10.0"),)): 5,
        ("size_bucket", (("le", "+Inf"),)): 6,
        ("size_sum", ()): 36.5,
        ("size_count", ()): 6,
    }


def test_histogram_quantile_is_the_upper_edge_of_its_bucket() -> None:
    h = Histogram("latency", "Latency.", buckets=(0.1, 0.5, 1.0))
    assert h.quantile(0.5) is None  # nothing observed
    for value in (0.05, 0.2, 0.3, 0.7, 3.0):
        h.observe(value)
    assert h.quantile(0.2) == 0.1
    assert h.quantile(0.5) == 0.5
    assert h.quantile(0.6) == 0.5
    assert h.quantile(0.8) == 1.0
    assert h.quantile(0.95) == math.inf
    assert h.quantile(1.0) == math.inf


def test_histogram_default_buckets_render_float_edges() -> None:
    h = Histogram("seconds", "Seconds.")
    h.observe(0.003)
    found = one(h)
    assert found[("seconds_bucket", (("le", "0.0025"),))] == 0
    assert found[("seconds_bucket", (("le", "0.005"),))] == 1
    assert found[("seconds_bucket", (("le", "10.0"),))] == 1
    assert found[("seconds_sum", ())] == 0.003


def test_label_values_are_escaped() -> None:
    registry = Registry()
    c = registry.add(Counter("odd_total", "Odd label values."))
    assert isinstance(c, Counter)
    nasty = 'say "hi" \\ C:\\path\nnext line'
    c.inc(reason=nasty)
    text = registry.render()
    assert 'odd_total{reason="say \\"hi\\" \\\\ C:\\\\path\\nnext line"} 1.0\n' in text
    assert samples(registry) == {("odd_total", (("reason", nasty),)): 1}


def test_registry_refuses_a_name_twice() -> None:
    registry = Registry()
    registry.add(Gauge("up", "Up."))
    with pytest.raises(ValueError, match="up is already registered"):
        registry.add(Counter("up", "Up again."))


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()  # no global registry: several hubs in one process (the tests) coexist
    a.stored.inc(3)
    assert samples(a.registry)[("tickstock_events_stored_total", ())] == 3
    assert ("tickstock_events_stored_total", ()) not in samples(b.registry)


def test_registry_renders_families_in_registration_order() -> None:
    registry = Registry()
    registry.add(Counter("b_total", "B."))
    registry.add(Gauge("a", "A.", read=lambda: -1.5))
    assert registry.render() == (
        "# HELP b_total B.\n# TYPE b_total counter\n# HELP a A.\n# TYPE a gauge\na -1.5\n"
    )


def test_non_finite_values_render_as_prometheus_spells_them() -> None:
    registry = Registry()
    registry.add(Gauge("hi", "Hi.", read=lambda: math.inf))
    registry.add(Gauge("lo", "Lo.", read=lambda: -math.inf))
    text = registry.render()
    assert "\nhi +Inf\n" in text and "\nlo -Inf\n" in text
    assert samples(registry) == {("hi", ()): math.inf, ("lo", ()): -math.inf}


def test_exposition_follows_the_accept_header() -> None:
    m = Metrics()
    m.rejected.inc(reason="not_json")
    m.batch_size.observe(5)
    body, content_type = m.registry.exposition("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["tickstock_events_rejected"].type == "counter"
    assert [(s.name, s.labels, s.value) for s in families["tickstock_events_rejected"].samples] == [
        ("tickstock_events_rejected_total", {"reason": "not_json"}, 1)
    ]
    for accept in (None, "", "text/plain", "*/*", "application/json"):
        body, content_type = m.registry.exposition(accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8", accept
        assert body.decode() == m.render()


def test_hub_metrics_render_as_valid_exposition_text() -> None:
    m = Metrics()
    m.ingested.inc(5)
    m.stored.inc(4)
    m.rejected.inc(reason="not_json")
    m.dead_letters.inc(reason="not_json")
    m.batch_size.observe(5)
    m.batch_seconds.observe(0.02)
    m.store_latency.observe(0.3)
    m.consumer.set(12, field="pending")
    m.dlq_depth.set(1, reason="all")
    families = {f.name: f for f in parse_text(m.render())}
    kinds = {name: family.type for name, family in families.items()}
    assert (
        kinds.items()
        >= {
            "tickstock_events_ingested": "counter",
            "tickstock_events_stored": "counter",
            "tickstock_events_rejected": "counter",
            "tickstock_dead_letters": "counter",
            "tickstock_writer_batch_size": "histogram",
            "tickstock_writer_batch_seconds": "histogram",
            "tickstock_ingest_to_stored_seconds": "histogram",
            "tickstock_consumer": "gauge",
            "tickstock_dead_letters_pending": "gauge",
        }.items()
    )
    found = samples(m.registry)
    assert found[("tickstock_events_ingested_total", ())] == 5
    assert found[("tickstock_events_rejected_total", (("reason", "not_json"),))] == 1
    assert found[("tickstock_consumer", (("field", "pending"),))] == 12
    assert found[("tickstock_writer_batch_size_bucket", (("le", "1.0"),))] == 0
    assert found[("tickstock_writer_batch_size_bucket", (("le", "5.0"),))] == 1
    assert found[("tickstock_writer_batch_size_bucket", (("le", "+Inf"),))] == 1
    assert found[("tickstock_writer_batch_size_count", ())] == 1
    # Families with nothing recorded still declare themselves, without samples.
    assert families["tickstock_events_duplicate"].samples == []
    assert families["tickstock_events_duplicate"].documentation == "Events whose id was already stored."
