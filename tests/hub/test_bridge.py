"""The Redis pub/sub bridge into ingest, with a live hub, real Redis and real NATS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from hub.bridge import DEFAULT_CHANNEL, RedisBridge, run
from hub.broker import open_nats
from hub.embedded import EmbeddedNats
from hub.jetstream import INGEST_STREAM, MIB, Topology, ensure_topology
from hub.subjects import UNPARSED_SUBJECT, ingest_subject, producer_subject
from tests.support import LiveHub, TcpProxy, free_port, make_event, wait_for, wait_settled, within


async def _stored(pool: AsyncConnectionPool, event_id: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT symbol, pattern, timeframe, payload FROM pattern_events WHERE id = %s", (event_id,)
        )
        return await cur.fetchone()


async def _dead_letters(pool: AsyncConnectionPool, payload: bytes) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT subject, reason, headers FROM dead_letters WHERE payload = %s", (payload,)
        )
        return await cur.fetchall()


async def _subscribers(client: aioredis.Redis, channel: str = DEFAULT_CHANNEL) -> int:
    [(_, n)] = await client.pubsub_numsub(channel)
    return int(n)


async def _publish(client: aioredis.Redis, payload: bytes | str, channel: str = DEFAULT_CHANNEL) -> None:
    receivers = await client.publish(channel, payload)
    assert receivers == 1, "the bridge was not subscribed when the message was published"


def _counter(read: Any, value: int) -> Any:
    async def reached() -> bool:
        return bool(read() >= value)

    return reached


def _event(i: int, prefix: str) -> dict[str, object]:
    return make_event(i, prefix=prefix, symbol="IBM", timeframe="5min")


@pytest_asyncio.fixture(loop_scope="session")
async def hub_js(live_hub: LiveHub) -> AsyncIterator[JetStreamContext]:
    yield live_hub.hub.js


async def test_v1_legacy_and_garbage_are_all_forwarded(
    hub_js: JetStreamContext, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis
) -> None:
    v1 = _event(1, "bridge-v1")
    legacy = {
        "event_type": "pattern_alert",
        "source": "tickstock",
        "timestamp": 1764000000,
        "id": "bridge-legacy-1",
        "data": {
            "ticker": "msft",
            "pattern_name": "Hammer",
            "confidence": 0.7,
            "current_price": 410.5,
            "timeframe": "1h",
            "note": "from redis",
        },
    }
    garbage = b"\xff\xfe this is not an event \x00"
    async with RedisBridge(redis_client, hub_js) as bridge:
        assert bridge.channel == DEFAULT_CHANNEL
        await bridge.wait_subscribed()
        await _publish(redis_client, json.dumps(v1))
        await _publish(redis_client, json.dumps(legacy))
        await _publish(redis_client, garbage)
        await _publish(redis_client, garbage)  # a producer's repeat: the same content hash, one dead letter
        await wait_for(_counter(lambda: bridge.forwarded, 4), timeout=10, what="4 forwarded")
        assert (bridge.forwarded, bridge.unparsed, bridge.errors) == (4, 2, 0)
    stored = await wait_for(lambda: _stored(ref_pool, "bridge-v1-1"), timeout=20, what="v1 stored")
    assert (stored["symbol"], stored["timeframe"], stored["pattern"]) == ("IBM", "5min", "hammer")
    stored = await wait_for(lambda: _stored(ref_pool, "bridge-legacy-1"), timeout=20, what="legacy stored")
    assert (stored["symbol"], stored["timeframe"], stored["pattern"]) == ("MSFT", "hourly", "hammer")
    assert stored["payload"]["data"] == {
        "note": "from redis",
        "timeframe_from": "timeframe:1h",
        "upstream_pattern": "Hammer",
    }
    assert stored["payload"]["price"] == 410.5
    letters = await wait_for(lambda: _dead_letters(ref_pool, garbage), timeout=20, what="dead letter")
    await wait_settled(hub_js)
    [letter] = await _dead_letters(ref_pool, garbage)
    assert letter["subject"] == UNPARSED_SUBJECT
    assert letter["reason"] == "not_json"
    assert letter["headers"]["Nats-Msg-Id"] == "unparsed-" + hashlib.sha256(garbage).hexdigest()[:32]
    assert letters == [letter]


async def test_text_messages_and_other_channels(
    hub_js: JetStreamContext, ref_pool: AsyncConnectionPool, redis_url: str
) -> None:
    """A client that decodes responses hands the bridge text; a bridge listens to its channel only."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with RedisBridge(client, hub_js, channel="legacy.patterns") as bridge:
            await bridge.wait_subscribed()
            assert await client.publish(DEFAULT_CHANNEL, json.dumps(_event(1, "bridge-elsewhere"))) == 0
            await _publish(client, json.dumps(_event(1, "bridge-text")), channel="legacy.patterns")
            await wait_for(_counter(lambda: bridge.forwarded, 1), timeout=10, what="1 forwarded")
        assert await wait_for(lambda: _stored(ref_pool, "bridge-text-1"), timeout=20, what="the event stored")
        assert bridge.forwarded == 1 and bridge.unparsed == 0
    finally:
        await client.aclose()


