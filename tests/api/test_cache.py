"""The response cache on a live hub: normalised keys, single flight, honest hit ratio, reference-data
invalidation, bounded staleness through the real writer, and Redis failures behind a TCP proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from api.auth import mint_token
from api.settings import Settings
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import LiveHub, TcpProxy, make_event, publish_events, wait_for, within

SCAN = "/api/patterns/scan"


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}").geturl()


@dataclass
class Proxied:
    """A live hub whose Redis connection goes through ``proxy``."""

    hub: LiveHub
    proxy: TcpProxy
    redis_url: str  # Redis itself, not through the proxy


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proxied(settings: Settings) -> AsyncIterator[Proxied]:
    redis_url = settings.redis_url or ""
    parts = urlsplit(redis_url)
    await delete_all_streams(settings.nats_url or "")
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        hub_settings = dataclasses.replace(settings, redis_url=_via(redis_url, proxy.port))
        async with LiveHub(hub_settings) as hub:
            yield Proxied(hub, proxy, redis_url)


def _client(
    hub: LiveHub, subject: str = "cache-reader", scopes: tuple[str, ...] = ("patterns:read",)
) -> httpx.AsyncClient:
    token = mint_token(JWT_SECRET, subject=subject, scopes=list(scopes))
    return httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest_asyncio.fixture(loop_scope="session")
async def reader(proxied: Proxied) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(proxied.hub) as c:
        yield c


def _count(hub: LiveHub, route: str, result: str) -> int:
    cache = hub.hub.cache
    assert cache is not None
    return int(cache.requests.value(route=route, result=result))


async def _scan(c: httpx.AsyncClient, params: Any) -> dict[str, Any]:
    response = await c.get(SCAN, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def _until_hit(c: httpx.AsyncClient, params: Any) -> dict[str, Any]:
    async def hit() -> dict[str, Any] | None:
        body = await _scan(c, params)
        return body if body["cache"]["hit"] else None

    return await wait_for(hit, timeout=10, what="a cache hit")  # type: ignore[no-any-return]


async def _past_local_copies(c: httpx.AsyncClient, params: Any) -> None:
    """Wait until a scan is no longer answered from the hub's in-process copy (which, Redis gone, ages
    out within TICKSTOCK_CACHE_LOCAL_MAX_AGE_MS unless a notice drops it first)."""

    async def missed() -> bool:
        return not (await _scan(c, params))["cache"]["hit"]

    await wait_for(missed, timeout=10, what="the in-process copy aged out")


async def _ready(hub: LiveHub) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as c:
        response = await c.get("/health/ready")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- keys, ratio, single flight ---------------------------------------------------------------------


async def test_hit_ratio_is_no_data_before_any_request(proxied: Proxied) -> None:
    body = await _ready(proxied.hub)
    assert body["cache"]["status"] == "up" and body["cache"]["breaker"] == "closed"
    assert body["cache"]["routes"]["symbols"] == {
        "hit": 0,
        "miss": 0,
        "coalesced": 0,
        "bypass": 0,
        "hit_ratio": None,
        "hit_ratio_1m": None,
        "requests_1m": 0,
    }
    async with httpx.AsyncClient(base_url=proxied.hub.url) as c:
        text = (await c.get("/metrics")).text
    assert 'tickstock_cache_hit_ratio{route="symbols"}' not in text


async def test_same_filters_in_another_order_are_one_entry(
    reader: httpx.AsyncClient, proxied: Proxied
) -> None:
    first = await _scan(
        reader,
        [
            ("universe", "dow30:sp500"),
            ("timeframe", "daily"),
            ("timeframe", "weekly"),
            ("pattern", "hammer"),
            ("confidence_min", "0.5"),
        ],
    )
    assert first["cache"] == {"hit": False, "age_ms": None}
    again = await _scan(
        reader,
        [
            ("confidence_min", "0.5"),
            ("pattern", "CDLHAMMER"),
            ("timeframe", "weekly"),
            ("timeframe", "daily"),
            ("timeframe", "daily"),
            ("universe", "sp500:dow30"),
        ],
    )
    assert again["cache"]["hit"] is True and again["cache"]["age_ms"] >= 0
    assert again["items"] == first["items"] and again["next_cursor"] == first["next_cursor"]
    # Another caller shares it (nothing in it depends on who asks) ...
    async with _client(proxied.hub, "someone-else") as other:
        assert (
            await _scan(
                other,
                [
                    ("universe", "sp500:dow30"),
                    ("pattern", "hammer"),
                    ("timeframe", "daily"),
                    ("timeframe", "weekly"),
                    ("confidence_min", "0.5"),
                ],
            )
        )["cache"]["hit"] is True


async def test_my_universe_is_keyed_by_what_the_caller_saved(proxied: Proxied) -> None:
    scopes = ("patterns:read", "universe:write")
    async with _client(proxied.hub, "ann", scopes) as ann, _client(proxied.hub, "bob", scopes) as bob:
        for c in (ann, bob):
            assert (
                await c.put("/api/users/universe", json={"symbols": ["AAPL"], "universe_keys": []})
            ).status_code == 200
        await _scan(ann, {"universe": "my", "limit": "7"})
        # Bob saved the same universe: the same answer, so the same entry.
        assert (await _scan(bob, {"universe": "my", "limit": "7"}))["cache"]["hit"] is True
        await bob.put("/api/users/universe", json={"symbols": ["MSFT"], "universe_keys": ["dow30"]})

        async def bob_changed() -> bool:
            return not (await _scan(bob, {"universe": "my", "limit": "7"}))["cache"]["hit"]

        await wait_for(bob_changed, timeout=10, what="bob's new universe to be a new key")
        assert (await _scan(ann, {"universe": "my", "limit": "7"}))["cache"]["hit"] is True


async def test_concurrent_misses_compute_once(reader: httpx.AsyncClient, proxied: Proxied) -> None:
    # Coalescing is the property here, not the Redis timeout: a loaded machine can make a Redis call
    # slower than the default 150 ms, which (rightly) bypasses the cache; give this node room.
    cache = proxied.hub.hub.cache
    assert cache is not None
    cache.responses.timeout_s = 5.0
    params = {"symbol": "KO", "timeframe": "monthly", "limit": "13"}
    before = {r: _count(proxied.hub, "scan", r) for r in ("hit", "miss", "coalesced", "bypass")}
    bodies = await asyncio.gather(*(_scan(reader, params) for _ in range(20)))
    after = {r: _count(proxied.hub, "scan", r) for r in ("hit", "miss", "coalesced", "bypass")}
    delta = {r: after[r] - before[r] for r in after}
    assert delta["miss"] == 1 and delta["bypass"] == 0 and delta["hit"] + delta["coalesced"] == 19
    assert all(b["items"] == bodies[0]["items"] for b in bodies)
    ready = await _ready(proxied.hub)
    scan = ready["cache"]["routes"]["scan"]
    total = scan["hit"] + scan["miss"] + scan["coalesced"] + scan["bypass"]
    assert scan["hit_ratio"] == round(scan["hit"] / total, 4)
    async with httpx.AsyncClient(base_url=proxied.hub.url) as c:
        text = (await c.get("/metrics")).text
    assert f'tickstock_cache_requests_total{{result="miss",route="scan"}} {float(after["miss"])}' in text
    assert 'tickstock_cache_hit_ratio{route="scan"}' in text


# -- reference data --------------------------------------------------------------------------------


async def test_reference_changes_reach_scans_symbols_and_universes(proxied: Proxied) -> None:
    scopes = ("patterns:read", "admin")
    async with _client(proxied.hub, "ops", scopes) as admin:
        await admin.put(
            "/api/symbols", json={"symbols": [{"symbol": "ZZC", "name": "Cache Test", "sector": "Energy"}]}
        )
        assert (await admin.get("/api/symbols/ZZC")).json()["name"] == "Cache Test"

        async def cached() -> bool:
            return (await admin.get("/api/symbols/ZZC")).headers["x-cache"] == "hit"

        # PostgreSQL's notice of the write may land after the first read and bump the reference
        # generation once more (a faster hot path makes that the rule): the next read then misses.
        await wait_for(cached, timeout=10, what="the symbol's page from the cache")
        # A write through the API is read back at once, on the cached route too.
        await admin.put(
            "/api/symbols",
            json={"symbols": [{"symbol": "ZZC", "name": "Cache Test 2", "sector": "Utilities"}]},
        )
        assert (await admin.get("/api/symbols/ZZC")).json()["name"] == "Cache Test 2"
        # A change straight in PostgreSQL (as `tickstock load-reference-data` makes) reaches every node
        # through NOTIFY: the in-process directory and the cached universe.
        members = (await admin.get("/api/universes/dow30")).json()["members"]
        assert "ZZC" not in {m["symbol"] for m in members}
        async with proxied.hub.hub.pool.connection() as conn:
            await conn.execute("INSERT INTO universe_members (universe, symbol) VALUES ('dow30', 'ZZC')")

        async def listed() -> bool:
            body = (await admin.get("/api/universes/dow30")).json()
            return "ZZC" in {m["symbol"] for m in body["members"]}

        await wait_for(listed, timeout=10, what="the new member in the cached universe")
        event = make_event(1, symbol="ZZC", prefix="refchange", timeframe="weekly")
        await publish_events(proxied.hub.hub.js, [event])

        async def scanned() -> bool:
            body = await _scan(admin, {"universe": "dow30", "timeframe": "weekly", "limit": "500"})
            return "refchange-1" in {i["id"] for i in body["items"]}

        await wait_for(scanned, timeout=10, what="the event of the new member in a dow30 scan")


# -- bounded staleness ------------------------------------------------------------------------------


@dataclass
class Probe:
    issued: float  # wall time just before the request was sent
    ids: set[str]
    hit: bool


async def _poll(
    c: httpx.AsyncClient,
    params: Any,
    enough: Callable[[list[Probe]], bool],
    *,
    timeout: float = 60.0,
    what: str = "enough scans",
) -> list[Probe]:
    """Scan about every 10 ms, recording each answer, until ``enough(probes)``; fails after ``timeout`` s."""
    probes: list[Probe] = []

    async def probe() -> bool:
        issued = time.time()
        body = await _scan(c, params)
        probes.append(Probe(issued, {i["id"] for i in body["items"]}, body["cache"]["hit"]))
        return enough(probes)

    await wait_for(probe, timeout=timeout, interval=0.01, what=what)
    return probes


async def _stored_at(hub: LiveHub, event_id: str) -> float:
    """The first wall time the event is seen committed (so at or after its commit)."""

    async def seen() -> float | None:
        async with hub.hub.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT 1 FROM pattern_events WHERE id = %s", (event_id,))
            ).fetchone()
        return time.time() if row else None

    return await wait_for(seen, timeout=30, interval=0.002, what=f"{event_id} stored")  # type: ignore[no-any-return]


@pytest.mark.parametrize("round_", range(3))
async def test_an_event_stored_at_t_is_in_every_scan_issued_after_t_plus_the_bound(
    reader: httpx.AsyncClient,
    proxied: Proxied,
    nats_client: NATS,
    round_: int,
) -> None:
    bound = proxied.hub.settings.cache_staleness_ms / 1000
    params = {"timeframe": "weekly", "symbol": "IBM", "limit": "50"}
    await _until_hit(reader, params)
    event = make_event(1000 + round_, symbol="IBM", timeframe="weekly", prefix="stale")
    # Keep an entry fresh from just before the event, so that cached answers without it are served
    # inside the bound: the test sees the cache at work, not PostgreSQL answering every time.
    await _scan(reader, params)
    stored_at: list[float] = []

    def enough(probes: list[Probe]) -> bool:  # a few answers issued after T + bound, one from the cache
        after = [p for p in probes if stored_at and p.issued >= stored_at[0] + bound]
        return len(after) >= 5 and any(p.hit for p in after)

    poller = asyncio.create_task(_poll(reader, params, enough, what="cached scans after T + bound"))
    await publish_events(nats_client.jetstream(), [event])
    stored = await _stored_at(proxied.hub, str(event["id"]))
    stored_at.append(stored)
    probes = await poller
    after = [p for p in probes if p.issued >= stored + bound]
    assert after and all(event["id"] in p.ids for p in after), "a scan after T + bound missed the event"
    assert any(p.hit for p in after), "the cache served nothing after the bound"
    stale = [p for p in probes if event["id"] not in p.ids]
    assert all(p.issued < stored + bound for p in stale)


async def test_a_lost_bump_never_resurrects_an_old_entry(
    reader: httpx.AsyncClient, proxied: Proxied, nats_client: NATS
) -> None:
    """Redis is cut before the event is stored: the writer's bump cannot land. When Redis is back the
    old entry (its generations unchanged in Redis) must not be served: a new epoch killed it."""
    params = {"timeframe": "weekly", "symbol": "CAT", "limit": "50"}
    await _until_hit(reader, params)
    await proxied.proxy.cut()
    try:
        event = make_event(2000, symbol="CAT", timeframe="weekly", prefix="lost")
        await publish_events(nats_client.jetstream(), [event])
        await _stored_at(proxied.hub, str(event["id"]))
        # The in-process copy taken before the cut may answer until it ages out or the node hears of the
        # lost bump (within the staleness bound, docs/cache.md): then PostgreSQL answers, with the event.
        await _past_local_copies(reader, params)
        body = await _scan(reader, params)  # from PostgreSQL
        assert event["id"] in {i["id"] for i in body["items"]} and body["cache"]["hit"] is False
        cache = proxied.hub.hub.cache
        assert cache is not None
        await wait_for(lambda: asyncio.sleep(0, cache.lost.total() >= 1), timeout=10, what="the lost bump")
    finally:
        await proxied.proxy.restore()
    # Scan until the cache has served several answers again, whatever the staleness bound.
    probes = await _poll(
        reader, params, lambda probes: sum(p.hit for p in probes) >= 3, what="the cache serving again"
    )
    missed = [(i, p.hit) for i, p in enumerate(probes) if event["id"] not in p.ids]
    assert not missed, f"scans without the event (probe, cache hit) of {len(probes)}: {missed}"
    assert any(p.hit for p in probes), "the cache did not come back"


# -- Redis down or slow -----------------------------------------------------------------------------


async def test_redis_down_falls_back_to_postgres_and_recovers(
    reader: httpx.AsyncClient, proxied: Proxied
) -> None:
    params = {"universe": "nasdaq100", "limit": "20"}
    cached = await _until_hit(reader, params)
    await proxied.proxy.cut()
    try:
        await _past_local_copies(reader, params)
        for _ in range(10):
            body = await _scan(reader, params)
            assert body["cache"]["hit"] is False and body["items"] == cached["items"]
        async with _client(proxied.hub) as c:
            proxied.hub.hub.cache.local.clear()  # type: ignore[union-attr]  # (copies of earlier tests)
            for path in ("/api/universes", "/api/universes/dow30", "/api/symbols/AAPL", "/api/symbols?q=AA"):
                response = await c.get(path)
                assert response.status_code == 200 and response.headers["x-cache"] == "bypass"
        ready = await _ready(proxied.hub)
        assert ready["status"] == "degraded" and ready["cache"]["status"] == "degraded"
        assert ready["cache"]["breaker"] in ("open", "half_open")
        assert ready["cache"]["routes"]["scan"]["bypass"] >= 10
    finally:
        await proxied.proxy.restore()
    await _until_hit(reader, params)

    async def ok() -> bool:
        return (await _ready(proxied.hub))["status"] == "ok"

    await wait_for(ok, timeout=10, what="readiness ok again")


async def test_slow_redis_is_bypassed(reader: httpx.AsyncClient, proxied: Proxied) -> None:
    """A Redis that stops answering (its link stalls: connected, silent) costs each request at most the
    cache timeout. The stall starts when ``stall()`` returns, so no scan can race it, however busy the box."""
    params = {"universe": "dow30", "limit": "10"}
    cached = await _until_hit(reader, params)
    proxied.proxy.stall()
    try:
        await _past_local_copies(reader, params)
        async with within(
            30, what="five scans while Redis is silent"
        ):  # each waits at most the cache timeout
            bodies = [await _scan(reader, params) for _ in range(5)]
        assert all(not b["cache"]["hit"] and b["items"] == cached["items"] for b in bodies)
    finally:
        proxied.proxy.resume()
    await _until_hit(reader, params)


async def test_redis_killed_and_restarted_empty_recovers_without_a_restart(
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The real thing: the Redis server is SIGKILLed under the hub, then started again, empty."""
    import os
    import signal

    from hub.embedded import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path_factory.mktemp("killed-redis"))
    redis.start()
    try:
        await delete_all_streams(settings.nats_url or "")
        async with LiveHub(dataclasses.replace(settings, redis_url=redis.url)) as hub, _client(hub) as c:
            params = {"universe": "sp500", "limit": "25"}
            cached = await _until_hit(c, params)
            os.kill(redis.pid or 0, signal.SIGKILL)
            await _past_local_copies(c, params)
            for _ in range(20):
                body = await _scan(c, params)
                assert body["cache"]["hit"] is False and body["items"] == cached["items"]
            assert (await _ready(hub))["status"] == "degraded"
            redis.stop()
            redis.start()
            await _until_hit(c, params)

            async def ok() -> bool:
                return (await _ready(hub))["status"] == "ok"

            await wait_for(ok, timeout=10, what="readiness ok again")
    finally:
        redis.stop()
