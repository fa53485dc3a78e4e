"""Acceptance: TickStock's upstream corpus on Redis through the bridge inside a live hub (real Redis, NATS,
PostgreSQL); hostile messages on every channel; a Redis restart under the bridge."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from api.cli.parser import main
from api.settings import Settings
from hub.bridge import RedisBridge, _refresh_catalog, run
from hub.broker import open_nats
from hub.catalog import CatalogCache
from hub.embedded import EmbeddedNats, EmbeddedRedis
from hub.metrics import Metrics
from ops.upstream_corpus import dead_letters, publish, report, stored_rows, subscribed
from ops.upstream_messages import CHANNELS, CORPUS, HOSTILE, Case
from tests.support import LiveHub, TcpProxy, count, free_port, make_event, wait_for, wait_settled, within


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    """The module's hub runs the bridge inside, on the module's Redis."""
    return dataclasses.replace(settings, bridge_redis_url=settings.redis_url)


@pytest_asyncio.fixture(loop_scope="session")
async def hub(live_hub: LiveHub, ref_pool: AsyncConnectionPool) -> AsyncIterator[LiveHub]:
    async with ref_pool.connection() as conn:  # each test starts from an empty store
        await conn.execute("TRUNCATE pattern_events, pattern_event_ids, dead_letters")
    yield live_hub


def _bridged(metrics: Metrics) -> float:
    return metrics.bridge_messages.total()


def _items(cases: list[Case]) -> int:
    return sum(max(1, len(c.rows)) for c in cases)


async def test_the_corpus_is_stored_once_with_its_meaning_even_bridged_twice_and_sent_twice(
    hub: LiveHub, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis
) -> None:
    """Every message of every layout and channel, through the hub's bridge and a second bridge
    process's worth (its own catalog from the database), published twice: each row once, the two
    deliberate dead letters, nothing else."""
    state = hub.hub
    catalog = CatalogCache()
    await catalog.refresh(ref_pool)
    second = RedisBridge(redis_client, state.js, catalog=catalog)
    async with second:
        await wait_for(lambda: subscribed(redis_client, CHANNELS, n=2), what="both bridges subscribed")
        for round_ in (1, 2):
            await publish(redis_client, CORPUS, subscribers=2)
            await wait_for(
                lambda r=round_: _bridged(state.metrics) >= r * _items(CORPUS), timeout=30, what="hub bridge"
            )
            await wait_for(
                lambda r=round_: _bridged(second.metrics) >= r * _items(CORPUS), timeout=30, what="2nd bridge"
            )
            await wait_settled(state.js)
    table, problems = report(CORPUS, await stored_rows(ref_pool), await dead_letters(ref_pool))
    assert problems == [], table
    assert await count(ref_pool, "SELECT count(*) FROM pattern_events") == sum(len(c.rows) for c in CORPUS)
    for layout in "ABCDEFG":
        assert sum(1 for c in CORPUS if c.layout == layout and c.rows) >= 3, layout
    assert sum(1 for c in CORPUS if c.layout == "streaming") >= 3
    assert [len(c.rows) for c in CORPUS if c.layout == "batch"] == [3, 4, 2]
    verdicts = state.metrics.bridge_messages
    assert verdicts.value(channel=CHANNELS[2], verdict="forwarded", reason="ok") == 2 * 9
    assert verdicts.value(channel=CHANNELS[0], verdict="rejected", reason="unknown_timeframe") == 2
    assert verdicts.value(channel=CHANNELS[0], verdict="rejected", reason="unknown_pattern") == 2
    exposed = state.metrics.render()
    assert (
        'tickstock_bridge_messages_total{channel="tickstock:patterns:streaming",reason="ok",verdict="forwarded"} 6.0'
        in exposed
    )
    stored = await _payload(ref_pool, "MSFT", "pattern_detected", "weekly_breakout")
    assert (
        stored["data"]["timeframe_from"] == "tier:weekly" and stored["data"]["upstream_pattern"] == "WeeklyBO"
    )


async def _payload(pool: AsyncConnectionPool, symbol: str, kind: str, pattern: str) -> dict[str, object]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT payload FROM pattern_events WHERE symbol = %s AND type = %s AND pattern = %s",
            (symbol, kind, pattern),
        )
        [row] = await cur.fetchall()
    return row["payload"]  # type: ignore[no-any-return]


async def test_hostile_messages_on_every_channel_are_dead_letters_and_the_bridge_goes_on(
    hub: LiveHub, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis
) -> None:
    state = hub.hub
    before = _bridged(state.metrics)
    await wait_for(lambda: subscribed(redis_client, CHANNELS), what="the bridge subscribed")
    for channel, raw, _ in HOSTILE:
        assert await redis_client.publish(channel, raw) == 1
    after = make_event(1, prefix="after-hostile", symbol="IBM", timeframe="5min")
    assert await redis_client.publish(CHANNELS[0], json.dumps(after)) == 1
    await wait_for(
        lambda: _bridged(state.metrics) >= before + len(HOSTILE) + 1, timeout=30, what="all bridged"
    )
    await wait_settled(state.js)
    assert await count(ref_pool, "SELECT count(*) FROM pattern_events WHERE id = %s", "after-hostile-1") == 1
    letters = dict(await dead_letters(ref_pool))
    expected = {raw: reason for _, raw, reason in HOSTILE}
    assert letters == expected  # one dead letter per distinct message, with its reason
    for channel in CHANNELS:
        rejected = sum(
            state.metrics.bridge_messages.value(channel=channel, verdict="rejected", reason=reason)
            for reason in set(expected.values())
        )
        assert rejected == len(expected)


@pytest.mark.timeout(300)  # two server restarts on a loaded machine; each step below has its own deadline
async def test_the_bridge_survives_redis_restarts_and_counts_the_gap(hub: LiveHub, tmp_path: Path) -> None:
    """Stop the bridge's Redis under it and start it again on the same port: the bridge resubscribes
    with a back-off, counts the reconnects and the deaf seconds, and forwards again."""
    port = free_port()
    state = hub.hub
    metrics = Metrics()
    server = EmbeddedRedis(tmp_path / "redis-0", port=port)
    async with within(60, what="starting redis"):
        await server.__aenter__()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=5)
    try:
        async with RedisBridge(client, state.js, catalog=state.catalog, metrics=metrics) as bridge:
            await bridge.wait_subscribed(timeout=10)
            async with _probe(server.url) as probe, within(20, what="publishing before the restart"):
                await probe.publish(CHANNELS[1], CORPUS[-5].message)
            await wait_for(lambda: bridge.forwarded >= 1, timeout=10, what="forwarded before the restart")
            for restart in (1, 2):
                async with within(60, what=f"stopping redis ({restart})"):
                    await server.__aexit__(None, None, None)
                await wait_for(lambda r=restart: bridge.reconnects >= r, timeout=20, what="the loss noticed")
                server = EmbeddedRedis(tmp_path / f"redis-{restart}", port=port)  # a new process, same port
                async with within(60, what=f"starting redis ({restart})"):
                    await server.__aenter__()
                await bridge.wait_subscribed(timeout=60)
            streaming = [c for c in CORPUS if c.layout == "streaming"]
            async with _probe(server.url) as probe:
                await wait_for(lambda: subscribed(probe, bridge.channels), timeout=20, what="resubscribed")
                async with within(20, what="publishing after the restarts"):
                    await publish(probe, streaming)
            await wait_for(lambda: bridge.forwarded >= 1 + len(streaming), timeout=20, what="forwarded after")
    finally:
        async with within(30, what="closing the client"):
            await client.aclose()
        async with within(60, what="stopping redis"):
            await server.__aexit__(None, None, None)
    assert metrics.bridge_reconnects.total() >= 2 and bridge.reconnects >= 2
    assert metrics.bridge_gap_seconds.total() > 0


@contextlib.asynccontextmanager
async def _probe(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_silent_redis_is_noticed_by_the_heartbeat(
    hub: LiveHub, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that stays open but carries nothing (a peer gone without a reset): the bridge's ping
    goes unanswered, it drops the connection and subscribes again once Redis answers."""
    url = urlsplit(redis_url)
    async with TcpProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        client = aioredis.Redis.from_url(
            f"redis://127.0.0.1:{proxy.port}{url.path}", socket_connect_timeout=2
        )
        try:
            async with RedisBridge(
                client, hub.hub.js, channels=("silent.patterns",), heartbeat_s=0.3
            ) as bridge:
                await bridge.wait_subscribed(timeout=10)
                proxy.stall()
                await wait_for(lambda: bridge.reconnects >= 1, timeout=20, what="the silence noticed")
                proxy.resume()
                await bridge.wait_subscribed(timeout=30)
        finally:
            await client.aclose()
    assert bridge.metrics.bridge_reconnects.total() >= 1
    assert "no answer to a ping within 0.3 s" in caplog.text


