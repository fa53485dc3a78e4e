"""Cached reads answered before the router (``api.hotreads``): the same answer as the full path, byte for
byte (a scan's per-request figures aside); every request it cannot answer in full handed on untouched; one
rate-limit token each; nothing that depends on the caller."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.requests import Request

import api.auth
from api.app import create_app
from api.auth import LEEWAY_S, Authenticator, mint_token
from api.hotreads import MAX_QUERY_BYTES, HotReads
from api.ratelimit import Decision, RateLimiter
from api.settings import Settings
from store.cache import Dependencies
from store.cache_entries import Source
from tests.api.conftest import TokenClients
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, problem, wait_for

HOT = [
    "/api/universes",
    "/api/universes?kind=index",
    "/api/universes/dow30",
    "/api/universes/dow30:nasdaq100",
    "/api/patterns/definitions",
    "/api/symbols?q=AA&limit=5",
    "/api/symbols/AAPL",
]
PER_REQUEST = {"x-request-id", "date", "ratelimit-remaining"}  # differ between any two answers


def bearer(subject: str | None = None, *scopes: str, ttl_s: float = 600) -> dict[str, str]:
    token = mint_token(
        JWT_SECRET,
        subject=subject or f"hot-{uuid.uuid4().hex[:10]}",
        scopes=list(scopes or ("patterns:read",)),
        ttl_s=ttl_s,
    )
    return {"Authorization": f"Bearer {token}"}


def reads_of(hub: LiveHub) -> HotReads:
    assert hub.app is not None
    reads: HotReads = hub.app.state.hot_reads
    return reads


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in PER_REQUEST]
    return response.status_code, response.content, headers


async def until_hot(
    client: httpx.AsyncClient, reads: HotReads, path: str, headers: dict[str, str]
) -> httpx.Response:
    """GET ``path`` until the hot path answers it (the rate-limit lease may need a draw or two first)."""
    for _ in range(6):
        before = reads.served
        response = await client.get(path, headers=headers)
        if reads.served == before + 1:
            return response
    raise AssertionError(f"{path} was never answered by the hot path")


@contextlib.asynccontextmanager
async def in_process(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


@pytest.mark.parametrize("path", HOT)
async def test_a_hot_answer_is_the_full_paths_answer(live_hub: LiveHub, path: str) -> None:
    """Over uvicorn: the first request of a token goes the full way (its token is not remembered yet),
    later ones are answered before the router; status, body and headers are the same, 200 and 304."""
    reads = reads_of(live_hub)
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        assert (await client.get(path, headers=bearer())).status_code == 200  # now in the cache
        headers = bearer()
        before = reads.served
        full = await client.get(path, headers=headers)
        assert full.status_code == 200 and full.headers["x-cache"] == "hit", full.text
        assert reads.served == before  # a token seen for the first time is verified by the full path
        hot = await until_hot(client, reads, path, headers)
        assert comparable(hot) == comparable(full)
        assert hot.headers["x-cache"] == "hit" and hot.headers["etag"] == full.headers["etag"]
        assert 0 <= int(hot.headers["ratelimit-remaining"]) < int(full.headers["ratelimit-remaining"])

        cached = {**bearer(), "If-None-Match": f'W/"other", {full.headers["etag"]}'}
        full_304 = await client.get(path, headers=cached)
        hot_304 = await until_hot(client, reads, path, cached)
    assert full_304.status_code == 304 and full_304.content == b""
    assert comparable(hot_304) == comparable(full_304)


async def test_hot_answers_are_counted_at_metrics(live_hub: LiveHub) -> None:
    reads = reads_of(live_hub)
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        await until_hot(client, reads, "/api/universes?kind=etf", bearer())
        text = (await client.get("/metrics")).text
    counted = re.search(r"^tickstock_hot_reads_total (\S+)$", text, re.MULTILINE)
    assert counted is not None and float(counted.group(1)) == reads.served > 0


async def test_what_the_hot_path_cannot_answer_goes_the_full_way(live_hub: LiveHub) -> None:
    reads = reads_of(live_hub)
    path = "/api/universes?kind=sector"
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        await until_hot(client, reads, path, bearer())
        before = reads.served
        problem(await client.get(path), 401)  # no token
        problem(await client.get(path, headers={"Authorization": "Bearer not.a.token"}), 401)
        problem(await client.get(path, headers={"Authorization": "Basic " + "x" * 20}), 401)
        problem(await client.get(path, headers=bearer(None, "universe:write")), 403)
        bad = problem(await client.get("/api/universes?kind=planet", headers=bearer()), 400)
        assert bad["errors"][0]["loc"] == "query.kind"
        other = await client.get("/api/universes?kind=sector&", headers=bearer())  # another query string
        head = await client.head(path, headers=bearer())
        assert other.status_code == 200 and head.status_code == 200 and head.content == b""
        assert reads.served == before
        assert reads.find("/api/universes", b"kind=planet") is None


async def test_a_hot_scan_is_the_full_paths_scan_with_its_own_figures(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    """A scan's body is the cached rows and cursor, then this request's ``query_ms`` and cache age."""
    reads, path = reads_of(live_hub), "/api/patterns/scan?limit=5&order=asc"
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        assert (await client.get(path, headers=bearer())).status_code == 200  # now in the cache
        headers = bearer()
        full = await client.get(path, headers=headers)
        hot = await until_hot(client, reads, path, headers)
        revalidated = await until_hot(client, reads, path, {**headers, "If-None-Match": hot.headers["etag"]})
    assert full.headers["etag"].startswith('W/"') and hot.headers["etag"] == full.headers["etag"]
    figures = ("query_ms", "cache")
    body, full_body = hot.json(), full.json()
    assert {k: v for k, v in body.items() if k not in figures} == {
        k: v for k, v in full_body.items() if k not in figures
    }
    assert body["cache"]["hit"] is True and body["cache"]["age_ms"] >= 0 and 0 <= body["query_ms"] < 1000
    assert list(body) == list(full_body)  # the same keys in the same order
    assert comparable(hot)[2] == [
        (k, str(len(hot.content)) if k == "content-length" else v) for k, v in comparable(full)[2]
    ]
    assert revalidated.status_code == 304 and revalidated.content == b""


async def test_a_scan_of_the_callers_own_universe_is_never_learned(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    """``universe=my`` answers depend on the token: a learned one would be served to the next caller."""
    reads = reads_of(live_hub)
    client = token_clients("hot-my", scopes=("patterns:read", "universe:write"))
    saved = await client.put("/api/users/universe", json={"symbols": ["AAPL"], "universe_keys": []})
    assert saved.status_code == 200, saved.text
    for _ in range(3):
        assert (await client.get("/api/patterns/scan?universe=my&limit=5")).status_code == 200
    assert reads.find("/api/patterns/scan", b"universe=my&limit=5") is None


async def test_a_remembered_token_past_its_exp_is_refused_on_a_hot_path(
    settings: Settings, live_hub: LiveHub
) -> None:
    app = create_app(settings, hub=live_hub.hub)
    auth = app.state.auth
    now = [time.time()]
    auth.clock = lambda: now[0]
    headers = bearer(ttl_s=60)
    exp = float(json.loads(api.auth._b64decode(headers["Authorization"].split(".")[1]))["exp"])
    async with in_process(app) as client:
        await until_hot(client, app.state.hot_reads, "/api/universes", headers)
        now[0] = exp + LEEWAY_S + 1
        refused = problem(await client.get("/api/universes", headers=headers), 401)
    assert "expired" in refused["detail"]


async def test_each_answer_takes_one_rate_limit_token(settings: Settings, live_hub: LiveHub) -> None:
    """The bucket holds 40 tokens and refills next to nothing: exactly 40 answers, hot or not, then 429."""
    app = create_app(settings, hub=live_hub.hub)
    app.state.rate_limiter = RateLimiter(rate_per_s=0.001, burst=40, sync_s=100_000)
    headers = bearer()
    async with in_process(app) as client:
        codes = [
            (await client.get("/api/patterns/definitions", headers=headers)).status_code for _ in range(50)
        ]
    assert codes == [200] * 40 + [429] * 10
    assert app.state.hot_reads.served >= 20  # most of them came from memory: the leases grow with demand


async def test_a_changed_definition_reaches_the_hot_path(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    reads = reads_of(live_hub)
    path = "/api/patterns/definitions"
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        headers = bearer()
        old = await until_hot(client, reads, path, headers)
        await until_hot(client, reads, "/api/patterns/scan?limit=3", headers)
        admin = token_clients("hot-admin", scopes=("admin",))
        put = await admin.put(f"{path}/zz_hot_read", json={"category": "chart", "description": "hot"})
        assert put.status_code == 201, put.text

        async def listed() -> bool:
            response = await client.get(path, headers=headers)
            return any(d["name"] == "zz_hot_read" for d in response.json()["items"])

        await wait_for(listed, timeout=5)
        new = await until_hot(client, reads, path, headers)
        # A scan learned under the old catalog is validated again under the new one.
        assert reads.find("/api/patterns/scan", b"limit=3") is not None
        served = reads.served
        assert (await client.get("/api/patterns/scan?limit=3", headers=headers)).status_code == 200
        assert reads.served == served
    assert new.headers["etag"] != old.headers["etag"]
    assert any(d["name"] == "zz_hot_read" for d in new.json()["items"])


# -- the memory of learned reads (pure logic) -------------------------------------------------------


def _request(
    path: str, query: bytes = b"", *, method: str = "GET", scope: str | None = "patterns:read"
) -> Request:
    def endpoint() -> None: ...

    if scope is not None:
        endpoint.required_scope = scope  # type: ignore[attr-defined]
    return Request(
        {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": query,
            "headers": [],
            "endpoint": endpoint,
        }
    )


SOURCE = Source("universes", "k", Dependencies(strict=("ref",)))


def test_reads_are_bounded_and_the_least_recently_learned_goes_first() -> None:
    reads = HotReads(max_entries=2)
    for path in ("/a", "/b", "/a", "/c"):
        reads.learn(_request(path), SOURCE)
    assert len(reads) == 2 and reads.find("/b", b"") is None
    found = reads.find("/a", b"")
    assert found is not None and found.source == SOURCE and found.scope == "patterns:read"


def test_only_guarded_gets_with_short_queries_are_learned() -> None:
    reads = HotReads()
    reads.learn(_request("/p", method="HEAD"), SOURCE)
    reads.learn(_request("/p", scope=None), SOURCE)
    reads.learn(_request("/p", b"q=" + b"x" * MAX_QUERY_BYTES), SOURCE)
    assert len(reads) == 0
    reads.learn(_request("/p", b"q=" + b"x" * (MAX_QUERY_BYTES - 2)), SOURCE)
    assert len(reads) == 1
    off = HotReads(max_entries=0)
    off.learn(_request("/p"), SOURCE)
    assert len(off) == 0
    with pytest.raises(ValueError):
        HotReads(max_entries=-1)


async def test_an_app_without_a_cache_answers_the_full_way(settings: Settings, live_hub: LiveHub) -> None:
    app = create_app(settings, hub=live_hub.hub)
    headers = bearer()
    async with in_process(app) as client:
        await until_hot(client, app.state.hot_reads, "/api/universes", headers)
        app.state.hub = dataclasses.replace(live_hub.hub, cache=None)
        served = app.state.hot_reads.served
        response = await client.get("/api/universes", headers=headers)
    assert response.status_code == 200 and response.headers["x-cache"] == "bypass"
    assert app.state.hot_reads.served == served


# -- what the hot path asks of the authenticator and the limiter -----------------------------------


async def test_remembered_answers_only_for_a_verified_bearer_token() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    header = bearer("remembered")["Authorization"]
    assert auth.remembered(header) is None  # not verified yet
    await auth.verify(header[7:])
    principal = auth.remembered(header)
    assert principal is not None and principal.subject == "remembered"
    assert auth.remembered("bearer  " + header[7:] + " ") == principal  # as bearer() reads it
    assert auth.remembered(header[7:]) is None and auth.remembered("Basic " + header[7:]) is None
    assert Authenticator(Settings()).remembered(header) is None  # authentication is not configured


async def test_take_now_spends_a_lease_token_or_takes_nothing(redis_client: aioredis.Redis) -> None:
    assert RateLimiter(rate_per_s=0).take_now(redis_client, "anyone") == Decision(True, 0, 0, 0.0, False)
    limiter = RateLimiter(rate_per_s=0.001, burst=10, sync_s=100_000, key_prefix=f"hot-{uuid.uuid4().hex}:")
    assert limiter.take_now(redis_client, "s") is None and limiter.draws == 0  # no lease: acquire() draws
    decisions, quick = [], 0
    for _ in range(15):
        decision = limiter.take_now(redis_client, "s")
        quick += decision is not None
        decisions.append(decision or await limiter.acquire(redis_client, "s"))
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 5  # one token each, either way
    assert quick > 0 and decisions[-1].checked
