"""``GET /metrics`` on a live hub: the names, types and label names dashboards depend on, in both the
Prometheus text format and OpenMetrics (``Accept: application/openmetrics-text``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from api.auth import mint_token
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, make_event, publish_raw, wait_for

# Every family /metrics declares (as its TYPE line names it), its type and its label names. A dashboard
# or alert reads these: renaming one, changing its type or its labels breaks them. Change this table
# only together with a note in the release notes.
FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    "tickstock_events_ingested_total": ("counter", frozenset()),
    "tickstock_events_stored_total": ("counter", frozenset()),
    "tickstock_events_duplicate_total": ("counter", frozenset()),
    "tickstock_events_rejected_total": ("counter", frozenset({"reason"})),
    "tickstock_events_published_total": ("counter", frozenset()),
    "tickstock_writer_redeliveries_total": ("counter", frozenset()),
    "tickstock_writer_retries_total": ("counter", frozenset()),
    "tickstock_writer_database_probes_total": ("counter", frozenset({"result"})),
    "tickstock_dead_letters_total": ("counter", frozenset({"reason"})),
    # issue #11: a refused DLQ publish, an advisory given up, an id squatted, a partition waited for
    "tickstock_dlq_publish_refused_total": ("counter", frozenset({"code"})),
    "tickstock_advisories_given_up_total": ("counter", frozenset()),
    "tickstock_id_conflicts_total": ("counter", frozenset()),
    "tickstock_writer_partition_deferrals_total": ("counter", frozenset()),
    # issue #12: the Redis bridge inside the hub (recorded only when TICKSTOCK_BRIDGE_REDIS_URL is set)
    "tickstock_bridge_messages_total": ("counter", frozenset({"channel", "verdict", "reason"})),
    "tickstock_bridge_reconnects_total": ("counter", frozenset()),
    "tickstock_bridge_gap_seconds_total": ("counter", frozenset()),
    "tickstock_writer_batch_size": ("histogram", frozenset()),
    "tickstock_writer_batch_seconds": ("histogram", frozenset()),
    "tickstock_ingest_to_stored_seconds": ("histogram", frozenset()),
    "tickstock_http_ingest_total": ("counter", frozenset({"outcome"})),
    "tickstock_consumer": ("gauge", frozenset({"field"})),
    "tickstock_dead_letters_pending": ("gauge", frozenset({"reason"})),
    "tickstock_ws_connections": ("gauge", frozenset()),
    "tickstock_ws_subscriptions": ("gauge", frozenset()),
    "tickstock_ws_messages_sent_total": ("counter", frozenset()),
    "tickstock_ws_events_sent_total": ("counter", frozenset()),
    "tickstock_ws_prepared_frames_total": ("counter", frozenset()),
    "tickstock_ws_bytes_sent_total": ("counter", frozenset()),
    "tickstock_ws_queue_high_water": ("gauge", frozenset()),
    "tickstock_ws_closes_total": ("counter", frozenset({"code"})),
    "tickstock_ws_replayed_total": ("counter", frozenset()),
    "tickstock_ws_stored_to_sent_seconds": ("histogram", frozenset()),
    # issue #14: bounded under overload
    "tickstock_ws_live_backlog": ("gauge", frozenset()),
    "tickstock_ws_shed_total": ("counter", frozenset()),
    "tickstock_ws_live_dropped_total": ("counter", frozenset()),
    "tickstock_ws_live_restarts_total": ("counter", frozenset({"cause"})),
    "tickstock_ws_live_holes_total": ("counter", frozenset()),
    "tickstock_cache_requests_total": ("counter", frozenset({"route", "result"})),
    "tickstock_cache_hit_ratio": ("gauge", frozenset({"route"})),
    "tickstock_cache_breaker_open": ("gauge", frozenset()),
    "tickstock_cache_lost_bumps_total": ("counter", frozenset()),
    "tickstock_rate_limited_total": ("counter", frozenset()),
    "tickstock_rate_limit_fail_open_total": ("counter", frozenset({"reason"})),
    # issue #19: cached reads answered before the router
    "tickstock_hot_reads_total": ("counter", frozenset()),
    # issue #17: readiness for alerts (a node up but not ready)
    "tickstock_ready": ("gauge", frozenset()),
    "tickstock_dependency_up": ("gauge", frozenset({"dependency"})),
    # issue #15: the NATS service (api/nats_service.py)
    "tickstock_nats_service_requests_total": ("counter", frozenset({"endpoint"})),
    "tickstock_nats_service_errors_total": ("counter", frozenset({"endpoint", "status"})),
    "tickstock_nats_service_seconds": ("histogram", frozenset()),
}
# Labels a family with labels has: always its own, plus "le" on histogram buckets.
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def _label_names(families: Iterable[Metric]) -> dict[str, set[str]]:
    """Label names seen per family (histogram ``le`` left out), keyed by the text format's family name."""
    seen: dict[str, set[str]] = {}
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        names = seen.setdefault(name, set())
        for sample in family.samples:
            names.update(k for k in sample.labels if k != "le")
    return seen


async def _exercise(hub: LiveHub) -> None:
    """Make the labelled families record: an HTTP ingest, a dead letter, cached scans."""
    writer = mint_token(JWT_SECRET, subject="metrics-writer", scopes=["patterns:write"])
    reader = mint_token(JWT_SECRET, subject="metrics-reader", scopes=["patterns:read"])
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
        response = await client.post(
            "/api/patterns",
            json=[make_event(1, prefix="metrics-names")],
            headers={"Authorization": f"Bearer {writer}"},
        )
        assert response.status_code < 300, response.text
        await publish_raw(hub.hub.js, [("tickstock.ingest.daily.AAPL", b"not json", None)])

        async def recorded() -> bool:
            m = hub.hub.metrics
            return m.stored.total() >= 1 and m.dead_letters.total() >= 1

        await wait_for(recorded, timeout=30, what="one stored event and one dead letter")
        for _ in range(2):
            scan = await client.get("/api/patterns/scan", headers={"Authorization": f"Bearer {reader}"})
            assert scan.status_code == 200, scan.text


async def test_metric_names_types_and_labels_are_pinned(live_hub: LiveHub) -> None:
    await _exercise(live_hub)
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    declared = dict(_TYPE_LINE.findall(text))
    assert declared == {name: kind for name, (kind, _) in FAMILIES.items()}
    seen = _label_names(parse_text(text))
    for name, labels in seen.items():
        assert labels <= FAMILIES[name][1], (name, labels)
    # Every labelled family that the exercise reached shows exactly its labels.
    for name in (
        "tickstock_events_rejected_total",
        "tickstock_dead_letters_total",
        "tickstock_http_ingest_total",
        "tickstock_consumer",
        "tickstock_dead_letters_pending",
        "tickstock_cache_requests_total",
        "tickstock_cache_hit_ratio",
        "tickstock_dependency_up",
    ):
        assert seen[name] == FAMILIES[name][1], name


async def test_openmetrics_when_the_scraper_asks_for_it(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        response = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        plain = await client.get("/metrics", headers={"Accept": "text/plain"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {(f.name, f.type) for f in parse_openmetrics(response.text)}
    expected = {
        (name.removesuffix("_total") if kind == "counter" else name, kind)
        for name, (kind, _) in FAMILIES.items()
    }
    assert families == expected
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in plain.text
