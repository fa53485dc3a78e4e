"""The hot path's in-process layers on a live hub: copies in front of Redis and the notices that drop them,
validated scan queries remembered by their text, and the scan's cache key."""

from __future__ import annotations

import copy
import json

import pytest
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict

from api.cache import HubCache
from api.querymemo import QueryMemo
from api.routes.scan_cache import scan_key
from hub.subjects import CACHE_BUMPED_SUBJECT, CACHE_LOST_SUBJECT
from store.scans import Sort
from tests.api.conftest import TokenClients
from tests.support import LiveHub, wait_for

SCAN = "/api/patterns/scan"
DAILY = {"timeframe": "daily", "limit": "5"}


def _cache(live_hub: LiveHub) -> HubCache:
    assert live_hub.hub.cache is not None
    return live_hub.hub.cache


async def _hot(client: object, cache: HubCache, path: str, params: dict[str, str] | None = None) -> bool:
    """One request; True when it was answered from this process's copy."""
    hits = cache.local.hits
    response = await client.get(path, params=params)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    return cache.local.hits > hits


async def _changed(cache: HubCache, names: list[str], before: tuple[int, ...]) -> None:
    async def moved() -> bool:
        return cache.local.snapshot(names) != before

    await wait_for(moved, timeout=10, what="the notice reached the in-process copies")


async def test_a_hot_scan_is_served_from_memory_until_a_bump_notice(
    live_hub: LiveHub, token_clients: TokenClients, nats_client: NATS
) -> None:
    cache, client = _cache(live_hub), token_clients("hot-reader")

    async def from_memory() -> bool:
        return await _hot(client, cache, SCAN, DAILY)

    await wait_for(from_memory, timeout=10, what="a scan from the in-process copy")
    before = cache.local.snapshot(["daily"])
    await nats_client.publish(CACHE_BUMPED_SUBJECT, json.dumps({"generations": ["daily"]}).encode())
    await _changed(cache, ["daily"], before)
    assert not await _hot(client, cache, SCAN, DAILY)  # asked Redis again ...
    await wait_for(from_memory, timeout=10, what="the copy taken again")  # ... and kept its answer


async def test_another_timeframe_s_notice_leaves_the_copy_alone(
    live_hub: LiveHub, token_clients: TokenClients, nats_client: NATS
) -> None:
    cache, client = _cache(live_hub), token_clients("hot-other")

    async def from_memory() -> bool:
        return await _hot(client, cache, SCAN, DAILY)

    await wait_for(from_memory, timeout=10, what="a scan from the in-process copy")
    before = cache.local.snapshot(["weekly"])
    await nats_client.publish(CACHE_BUMPED_SUBJECT, json.dumps({"generations": ["weekly"]}).encode())
    await _changed(cache, ["weekly"], before)
    assert await _hot(client, cache, SCAN, DAILY)


@pytest.mark.parametrize("payload", [b"not json", b'{"no": "generations"}', b'{"generations": 5}'])
async def test_a_notice_that_does_not_parse_drops_every_copy(
    live_hub: LiveHub, token_clients: TokenClients, nats_client: NATS, payload: bytes
) -> None:
    cache, client = _cache(live_hub), token_clients("hot-garbage")

    async def from_memory() -> bool:
        return await _hot(client, cache, SCAN, DAILY)

    await wait_for(from_memory, timeout=10, what="a scan from the in-process copy")
    await nats_client.publish(CACHE_BUMPED_SUBJECT, payload)

    async def emptied() -> bool:
        return len(cache.local) == 0

    await wait_for(emptied, timeout=10, what="every copy dropped")
    assert not await _hot(client, cache, SCAN, DAILY)


async def test_a_lost_bump_notice_drops_the_copies_too(
    live_hub: LiveHub, token_clients: TokenClients, nats_client: NATS
) -> None:
    cache, client = _cache(live_hub), token_clients("hot-lost")

    async def from_memory() -> bool:
        return await _hot(client, cache, SCAN, DAILY)

    await wait_for(from_memory, timeout=10, what="a scan from the in-process copy")
    before = cache.local.snapshot(["daily"])
    await nats_client.publish(CACHE_LOST_SUBJECT, json.dumps({"generations": ["daily"]}).encode())
    await _changed(cache, ["daily"], before)
    assert not await _hot(client, cache, SCAN, DAILY)


