"""Issue #11, the pipeline half: one event never stalls, squats or poisons the rest.

Real NATS and PostgreSQL from the fixtures. Tests that need the batch to arrive whole publish before
the hub starts (the topology is created first), so the writer's first fetch takes all of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import UTC, datetime

import httpx
import pytest
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from api.auth import mint_token
from api.settings import Settings
from hub.advisories import AdvisoryWatcher
from hub.cloudevent import DEFAULT_SOURCE, CloudEvents
from hub.deadletters import DLQ_HEADERS, DeadLetterer
from hub.jetstream import INGEST_STREAM, MAX_DELIVERIES_ADVISORY, WRITER_CONSUMER, ensure_topology
from hub.metrics import Metrics
from hub.model import PatternEvent
from store.deadletters import get_dead_letter
from store.pool import open_pool
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import (
    LiveHub,
    count,
    make_event,
    publish_events,
    publish_raw,
    stored_count,
    wait_for,
    writer_consumers_info,
)

PARTITIONS = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pattern_events'::regclass"


async def _fresh_topology(settings: Settings) -> None:
    await delete_all_streams(settings.nats_url or "")
    nc = NATS()
    await nc.connect(settings.nats_url or "", connect_timeout=5)
    await ensure_topology(nc.jetstream())
    await nc.close()


async def _publish_before_start(settings: Settings, events: list[dict[str, object]]) -> None:
    nc = NATS()
    await nc.connect(settings.nats_url or "", connect_timeout=5)
    await publish_events(nc.jetstream(), events)
    await nc.close()


async def _letters(pool: AsyncConnectionPool, where: str, *args: object) -> list[dict]:  # type: ignore[type-arg]
    async with pool.connection() as conn:
        return await (
            await conn.execute(f"SELECT * FROM dead_letters WHERE {where} ORDER BY id", args)
        ).fetchall()  # type: ignore[return-value]


async def test_a_statement_timeout_on_one_row_dead_letters_that_event_alone(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    async with ref_pool.connection() as conn:
        await conn.execute("""
            CREATE FUNCTION tests_slow_id() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.id = 'slow-5' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$;
            CREATE TRIGGER tests_slow BEFORE INSERT ON pattern_event_ids FOR EACH ROW EXECUTE FUNCTION tests_slow_id();
        """)
    try:
        await _fresh_topology(settings)
        await _publish_before_start(settings, [make_event(i, prefix="slow", symbol="KO") for i in range(10)])
        async with LiveHub(dataclasses.replace(settings, statement_timeout_ms=400)) as hub:
            rows = await wait_for(
                lambda: _letters(ref_pool, "event_id = 'slow-5'"), what="slow-5 dead-lettered"
            )
            await wait_for(lambda: _stored_at_least(ref_pool, "slow", 9), what="the 9 batch-mates stored")
            info = await writer_consumers_info(hub.hub.js)
            retries = hub.hub.metrics.retries.total()
    finally:
        async with ref_pool.connection() as conn:
            await conn.execute("DROP TRIGGER tests_slow ON pattern_event_ids; DROP FUNCTION tests_slow_id()")
    assert [r["reason"] for r in rows] == ["store_rejected"] and rows[0]["deliveries"] == 1
    assert "statement timeout" in rows[0]["detail"] and "\n" not in rows[0]["detail"]
    assert await stored_count(ref_pool, "slow") == 9
    assert info.num_redelivered == 0 and retries == 0  # all on the first delivery
    assert (
        await count(ref_pool, "SELECT count(*) FROM dead_letters WHERE reason = 'max_deliveries_exceeded'")
        == 0
    )


async def _stored_at_least(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    return await stored_count(pool, prefix) >= n


async def test_events_outside_the_window_are_dead_lettered_and_create_no_partition(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    await delete_all_streams(settings.nats_url or "")
    before = await count(ref_pool, PARTITIONS)
    far = [
        make_event(1, prefix="far", detected_at="0001-01-01T00:00:00Z"),
        make_event(2, prefix="far", detected_at="9999-12-01T00:00:00Z"),
        make_event(3, prefix="far", expires_at="9999-12-01T00:00:00Z"),
    ]
    async with LiveHub(settings) as hub:
        await publish_events(hub.hub.js, [*far, make_event(4, prefix="far")])
        await wait_for(lambda: _stored_at_least(ref_pool, "far", 1), what="the valid neighbour stored")
        rows = await wait_for(lambda: _n_letters(ref_pool, "far-%", 3), what="3 dead letters")
        token = mint_token(JWT_SECRET, subject="writer-tests", scopes=["patterns:write"])
        async with httpx.AsyncClient(
            base_url=hub.url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            response = await client.post(
                "/api/patterns",
                json=[
                    make_event(5, prefix="farhttp", detected_at="0001-01-01T00:00:00Z"),
                    make_event(6, prefix="farhttp", expires_at="9999-12-01T00:00:00Z"),
                ],
            )
    assert [r["reason"] for r in rows] == [
        "detected_at_out_of_range",
        "detected_at_out_of_range",
        "expires_at_out_of_range",
    ]
    assert await count(ref_pool, PARTITIONS) == before
    assert response.status_code == 200
    assert [(r["status"], r["reason"]) for r in response.json()["results"]] == [
        ("rejected", "detected_at_out_of_range"),
        ("rejected", "expires_at_out_of_range"),
    ]


async def _n_letters(pool: AsyncConnectionPool, like: str, n: int) -> list[dict] | None:  # type: ignore[type-arg]
    rows = await _letters(pool, "event_id LIKE %s", like)
    return rows if len(rows) >= n else None


async def test_twenty_months_in_one_batch_are_created_a_bounded_number_at_a_time(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    async with (
        ref_pool.connection() as conn
    ):  # the SQL function alone: at most max_new, only the months given
        before = await count(ref_pool, PARTITIONS)
        months = [datetime(1990 + i, 3, 1, tzinfo=UTC) for i in range(10)]
        async with conn.transaction():
            ready = (
                await (
                    await conn.execute("SELECT tickstock_ensure_months(%s::timestamptz[], 4) AS r", (months,))
                ).fetchone()
            )["r"]
    assert len(ready) == 4 and await count(ref_pool, PARTITIONS) == before + 4
    await _fresh_topology(settings)
    events = [
        make_event(
            i, prefix="months", detected_at=f"{2010 + (i % 20) // 12}-{(i % 20) % 12 + 1:02d}-15T10:00:00Z"
        )
        for i in range(60)
    ]
    await _publish_before_start(settings, events)
    before = await count(ref_pool, PARTITIONS)
    async with LiveHub(settings) as hub:
        await wait_for(lambda: _stored_at_least(ref_pool, "months", 60), timeout=60, what="all 60 stored")
        # A batch is counted after its acks, a moment after its rows are visible: wait for the count.
        # 20 new months at most 4 a batch cannot take fewer than 5 batches.
        writer = hub.hub.writer
        await wait_for(lambda: writer.batches >= 5, timeout=30, what="at least 5 writer batches")
        metrics = hub.hub.metrics
        info = await writer_consumers_info(hub.hub.js)
    assert await count(ref_pool, PARTITIONS) == before + 20
    assert metrics.partitions_deferred.total() > 0
    assert info.num_redelivered == 0  # waiting for a partition burns no delivery
    assert await count(ref_pool, "SELECT count(*) FROM dead_letters WHERE event_id LIKE 'months-%%'") == 0


async def test_hostile_headers_reach_the_dlq_on_the_first_delivery_and_never_travel_on(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    await delete_all_streams(settings.nats_url or "")
    hostile = {
        "Nats-Expected-Stream": "TICKSTOCK_INGEST",
        "Nats-Msg-Id": "not-the-event-id",
        "X-Note": "line1\r\nline2",
        "ce-source": "/forged",  # a producer's CloudEvents attributes are not the hub's
        "ce-type": "com.evil.v1",
    }
    async with LiveHub(settings) as hub:
        js = hub.hub.js
        bad = make_event(1, prefix="hdr", confidence=85, source="evil\r\nsource")
        good = make_event(2, prefix="hdr")
        await publish_raw(
            js,
            [
                ("tickstock.ingest.daily.AAPL", json.dumps(bad).encode(), hostile),
                (
                    "tickstock.ingest.daily.AAPL",
                    json.dumps(good).encode(),
                    {**hostile, "Nats-Msg-Id": "another-id"},
                ),
            ],
        )
        rows = await wait_for(lambda: _n_letters(ref_pool, "hdr-%", 1), timeout=10, what="the dead letter")
        await wait_for(lambda: _stored_at_least(ref_pool, "hdr", 1), what="the valid one stored")
        dlq = await js.get_last_msg("TICKSTOCK_DLQ", "tickstock.dlq.>")
        clean = await js.get_last_msg("TICKSTOCK_PATTERNS", "tickstock.patterns.>")
    assert rows[0]["reason"] == "confidence_out_of_range" and rows[0]["deliveries"] == 1
    assert set(dlq.headers or {}) <= set(DLQ_HEADERS)
    assert all("\n" not in v and "\r" not in v for v in (dlq.headers or {}).values())
    assert rows[0]["headers"]["Nats-Expected-Stream"] == "TICKSTOCK_INGEST"  # kept for inspection
    assert all("\n" not in k + v and "\r" not in k + v for k, v in rows[0]["headers"].items())
    assert dict(clean.headers or {}) == {
        "Nats-Msg-Id": "hdr-2",
        **CloudEvents().headers(PatternEvent.model_validate(good)),
    }
    assert clean.headers["ce-source"] == DEFAULT_SOURCE and clean.headers["ce-type"].startswith(
        "io.tickstock."
    )


async def test_a_squatted_id_ends_as_id_conflict_with_both_payloads(settings: Settings, ref_pool) -> None:  # type: ignore[no-untyped-def]
    await delete_all_streams(settings.nats_url or "")
    squat = make_event(1, prefix="squat", symbol="AAPL", source="squatter", confidence=0.11)
    genuine = make_event(1, prefix="squat", symbol="AAPL", source="genuine", confidence=0.99)
    async with LiveHub(settings) as hub:
        js = hub.hub.js
        # The squatter forges the producer header without the key: not believed.
        await publish_raw(
            js,
            [
                (
                    "tickstock.ingest.daily.AAPL",
                    json.dumps(squat).encode(),
                    {
                        "Nats-Msg-Id": "squat-1",
                        "TickStock-Producer": "http:genuine",
                        "TickStock-Producer-Sig": "00",
                    },
                )
            ],
        )
        await wait_for(lambda: _stored_at_least(ref_pool, "squat", 1), what="the squatter stored")
        token = mint_token(JWT_SECRET, subject="genuine-detector", scopes=["patterns:write"])
        async with httpx.AsyncClient(
            base_url=hub.url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            verdict = (await client.post("/api/patterns", json=[genuine])).json()["results"][0]
            rows = await wait_for(lambda: _letters(ref_pool, "event_id = 'squat-1'"), what="the id_conflict")
            # the squatter's payload once more under another message id: an idempotent duplicate
            duplicates = hub.hub.metrics.duplicates.total()
            await publish_raw(
                js,
                [
                    (
                        "tickstock.ingest.daily.AAPL",
                        json.dumps(squat).encode(),
                        {"Nats-Msg-Id": "squat-1-again"},
                    )
                ],
            )
            await wait_for(lambda: _more(hub, duplicates), what="the duplicate counted")
            mine = make_event(2, prefix="squat", symbol="AAPL")
            assert (await client.post("/api/patterns", json=[mine])).json()["results"][0][
                "status"
            ] == "accepted"
            await wait_for(lambda: _stored_at_least(ref_pool, "squat", 2), what="the signed event stored")
        conflicts = hub.hub.metrics.id_conflicts.total()
    assert verdict["status"] == "accepted"
    assert [r["reason"] for r in rows] == ["id_conflict"]
    async with ref_pool.connection() as conn:
        letter = await get_dead_letter(conn, rows[0]["id"])
        producers = {
            r["id"]: r["producer"]
            for r in await (
                await conn.execute("SELECT id, producer, source FROM pattern_events WHERE id LIKE 'squat-%%'")
            ).fetchall()
        }
    assert letter is not None and letter.conflict_payload is not None
    assert (
        json.loads(letter.payload)["source"] == "genuine"
        and json.loads(letter.conflict_payload)["source"] == "squatter"
    )
    assert producers == {"squat-1": "nats:squatter", "squat-2": "http:genuine-detector"}
    assert conflicts == 1
    assert len(await _letters(ref_pool, "event_id = 'squat-1'")) == 1  # the duplicate is no dead letter


async def _more(hub: LiveHub, before: float) -> bool:
    return hub.hub.metrics.duplicates.total() > before


async def test_the_advisory_watcher_gives_up_into_a_visible_state(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await _fresh_topology(settings)
    nc = NATS()
    await nc.connect(settings.nats_url or "", connect_timeout=5)
    js = nc.jetstream()
    ack = (await publish_raw(js, [("tickstock.ingest.daily.KO", b"{}", {"Nats-Msg-Id": "orphan"})]))[0]
    broken = open_pool(settings.database_url or "", min_size=0, max_size=1)
    pool = await broken.__aenter__()
    await broken.__aexit__(None, None, None)  # a closed pool: every dead letter fails (transiently)
    metrics = Metrics()
    letterer = DeadLetterer(pool=pool, js=js, metrics=metrics)
    advisory = {"stream_seq": ack.seq, "deliveries": 30, "consumer": WRITER_CONSUMER, "stream": INGEST_STREAM}
    await js.publish(
        f"{MAX_DELIVERIES_ADVISORY}.{INGEST_STREAM}.{WRITER_CONSUMER}", json.dumps(advisory).encode()
    )
    caplog.set_level(logging.WARNING, logger="tickstock.deadletters")
    async with AdvisoryWatcher(
        js=js, dead_letters=letterer, metrics=metrics, retry_base_s=0.05, retry_max_s=0.2, max_attempts=3
    ) as watcher:
        await wait_for(lambda: _given_up(watcher), timeout=20, what="the watcher giving up")
        await asyncio.sleep(0.5)  # nothing more is tried after giving up
        tries = sum("not handled yet" in r.getMessage() for r in caplog.records)
    await nc.close()
    assert metrics.advisories_given_up.total() == 1 and tries == 2
    assert any(
        "given up after 3 attempts" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def _given_up(watcher: AdvisoryWatcher) -> bool:
    return watcher.given_up >= 1


async def test_readiness_shows_the_advisory_state(settings: Settings) -> None:
    await delete_all_streams(settings.nats_url or "")
    async with LiveHub(settings) as hub, httpx.AsyncClient(base_url=hub.url) as client:
        body = (await client.get("/health/ready")).json()
    assert body["advisories_given_up"] == 0