async def test_a_standalone_bridge_checks_names_against_the_database_and_follows_its_changes(
    hub: LiveHub, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis, settings: Settings
) -> None:
    """``tickstock bridge-redis`` with a database: an unknown name goes to the unparsed subject; once the
    definition exists (and the catalog reloaded), the same kind of message goes to ingest."""
    channel = "standalone.patterns"
    task = asyncio.create_task(
        run(
            settings.redis_url or "",
            settings.nats_url or "",
            channel=channel,
            database_url=settings.database_url,
            refresh_s=0.2,
        )
    )
    try:
        await wait_for(lambda: subscribed(redis_client, (channel,)), timeout=20, what="the bridge subscribed")
        first = _flat("Corpus_Only_Pattern", 0)
        assert await redis_client.publish(channel, first) == 1
        await wait_for(
            lambda: _letter_subject(ref_pool, first), timeout=20, what="the first one dead-lettered"
        )
        assert await _letter_subject(ref_pool, first) == "tickstock.ingest.unparsed"
        async with ref_pool.connection() as conn:
            await conn.execute(
                "INSERT INTO pattern_definitions (name, aliases, category) VALUES ('corpus_only', %s, 'indicator')",
                (["Corpus_Only_Pattern"],),
            )
        attempt = 0

        async def forwarded_to_ingest() -> bool:
            nonlocal attempt
            attempt += 1
            message = _flat("Corpus_Only_Pattern", attempt)
            before = await count(ref_pool, INGESTED_LETTERS), await count(ref_pool, STORED)
            assert await redis_client.publish(channel, message) == 1

            async def verdict() -> str | None:
                # Valid at the bridge: stored, or refused at the writer by a hub whose catalog had not yet
                # reloaded (every node reloads on the definitions notice, so usually it is stored).
                if (await count(ref_pool, INGESTED_LETTERS), await count(ref_pool, STORED)) != before:
                    return "ingest"
                return await _letter_subject(ref_pool, message)

            return await wait_for(verdict, timeout=20, what="its verdict") == "ingest"

        await wait_for(forwarded_to_ingest, timeout=30, what="the bridge's catalog reloaded")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with ref_pool.connection() as conn:
            await conn.execute("DELETE FROM pattern_definitions WHERE name = 'corpus_only'")