@pytest.mark.parametrize("path", ["/api/patterns/definitions", "/api/universes"])
async def test_reference_answers_are_dropped_by_the_reference_notice(
    live_hub: LiveHub, token_clients: TokenClients, path: str
) -> None:
    """PostgreSQL's NOTIFY tickstock_reference (what every reference trigger sends) is the notice."""
    cache, client = _cache(live_hub), token_clients("hot-reference")

    async def from_memory() -> bool:
        return await _hot(client, cache, path)

    await wait_for(from_memory, timeout=10, what="the reference answer from memory")
    before = cache.local.snapshot(["ref"])
    async with live_hub.hub.pool.connection() as conn:
        await conn.execute("SELECT pg_notify('tickstock_reference', 'test')")
    await _changed(cache, ["ref"], before)
    assert not await _hot(client, cache, path)
    await wait_for(from_memory, timeout=10, what="the reference answer from memory again")


async def test_a_nats_reconnect_drops_every_copy(live_hub: LiveHub, token_clients: TokenClients) -> None:
    """Notices may have been lost while NATS was away: the first request after a reconnect clears memory."""
    cache, client = _cache(live_hub), token_clients("hot-reconnect")

    async def from_memory() -> bool:
        return await _hot(client, cache, SCAN, DAILY)

    await wait_for(from_memory, timeout=10, what="a scan from the in-process copy")
    cache._reconnects -= 1  # as if the client had reconnected since the last look
    assert not await _hot(client, cache, SCAN, DAILY)


# -- validated queries by their text, and the key ------------------------------------------------------


async def test_a_scan_query_is_validated_once_per_text(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    assert live_hub.app is not None
    memo: QueryMemo[object] = live_hub.app.state.scan_queries
    client = token_clients("memo-reader")
    params = {"limit": "7", "timeframe": "hourly", "symbol": "MSFT"}
    first = await client.get(SCAN, params=params)
    hits = memo.hits
    second = await client.get(SCAN, params=params)
    assert first.status_code == second.status_code == 200 and memo.hits == hits + 1
    # A query that does not validate is refused every time, and never remembered.
    size = len(memo)
    for _ in range(2):
        assert (await client.get(SCAN, params={"limit": "0", "x": "1"})).status_code == 400
    assert len(memo) == size
    # A new catalog (its maintenance reload) means the query is read again.
    live_hub.hub.catalog.current = copy.copy(live_hub.hub.catalog.current)
    hits = memo.hits
    assert (await client.get(SCAN, params=params)).status_code == 200 and memo.hits == hits


def test_query_memo_bounds() -> None:
    memo: QueryMemo[int] = QueryMemo(max_entries=2, max_query_bytes=8)
    version = object()
    memo.put(b"a", version, 1)
    memo.put(b"b", version, 2)
    assert memo.get(b"a", version) == 1  # b is the least recently used
    memo.put(b"c", version, 3)
    assert memo.get(b"b", version) is None and len(memo) == 2
    memo.put(b"x" * 9, version, 9)
    assert memo.get(b"x" * 9, version) is None  # too long to keep
    assert memo.get(b"a", object()) is None and memo.get(b"a", version) is None  # another version: gone
    assert QueryMemo(max_entries=0).get(b"a", version) is None


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True)

    limit: int = 50
    timeframe: list[str] = []
    history: bool = False  # a parameter the key was never told about


def test_the_scan_key_holds_every_validated_parameter() -> None:
    def key(params: _Params) -> str:
        return scan_key(params, fingerprint="f", sort=Sort(), offset=0, after=None)

    assert key(_Params()) == key(_Params())
    assert key(_Params(history=True)) != key(_Params())  # a new parameter keys by itself
    assert key(_Params(limit=10)) != key(_Params())
    # Filter parameters are keyed through the filter's fingerprint (normalised), not their raw value.
    assert key(_Params(timeframe=["daily", "hourly"])) == key(_Params(timeframe=["hourly", "daily"]))
    assert scan_key(_Params(), fingerprint="g", sort=Sort(), offset=0, after=None) != key(_Params())
    assert scan_key(_Params(), fingerprint="f", sort=Sort(), offset=0, after=("x", 1)) != key(_Params())


async def test_a_lost_bump_drops_this_node_s_copies_at_once(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    """A bump that cannot reach Redis is announced on NATS, which may fail too: the node's own copies
    of those generations go at once, not when (or if) the announcement comes back."""
    cache, client = _cache(live_hub), token_clients("hot-lose")

    async def from_memory() -> bool:
        return await _hot(client, cache, SCAN, DAILY)

    await wait_for(from_memory, timeout=10, what="a scan from the in-process copy")
    before = cache.local.snapshot(["daily"])
    cache.responses.lose(["daily"])
    assert cache.local.snapshot(["daily"]) != before
    assert not await _hot(client, cache, SCAN, DAILY)  # the node bypasses until it replayed the bump
    await wait_for(from_memory, timeout=10, what="copies again once the bump was replayed")
