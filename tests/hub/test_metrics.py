"""In-process metrics: counters, gauges, histograms and their Prometheus text rendering."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from typing import Any

import pytest

import hub.metrics
from hub.metrics import RATE_WINDOW_S, Counter, Gauge, Histogram, Metrics, Registry

# The text format, version 0.0.4: https://prometheus.io/docs/instrumenting/exposition_formats/
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"(?P<name>{_NAME})(?:\{{(?P<labels>[^\n]*)\}})? (?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
_COMMENT = re.compile(rf"# (?P<kind>HELP|TYPE) (?P<name>{_NAME}) (?P<rest>.*)")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}


def _labels(text: str | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    text = text or ""
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match, f"bad label set at {text[pos:]!r}"
        name, raw = match.group(1), match.group(2)
        assert name not in labels, f"label {name} repeated"
        labels[name] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], raw)
        pos = match.end()
    return labels


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """A strict reader of the text format: every line is a HELP, a TYPE or a sample of a declared
    family; returns ``{family: {"help", "type", "samples": [(name, labels, value)]}}``."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            comment = _COMMENT.fullmatch(line)
            assert comment, f"bad comment line {line!r}"
            family = families.setdefault(comment["name"], {"samples": []})
            key = comment["kind"].lower()
            assert key not in family, f"{key} of {comment['name']} given twice"
            assert not family["samples"], f"{key} of {comment['name']} after its samples"
            family[key] = comment["rest"]
            continue
        sample = _SAMPLE.fullmatch(line)
        assert sample, f"bad sample line {line!r}"
        name = sample["name"]
        owner = next((f for f, fam in families.items()
                      if name == f or name in (f + s for s in _SUFFIXES.get(fam.get("type", ""), ()))), None)
        assert owner is not None, f"sample {name} has no TYPE line before it"
        families[owner]["samples"].append((name, _labels(sample["labels"]), float(sample["value"])))
    for name, family in families.items():
        assert family.get("type") in ("counter", "gauge", "histogram"), name
        assert "help" in family, name
    return families


def _values(families: dict[str, dict[str, Any]], family: str) -> dict[tuple[str, Any], float]:
    return {(n, tuple(sorted(labels.items()))): v for n, labels, v in families[family]["samples"]}


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
    assert list(c.samples()) == [
        "jobs_total 1",
        'jobs_total{node="x",reason="a"} 5',
        'jobs_total{reason="b"} 0.5',
    ]


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


def test_gauge_set_and_labels() -> None:
    g = Gauge("depth", "Depth.")
    assert g.value() == 0
    g.set(3, reason="a")
    g.set(7.25, reason="b")
    g.set(1, reason="a")  # replaces, not adds
    assert g.value(reason="a") == 1
    assert g.value(reason="b") == 7.25
    assert list(g.samples()) == ['depth{reason="a"} 1', 'depth{reason="b"} 7.25']


def test_gauge_with_a_callback_reads_it_at_scrape_time() -> None:
    level = [2.0]
    g = Gauge("level", "Level.", read=lambda: level[0])
    g.set(9, field="other")
    assert g.value() == 2
    assert g.value(field="other") == 9  # labelled values are still the set ones
    level[0] = 4.5
    assert g.value() == 4.5
    assert list(g.samples()) == ["level 4.5", 'level{field="other"} 9']


def test_histogram_buckets_are_cumulative_with_le_upper_bounds() -> None:
    h = Histogram("size", "Size.", buckets=(10, 1, 5))  # sorted on construction
    assert h.buckets == (1, 5, 10)
    for value in (0.5, 1, 3, 5, 7, 20):
        h.observe(value)
    assert h.count == 6
    assert h.sum == 36.5
    assert list(h.samples()) == [
        'size_bucket{le="1"} 2',  # 0.5 and 1: le is "less than or equal"
        'size_bucket{le="5"} 4',
        'size_bucket{le="10"} 5',
        'size_bucket{le="+Inf"} 6',
        "size_sum 36.5",
        "size_count 6",
    ]


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
    lines = list(h.samples())
    assert 'seconds_bucket{le="0.0025"} 0' in lines
    assert 'seconds_bucket{le="0.005"} 1' in lines
    assert 'seconds_bucket{le="10"} 1' in lines
    assert "seconds_sum 0.003" in lines


