"""The pipeline under failure: database outages, several nodes, exhausted deliveries, restarts.

These tests run their own hubs (no module-wide ``live_hub``), so that no other writer shares the
consumer while they cut connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from urllib.parse import urlsplit

import pytest
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings
from hub.jetstream import INGEST_STREAM
from tests.conftest import delete_all_streams
from tests.support import (
    LiveHub,
    TcpProxy,
    clean_stream_messages,
    count,
    make_event,
    publish_events,
    publish_raw,
    stored_count,
    wait_for,
    wait_settled,
)

SYMBOLS = ["AAPL", "MSFT", "BRK.B", "ABR$D", "IBM", "KO", "TSLA", "GOOGL", "SPY", "XOM"]


_count = count
_stored = stored_count


async def _stored_at_least(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    return await _stored(pool, prefix) >= n


async def _clean_at_least(js, n: int) -> bool:  # type: ignore[no-untyped-def]
    return (await js.stream_info("TICKSTOCK_PATTERNS")).state.messages >= n


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}").geturl()


@pytest.mark.slow
async def test_database_outage_hands_batches_back_with_backoff_and_loses_nothing(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    await delete_all_streams(settings.nats_url or "")
    parts = urlsplit(settings.database_url or "")
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = dataclasses.replace(
            settings, database_url=_via(settings.database_url or "", proxy.port), pool_timeout_s=0.5
        )
        async with LiveHub(proxied) as hub:
            js = hub.hub.js
            await publish_events(js, [make_event(i, prefix="outage", symbol="IBM") for i in range(300)])
            await wait_for(lambda: _stored_at_least(ref_pool, "outage", 300), what="first 300 stored")
            await proxy.cut()
            await publish_events(js, [make_event(i, prefix="outage", symbol="IBM") for i in range(300, 900)])
            await asyncio.sleep(4)
            retries_during = hub.hub.metrics.retries.total()
            assert retries_during > 0
            await proxy.restore()
            await wait_for(
                lambda: _stored_at_least(ref_pool, "outage", 900), timeout=60, what="backlog drained"
            )
            metrics = hub.hub.metrics
            await wait_settled(js)
            msgs = await clean_stream_messages(js)
    assert await _count(ref_pool, "SELECT count(*) FROM dead_letters") == 0
    # Only the batches in hand when the outage began were handed back, each message once or twice;
    # the writer then waited on database probes instead of fetching (a tight loop would be thousands
    # of naks and would run the messages towards max_deliver).
    assert 0 < retries_during <= 2 * 600
    assert metrics.probes.value(result="down") >= 1 and metrics.probes.value(result="up") >= 1
    assert metrics.redeliveries.total() > 0
    ids = [json.loads(m.data)["id"] for m in msgs]
    assert len(ids) == len(set(ids)) == 900
    assert ids == [f"outage-{i}" for i in range(900)]  # one symbol: the ingest order survived the outage


@pytest.mark.slow
async def test_two_hub_nodes_share_the_writer_and_store_each_event_once(settings: Settings, ref_pool) -> None:  # type: ignore[no-untyped-def]
    """The shared consumer (``TICKSTOCK_INGEST_PARTITIONS=0``); the partitions on many nodes:
    tests/hub/test_partitions.py."""
    await delete_all_streams(settings.nats_url or "")
    shared = dataclasses.replace(settings, writer_batch=50, ingest_partitions=0)
    async with LiveHub(shared) as a, LiveHub(shared) as b:
        await publish_events(
            a.hub.js, [make_event(i, prefix="twonodes", symbol=SYMBOLS[i % 10]) for i in range(4000)]
        )
        await wait_for(lambda: _stored_at_least(ref_pool, "twonodes", 4000), timeout=60, what="4000 stored")
        # a batch is committed before it is published: wait for the clean stream too
        await wait_for(lambda: _clean_at_least(a.hub.js, 4000), timeout=30, what="4000 on the clean stream")
        assert a.hub.writer.batches > 0 and b.hub.writer.batches > 0
        stored = a.hub.metrics.stored.total() + b.hub.metrics.stored.total()
        published = a.hub.metrics.published.total() + b.hub.metrics.published.total()
        msgs = await clean_stream_messages(a.hub.js)
    # Never counted twice across the nodes. (Under heavy load a publish acknowledged after the
    # writer's 10 s wait is retried and then counted as a duplicate, so the counters may fall short
    # of 4,000; the data below is what must be exact.)
    assert stored <= 4000 and published <= 4000
    ids = [json.loads(m.data)["id"] for m in msgs]
    assert len(ids) == len(set(ids)) == 4000


async def test_exhausted_deliveries_become_dead_letters_with_the_original_payload(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    """The database answers but the clean stream is gone: every attempt fails after the insert, the
    consumer's max_deliver runs out, and the advisory turns the message into a dead letter."""
    await delete_all_streams(settings.nats_url or "")
    async with LiveHub(dataclasses.replace(settings, ingest_max_deliver=2)) as hub:
        js = hub.hub.js
        await js.delete_stream("TICKSTOCK_PATTERNS")
        await publish_raw(
            js,
            [
                (
                    "tickstock.ingest.daily.KO",
                    json.dumps(make_event(7, prefix="exhaust", symbol="KO")).encode(),
                    {"Nats-Msg-Id": "exhaust-7", "X-Producer": "tests"},
                )
            ],
        )

        async def letter() -> dict | None:  # type: ignore[type-arg]
            async with ref_pool.connection() as conn:
                return await (
                    await conn.execute(
                        "SELECT reason, headers, payload, deliveries FROM dead_letters WHERE event_id = 'exhaust-7'"
                    )
                ).fetchone()

        row = await wait_for(letter, timeout=30, what="the exhausted message dead-lettered")
        await wait_for(lambda: _ingest_empty(js), what="the message removed from the work queue")
    assert row["reason"] == "max_deliveries_exceeded" and row["deliveries"] == 2
    assert row["headers"]["X-Producer"] == "tests"
    assert json.loads(bytes(row["payload"]))["id"] == "exhaust-7"
    async with ref_pool.connection() as conn:
        stored = await (
            await conn.execute("SELECT stream_seq FROM pattern_events WHERE id = 'exhaust-7'")
        ).fetchone()
    assert stored == {"stream_seq": None}  # stored, never published: a replay publishes it


async def _ingest_empty(js) -> bool:  # type: ignore[no-untyped-def]
    return (await js.stream_info(INGEST_STREAM)).state.messages == 0


async def test_stopping_the_hub_leaves_unfinished_work_for_the_next_node(
    settings: Settings, ref_pool
) -> None:  # type: ignore[no-untyped-def]
    await delete_all_streams(settings.nats_url or "")
    async with LiveHub(settings) as hub:
        await publish_events(
            hub.hub.js, [make_event(i, prefix="handover", symbol="XOM") for i in range(2000)]
        )
    async with LiveHub(settings):
        await wait_for(lambda: _stored_at_least(ref_pool, "handover", 2000), timeout=60, what="all stored")
    assert (
        await _count(ref_pool, "SELECT count(DISTINCT id) FROM pattern_events WHERE id LIKE 'handover-%%'")
        == 2000
    )