async def test_publish_failures_are_counted_and_retried_in_order(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """A NATS without the ingest stream refuses every publish; the bridge keeps the message, retries
    and goes on in order once the stream exists."""
    first, second = _event(1, "bridge-retry"), _event(2, "bridge-retry")
    async with EmbeddedNats(tmp_path / "nats") as server, open_nats(server.url) as nc:
        js = nc.jetstream()
        async with RedisBridge(redis_client, js) as bridge:
            await bridge.wait_subscribed()
            await _publish(redis_client, json.dumps(first))
            await _publish(redis_client, json.dumps(second))
            await wait_for(_counter(lambda: bridge.errors, 2), timeout=10, what="two failed attempts")
            assert bridge.forwarded == 0
            await ensure_topology(js)
            await wait_for(_counter(lambda: bridge.forwarded, 2), timeout=10, what="both forwarded")
            assert bridge.errors >= 2 and bridge.unparsed == 0
        msgs = [await js.get_msg(INGEST_STREAM, seq) for seq in (1, 2)]
    assert [producer_subject(m.subject) for m in msgs] == [ingest_subject("5min", "IBM")] * 2
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["bridge-retry-1", "bridge-retry-2"]
    assert [json.loads(m.data)["id"] for m in msgs] == ["bridge-retry-1", "bridge-retry-2"]


async def test_a_message_too_large_for_nats_is_dropped_loudly_and_the_bridge_goes_on(
    tmp_path: Path, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Retrying cannot make a message fit: one over the stream's limit and one over the server's
    max_payload are logged as errors and skipped; the next message is forwarded."""
    over_stream = b"x" * (2 * MIB)  # the stream below takes at most 1 MiB
    over_server = b"y" * (9 * MIB)  # the server takes at most 8 MB
    after = _event(1, "bridge-after-large")
    async with EmbeddedNats(tmp_path / "nats") as server, open_nats(server.url) as nc:
        js = nc.jetstream()
        await ensure_topology(js, Topology(ingest_max_msg_size=1 * MIB))
        async with RedisBridge(redis_client, js) as bridge:
            await bridge.wait_subscribed()
            await _publish(redis_client, over_stream)
            await _publish(redis_client, over_server)
            await _publish(redis_client, json.dumps(after))
            await wait_for(_counter(lambda: bridge.forwarded, 1), timeout=10, what="the small one forwarded")
            # unparsed counts what reached the unparsed subject: these two never did
            assert (bridge.forwarded, bridge.unparsed, bridge.errors) == (1, 0, 2)
            dropped = bridge.metrics.bridge_messages.value(
                channel=DEFAULT_CHANNEL, verdict="dropped", reason="too_large"
            )
            assert dropped == 2
        msg = await js.get_msg(INGEST_STREAM, 1)
        assert json.loads(msg.data)["id"] == "bridge-after-large-1"
        assert (await js.stream_info(INGEST_STREAM)).state.messages == 1
    dropped = [r for r in caplog.records if r.levelname == "ERROR" and "dropped" in r.getMessage()]
    assert [str(2 * MIB) in dropped[0].getMessage(), str(9 * MIB) in dropped[1].getMessage()] == [True, True]


@pytest.mark.parametrize("retries", [0, None], ids=["client-without-retries", "client-defaults"])
async def test_losing_redis_resubscribes(
    hub_js: JetStreamContext,
    ref_pool: AsyncConnectionPool,
    redis_url: str,
    redis_client: aioredis.Redis,
    retries: int | None,
) -> None:
    url = urlsplit(redis_url)
    async with TcpProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{url.path}"
        options: dict[str, Any] = {} if retries is None else {"retry": Retry(NoBackoff(), retries)}
        client = aioredis.Redis.from_url(proxied, **options)
        try:
            async with RedisBridge(client, hub_js) as bridge:
                await bridge.wait_subscribed()
                await _publish(redis_client, json.dumps(_event(1, f"bridge-loss-{retries}")))
                await wait_for(_counter(lambda: bridge.forwarded, 1), timeout=10, what="1 forwarded")
                await proxy.cut()
                await wait_for(lambda: _is(_subscribers(redis_client), 0), timeout=10, what="unsubscribed")
                await asyncio.sleep(1.5)  # an outage the client's own retries do not bridge
                await proxy.restore()
                await wait_for(lambda: _is(_subscribers(redis_client), 1), timeout=15, what="resubscribed")
                await bridge.wait_subscribed()
                await _publish(redis_client, json.dumps(_event(2, f"bridge-loss-{retries}")))
                await wait_for(_counter(lambda: bridge.forwarded, 2), timeout=10, what="2 forwarded")
        finally:
            await client.aclose()
    for i in (1, 2):
        event_id = f"bridge-loss-{retries}-{i}"
        assert await wait_for(
            lambda event_id=event_id: _stored(ref_pool, event_id), timeout=20, what=f"{event_id} stored"
        )


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)


async def test_run_forwards_for_a_while_and_returns_the_count(
    hub_js: JetStreamContext, settings: Any, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis
) -> None:
    started = time.monotonic()
    task = asyncio.create_task(
        run(settings.redis_url, settings.nats_url, channel="run.patterns", duration_s=1.5)
    )
    await wait_for(lambda: _is(_subscribers(redis_client, "run.patterns"), 1), timeout=10, what="subscribed")
    for i in (1, 2):
        await _publish(redis_client, json.dumps(_event(i, "bridge-run")), channel="run.patterns")
    async with within(30, what="a 1.5 s bridge run"):
        assert await task == 2
    assert time.monotonic() - started >= 1.5  # hygiene: ok - a lower bound: a busy machine only lengthens it
    # The bridge closed its connection; Redis drops the subscription when it sees the close.
    await wait_for(lambda: _is(_subscribers(redis_client, "run.patterns"), 0), timeout=5, what="unsubscribed")
    assert await wait_for(lambda: _stored(ref_pool, "bridge-run-2"), timeout=20, what="stored")


async def test_run_without_a_duration_runs_until_cancelled(
    hub_js: JetStreamContext, settings: Any, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis
) -> None:
    task = asyncio.create_task(run(settings.redis_url, settings.nats_url, channel="forever.patterns"))
    await wait_for(lambda: _is(_subscribers(redis_client, "forever.patterns"), 1), timeout=10, what="on")
    # Still forwarding after a round trip through the hub (a barrier), and still running.
    await _publish(redis_client, json.dumps(_event(1, "bridge-forever")), channel="forever.patterns")
    assert await wait_for(lambda: _stored(ref_pool, "bridge-forever-1"), timeout=20, what="stored")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: _is(_subscribers(redis_client, "forever.patterns"), 0), timeout=5, what="off")


async def test_run_with_an_unreachable_redis_fails_in_one_line(settings: Any) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with within(30, what="connecting to a closed port"):  # a deadline, not a measurement
        with pytest.raises(RedisError, match=rf"cannot connect to Redis at {closed}") as info:
            await run(closed, settings.nats_url, duration_s=0)
    assert "\n" not in str(info.value)