def test_label_values_are_escaped() -> None:
    registry = Registry()
    c = registry.add(Counter("odd_total", "Odd label values."))
    assert isinstance(c, Counter)
    nasty = 'say "hi" \\ C:\\path\nnext line'
    c.inc(reason=nasty)
    text = registry.render()
    assert 'odd_total{reason="say \\"hi\\" \\\\ C:\\\\path\\nnext line"} 1\n' in text
    families = parse_exposition(text)
    assert families["odd_total"]["samples"] == [("odd_total", {"reason": nasty}, 1.0)]


def test_registry_refuses_a_name_twice() -> None:
    registry = Registry()
    registry.add(Gauge("up", "Up."))
    with pytest.raises(ValueError, match="up is already registered"):
        registry.add(Counter("up", "Up again."))


def test_registry_renders_families_in_registration_order() -> None:
    registry = Registry()
    registry.add(Counter("b_total", "B."))
    registry.add(Gauge("a", "A.", read=lambda: -1.5))
    assert registry.render() == (
        "# HELP b_total B.\n# TYPE b_total counter\n"
        "# HELP a A.\n# TYPE a gauge\na -1.5\n"
    )


def test_non_finite_values_render_as_prometheus_spells_them() -> None:
    registry = Registry()
    registry.add(Gauge("hi", "Hi.", read=lambda: math.inf))
    registry.add(Gauge("lo", "Lo.", read=lambda: -math.inf))
    text = registry.render()
    assert "\nhi +Inf\n" in text and "\nlo -Inf\n" in text
    families = parse_exposition(text)
    assert families["hi"]["samples"][0][2] == math.inf
    assert families["lo"]["samples"][0][2] == -math.inf


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
    families = parse_exposition(m.render())
    kinds = {name: family["type"] for name, family in families.items()}
    assert kinds.items() >= {
        "tickstock_events_ingested_total": "counter", "tickstock_events_stored_total": "counter",
        "tickstock_events_rejected_total": "counter", "tickstock_dead_letters_total": "counter",
        "tickstock_writer_batch_size": "histogram", "tickstock_writer_batch_seconds": "histogram",
        "tickstock_ingest_to_stored_seconds": "histogram", "tickstock_consumer": "gauge",
        "tickstock_dead_letters_pending": "gauge",
    }.items()
    assert _values(families, "tickstock_events_ingested_total") == {
        ("tickstock_events_ingested_total", ()): 5}
    assert _values(families, "tickstock_events_rejected_total") == {
        ("tickstock_events_rejected_total", (("reason", "not_json"),)): 1}
    assert _values(families, "tickstock_consumer") == {("tickstock_consumer", (("field", "pending"),)): 12}
    size = _values(families, "tickstock_writer_batch_size")
    assert size[("tickstock_writer_batch_size_bucket", (("le", "1"),))] == 0
    assert size[("tickstock_writer_batch_size_bucket", (("le", "5"),))] == 1
    assert size[("tickstock_writer_batch_size_bucket", (("le", "+Inf"),))] == 1
    assert size[("tickstock_writer_batch_size_count", ())] == 1
    # Families with nothing recorded still declare themselves, without samples.
    assert families["tickstock_events_duplicate_total"]["samples"] == []
    assert families["tickstock_events_duplicate_total"]["help"] == "Events whose id was already stored."


def test_gauge_replace_drops_labels_no_longer_reported() -> None:
    from hub.metrics import Gauge

    g = Gauge("depth", "per reason")
    g.replace({"all": 3, "not_json": 2, "too_large": 1}, label="reason")
    g.replace({"all": 1, "not_json": 1}, label="reason")
    assert list(g.samples()) == ['depth{reason="all"} 1', 'depth{reason="not_json"} 1']
