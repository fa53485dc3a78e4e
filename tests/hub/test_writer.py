"""The pipeline end to end on real servers: ingest → writer → PostgreSQL → clean stream → ack."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from api.auth import mint_token
from hub.jetstream import INGEST_STREAM
from hub.outage import retry_delay
from hub.subjects import clean_subject, parse_subject
from tests.conftest import JWT_SECRET
from tests.support import (
    LiveHub,
    clean_stream_messages,
    count,
    make_event,
    publish_events,
    publish_raw,
    stored_count,
    wait_for,
    wait_settled,
    writer_consumers_info,
)

SYMBOLS = ["AAPL", "MSFT", "BRK.B", "ABR$D", "IBM", "KO", "TSLA", "GOOGL", "SPY", "XOM"]


_count = count
_stored = stored_count


def test_retry_delay_doubles_and_caps() -> None:
    assert [retry_delay(n, base_s=0.5, max_s=4) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert retry_delay(0) == 0.5


@pytest.mark.slow
async def test_events_are_stored_and_published_once_in_per_symbol_order(live_hub: LiveHub, ref_pool) -> None:  # type: ignore[no-untyped-def]
    js = live_hub.hub.js
    events = [
        make_event(
            i, symbol=SYMBOLS[i % len(SYMBOLS)], prefix="flow", timeframe=["daily", "1min", "hourly"][i % 3]
        )
        for i in range(6000)
    ]
    await publish_events(js, events)
    await publish_events(js, events[:300])  # a producer's retry: JetStream deduplicates by Nats-Msg-Id
    await wait_for(
        lambda: _published_at_least(ref_pool, "flow", 6000), timeout=60, what="6000 stored and published"
    )
    await wait_settled(js)
    assert (
        await _count(ref_pool, "SELECT count(DISTINCT id) FROM pattern_events WHERE id LIKE 'flow-%%'")
        == 6000
    )
    assert (
        await _count(
            ref_pool, "SELECT count(*) FROM pattern_events WHERE id LIKE 'flow-%%' AND stream_seq IS NULL"
        )
        == 0
    )
    msgs = await clean_stream_messages(js)
    flow = [m for m in msgs if json.loads(m.data)["id"].startswith("flow-")]
    assert len(flow) == 6000 and len({json.loads(m.data)["id"] for m in flow}) == 6000
    per_symbol: dict[str, list[int]] = defaultdict(list)
    for m in flow:
        body = json.loads(m.data)
        assert m.subject == clean_subject(body["timeframe"], body["symbol"])
        assert parse_subject(m.subject).symbol == body["symbol"]
        assert m.headers["Nats-Msg-Id"] == body["id"]
        per_symbol[body["symbol"]].append(int(body["id"].split("-")[1]))
    assert set(per_symbol) == set(SYMBOLS)
    assert all(ids == sorted(ids) for ids in per_symbol.values())
    async with ref_pool.connection() as conn:
        seqs = await (
            await conn.execute("SELECT id, stream_seq FROM pattern_events WHERE id LIKE 'flow-%%'")
        ).fetchall()
    by_id = {json.loads(m.data)["id"]: m.metadata.sequence.stream for m in flow}
    assert all(by_id[r["id"]] == r["stream_seq"] for r in seqs)
    info = await writer_consumers_info(js)
    assert info.num_redelivered == 0, info
    assert (await js.stream_info(INGEST_STREAM)).state.messages == 0  # work queue: acked means gone


async def _stored_at_least(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    return await _stored(pool, prefix) >= n


async def _published_at_least(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    return (
        await _count(
            pool,
            "SELECT count(*) FROM pattern_events WHERE id LIKE %s AND stream_seq IS NOT NULL",
            prefix + "-%",
        )
        >= n
    )


MALFORMED_KINDS = {
    "not_json": lambda i: b"{not json " + str(i).encode(),
    "not_object": lambda i: json.dumps([1, 2, i]).encode(),
    "missing_field": lambda i: json.dumps(
        {k: v for k, v in make_event(i, prefix="bad").items() if k != "pattern"}
    ).encode(),
    "confidence_out_of_range": lambda i: json.dumps(make_event(i, prefix="bad", confidence=85)).encode(),
    "unknown_timeframe": lambda i: json.dumps(make_event(i, prefix="bad", timeframe="2min")).encode(),
    # 2 MB on the hub's own NATS (max_payload 8 MB); smaller on a server with the 1 MB default.
    "too_large": lambda i: json.dumps(make_event(i, prefix="bad", data={"blob": "x" * BIG})).encode(),
    "invalid_field": lambda i: json.dumps(make_event(i, prefix="bad", price="cheap")).encode(),
    "invalid_timestamp": lambda i: json.dumps(make_event(i, prefix="bad", detected_at="yesterday")).encode(),
    "unknown_pattern": lambda i: json.dumps(make_event(i, prefix="bad", pattern="flying_pig")).encode(),
    "unknown_field": lambda i: json.dumps(make_event(i, prefix="bad", colour="red")).encode(),
    "unknown_type": lambda i: json.dumps(make_event(i, prefix="bad", type="pattern_guessed")).encode(),
    "invalid_symbol": lambda i: json.dumps(make_event(i, prefix="bad", symbol="NOT A SYMBOL")).encode(),
    "legacy_0_100": lambda i: json.dumps(
        {
            "event_type": "pattern_detected",
            "source": "tickstock",
            "timestamp": 1764000000 + i,
            "data": {"symbol": "AAPL", "pattern": "Hammer", "confidence": 85, "source": "daily"},
        }
    ).encode(),
    "store_rejected": lambda i: json.dumps(
        make_event(i, prefix="bad", data={"note": "nul \u0000 inside"})
    ).encode(),
}
EXPECTED_REASON = {"legacy_0_100": "confidence_out_of_range"}
BIG = 2_000_000


@pytest.mark.slow
async def test_malformed_events_are_dead_lettered_with_a_reason_and_nothing_is_stored(
    live_hub: LiveHub, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    global BIG
    js = live_hub.hub.js
    BIG = min(2_000_000, live_hub.hub.nats.max_payload - 4096)
    kinds = list(MALFORMED_KINDS)
    items = []
    for i in range(1000):
        kind = kinds[i % len(kinds)]
        items.append(
            ("tickstock.ingest.daily.AAPL", MALFORMED_KINDS[kind](i), {"Nats-Msg-Id": f"bad-msg-{i}"})
        )
    # Plus events whose subject disagrees with the body.
    items += [
        (
            "tickstock.ingest.weekly.MSFT",
            json.dumps(make_event(i, prefix="mismatch")).encode(),
            {"Nats-Msg-Id": f"mm-{i}"},
        )
        for i in range(20)
    ]
    await publish_raw(js, items)
    total = len(items)
    await wait_for(lambda: _dead_letters_at_least(ref_pool, total), timeout=60, what=f"{total} dead letters")
    async with ref_pool.connection() as conn:
        rows = await (
            await conn.execute("SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason")
        ).fetchall()
    counts = {r["reason"]: r["n"] for r in rows}
    expected: dict[str, int] = defaultdict(int)
    for i in range(1000):
        kind = kinds[i % len(kinds)]
        expected[EXPECTED_REASON.get(kind, kind)] += 1
    expected["subject_mismatch"] += 20
    assert counts == dict(expected)
    assert len(counts) >= 10
    assert await _stored(ref_pool, "bad") == 0 and await _stored(ref_pool, "mismatch") == 0
    async with ref_pool.connection() as conn:
        big = await (
            await conn.execute(
                "SELECT octet_length(payload) AS n, headers, deliveries FROM dead_letters WHERE reason = 'too_large' LIMIT 1"
            )
        ).fetchone()
    assert big["n"] > BIG and big["headers"]["Nats-Msg-Id"].startswith("bad-msg-") and big["deliveries"] == 1
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        ready = (await client.get("/health/ready")).json()
    assert ready["status"] == "ok"
    assert ready["pipeline"]["dead_letters_pending"] == total
    dlq = await js.stream_info("TICKSTOCK_DLQ")
    assert dlq.state.messages == total


async def _dead_letters_at_least(pool: AsyncConnectionPool, n: int) -> bool:
    return await _count(pool, "SELECT count(*) FROM dead_letters") >= n


async def test_a_corrected_dead_letter_replayed_over_rest_is_stored(live_hub: LiveHub, ref_pool) -> None:  # type: ignore[no-untyped-def]
    js = live_hub.hub.js
    bad = make_event(1, prefix="fixme", confidence=85)
    await publish_events(js, [bad])

    async def letter() -> int | None:
        async with ref_pool.connection() as conn:
            row = await (
                await conn.execute("SELECT id FROM dead_letters WHERE event_id = 'fixme-1'")
            ).fetchone()
        return row["id"] if row else None

    letter_id = await wait_for(letter, what="the dead letter")
    admin = mint_token(JWT_SECRET, subject="ops", scopes=["admin"])
    reader = mint_token(JWT_SECRET, subject="someone", scopes=["patterns:read"])
    async with httpx.AsyncClient(
        base_url=live_hub.url, headers={"Authorization": f"Bearer {admin}"}
    ) as client:
        assert (
            await client.get(f"/api/admin/dlq/{letter_id}", headers={"Authorization": f"Bearer {reader}"})
        ).status_code == 403
        assert (
            await client.get(f"/api/admin/dlq/{letter_id}", headers={"Authorization": ""})
        ).status_code == 401
        shown = (await client.get(f"/api/admin/dlq/{letter_id}")).json()
        assert (
            shown["reason"] == "confidence_out_of_range"
            and json.loads(shown["payload_preview"])["confidence"] == 85
        )
        again = await client.post(f"/api/admin/dlq/{letter_id}/replay")
        assert again.status_code == 422 and "confidence_out_of_range" in again.json()["detail"]
        fixed = await client.post(f"/api/admin/dlq/{letter_id}/replay", json={**bad, "confidence": 0.85})
        assert fixed.status_code == 200, fixed.text
        assert fixed.json()["event_id"] == "fixme-1" and fixed.json()["duplicate"] is False
        await wait_for(lambda: _stored_at_least(ref_pool, "fixme", 1), what="the replayed event stored")
        listed = (await client.get("/api/admin/dlq", params={"replayed": "true"})).json()
        assert [d["id"] for d in listed["items"]] == [letter_id]
        assert (await client.get("/api/admin/dlq", params={"limit": "0"})).status_code == 400
        assert (await client.get("/api/admin/dlq", params={"replayed": "maybe"})).status_code == 400
        assert (await client.get("/api/admin/dlq/999999999")).status_code == 404
        assert (await client.get("/api/admin/dlq/abc")).status_code == 404
        assert (await client.post("/api/admin/dlq/999999999/replay")).status_code == 404
        assert (await client.post(f"/api/admin/dlq/{letter_id}/replay", content=b"{nope")).status_code == 400
        assert (await client.delete("/api/admin/dlq")).status_code == 400
        assert (await client.delete("/api/admin/dlq", params={"replayed": "true"})).json() == {"deleted": 1}
        assert (await client.delete(f"/api/admin/dlq/{letter_id}")).status_code == 404
    async with ref_pool.connection() as conn:
        row = await (
            await conn.execute("SELECT confidence FROM pattern_events WHERE id = 'fixme-1'")
        ).fetchone()
    assert row["confidence"] == pytest.approx(0.85)


async def test_metrics_expose_the_pipeline(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        text = (await client.get("/metrics")).text
    for name in (
        "tickstock_events_ingested_total",
        "tickstock_events_stored_total",
        "tickstock_events_rejected_total",
        "tickstock_writer_batch_size_bucket",
        "tickstock_ingest_to_stored_seconds_count",
        'tickstock_consumer{field="pending"}',
        'tickstock_dead_letters_pending{reason="all"}',
    ):
        assert name in text, name
