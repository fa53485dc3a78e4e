"""What a partition fence may let go: redelivered messages whose events are already published (real
PostgreSQL for the store, real JetStream messages for their metadata)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from psycopg_pool import AsyncConnectionPool

from hub.catalog import PatternCatalog
from hub.jetstream import add_stream
from hub.model import PatternEvent
from hub.parsing import parse_event
from hub.redelivery import published_elsewhere
from store.patterns import ensure_months, published_ids, set_stream_seqs, store_events
from tests.support import make_event

STREAM = "REDELIVERY_TEST"
SUBJECT = "redeliverytest.items"
CATALOG = PatternCatalog.permissive()


def parse(msg: Msg) -> PatternEvent:
    return parse_event(msg.data, catalog=CATALOG)


@pytest_asyncio.fixture(loop_scope="session")
async def js(jetstream: JetStreamContext) -> AsyncIterator[JetStreamContext]:
    await add_stream(jetstream, StreamConfig(name=STREAM, subjects=["redeliverytest.>"]))
    yield jetstream
    await jetstream.delete_stream(STREAM)


async def _messages(js: JetStreamContext, *payloads: bytes) -> list[Msg]:
    for payload in payloads:
        await js.publish(SUBJECT, payload)
    sub = await js.pull_subscribe(SUBJECT, durable="redelivery", stream=STREAM)
    msgs = await sub.fetch(len(payloads), timeout=5)
    assert len(msgs) == len(payloads)
    return msgs


async def _store(pool: AsyncConnectionPool, events: list[PatternEvent], published: dict[str, int]) -> None:
    async with pool.connection() as conn, conn.transaction():
        await ensure_months(conn, min(e.detected_at for e in events), max(e.detected_at for e in events))
        stored = await store_events(conn, events)
        await set_stream_seqs(conn, [(stored[i], seq) for i, seq in published.items()])


async def test_only_a_published_event_with_the_same_payload_is_settled(
    js: JetStreamContext, pool: AsyncConnectionPool
) -> None:
    done, stored_only, other_payload, unknown = (make_event(i, prefix="rd", symbol="MSFT") for i in range(4))
    squatted = {**other_payload, "confidence": 0.99}  # the stored row under that id says otherwise
    await _store(
        pool,
        [parse_event(e, catalog=CATALOG) for e in (done, stored_only, squatted)],
        published={str(done["id"]): 7, str(squatted["id"]): 8},
    )
    payloads = [json.dumps(e).encode() for e in (done, stored_only, other_payload, unknown)]
    msgs = await _messages(js, *payloads, b"{not json")
    settled = await published_elsewhere(pool, parse, msgs)
    assert settled == {msgs[0].metadata.sequence.stream}
    async with pool.connection() as conn:
        events = [parse_event(e, catalog=CATALOG) for e in (done, done, stored_only, other_payload, unknown)]
        assert await published_ids(conn, events) == {done["id"]}
        assert await published_ids(conn, []) == set()
    assert await published_elsewhere(pool, parse, msgs[-1:]) == set()  # nothing that parses: no query