INGESTED_LETTERS = "SELECT count(*) FROM dead_letters WHERE subject = 'tickstock.ingest.daily.ZZZ'"
STORED = "SELECT count(*) FROM pattern_events WHERE symbol = 'ZZZ' AND pattern = 'corpus_only'"


def _flat(pattern: str, i: int) -> bytes:
    return json.dumps(
        {
            "event_type": "pattern_detected",
            "timestamp": 1764599400 + i,
            "symbol": "ZZZ",
            "pattern": pattern,
            "confidence": 0.5,
            "source": "daily",
        }
    ).encode()


async def _letter_subject(pool: AsyncConnectionPool, payload: bytes) -> str | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT subject FROM dead_letters WHERE payload = %s", (payload,))
        row = await cur.fetchone()
    return None if row is None else str(row["subject"])


async def test_the_bridge_command_reads_the_bridge_redis_url(
    hub: LiveHub, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("TICKSTOCK_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TICKSTOCK_NATS_URL", hub.settings.nats_url or "")
    monkeypatch.setenv("TICKSTOCK_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # not this one
    monkeypatch.setenv("TICKSTOCK_BRIDGE_REDIS_URL", redis_url)
    monkeypatch.setenv("TICKSTOCK_BRIDGE_CHANNELS", "a.patterns, b.patterns")
    status = await asyncio.to_thread(main, ["bridge-redis", "--duration", "0.5"])
    assert status == 0
    assert capsys.readouterr().err.splitlines()[-1] == "tickstock: bridge: 0 messages forwarded"


async def test_a_failed_catalog_reload_keeps_the_last_catalog(caplog: pytest.LogCaptureFixture) -> None:
    catalog = CatalogCache()
    unreachable = AsyncConnectionPool(f"postgresql://127.0.0.1:{free_port()}/x", open=False)
    task = asyncio.create_task(_refresh_catalog(catalog, unreachable, 0.01))
    try:
        await wait_for(lambda: "reload failed" in caplog.text, timeout=10, what="the failure logged")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not catalog.loaded  # still the permissive one it started with


def test_a_bridge_needs_a_channel(redis_client: aioredis.Redis) -> None:
    no_nats: Any = None  # the constructor does no I/O
    with pytest.raises(ValueError, match="at least one channel"):
        RedisBridge(redis_client, no_nats, channels=())


async def test_an_unknown_upstream_name_is_replayed_once_it_is_defined(
    hub: LiveHub, ref_pool: AsyncConnectionPool, redis_client: aioredis.Redis
) -> None:
    """The raw message the bridge dead-lettered `unknown_pattern` is stored by a replay once the name
    exists: the same bytes, read by the same rules, now with a catalog that knows them."""
    state = hub.hub
    [case] = [c for c in CORPUS if c.reason == "unknown_pattern"]
    # a second later than the corpus's copy: JetStream's duplicate window still holds that one
    message = json.dumps({**json.loads(case.message), "timestamp": json.loads(case.message)["timestamp"] + 1})
    raw = message.encode()
    await wait_for(lambda: subscribed(redis_client, CHANNELS), what="the bridge subscribed")
    assert await redis_client.publish(case.channel, raw) == 1

    async def letter_id() -> int | None:
        async with ref_pool.connection() as conn:
            cur = await conn.execute("SELECT id, reason FROM dead_letters WHERE payload = %s", (raw,))
            row = await cur.fetchone()
        return None if row is None else int(row["id"]) if row["reason"] == "unknown_pattern" else -1

    letter = await wait_for(letter_id, timeout=20, what="the unknown_pattern dead letter")
    assert letter > 0
    async with ref_pool.connection() as conn:
        await conn.execute(
            "INSERT INTO pattern_definitions (name, aliases, category) VALUES ('performance_test', %s, 'indicator')",
            (["Performance_Test"],),
        )
    try:
        await state.catalog.refresh(ref_pool)
        result = await state.dead_letters.replay(letter, catalog=state.catalog)
        assert result.subject == "tickstock.ingest.daily.PERF01" and result.event_id.startswith("ts-")
        await wait_for(
            lambda: count(ref_pool, "SELECT count(*) FROM pattern_events WHERE id = %s", result.event_id),
            timeout=20,
            what="the replayed event stored",
        )
        payload = await _payload(ref_pool, "PERF01", "pattern_detected", "performance_test")
        assert payload["data"]["upstream_pattern"] == "Performance_Test"
    finally:
        async with ref_pool.connection() as conn:
            await conn.execute("DELETE FROM pattern_definitions WHERE name = 'performance_test'")
        await state.catalog.refresh(ref_pool)


async def test_a_bridge_asked_to_stop_while_nats_refuses_stops_and_says_what_it_dropped(
    tmp_path: Path, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmbeddedNats(tmp_path / "nats") as server, open_nats(server.url) as nc:
        bridge = RedisBridge(redis_client, nc.jetstream(), channels=("stopping.patterns",))
        async with bridge:
            await bridge.wait_subscribed()
            message = make_event(1, prefix="never", symbol="IBM", timeframe="5min")
            assert await redis_client.publish("stopping.patterns", json.dumps(message)) == 1
            await wait_for(lambda: bridge.errors >= 1, timeout=20, what="a refused publish")
        assert bridge.forwarded == 0
    assert "not published" in caplog.text
