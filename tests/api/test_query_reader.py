"""The one query reader (``api.validation.parse_query``) and the admin body bounds, through the real app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from api.auth import mint_token
from api.jsonbound import MAX_DEPTH as MAX_JSON_DEPTH
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, locs, problem

DLQ = "/api/admin/dlq"
SCAN = "/api/patterns/scan"
MISSING_REPLAY = "/api/admin/dlq/999999999/replay"


@pytest_asyncio.fixture(loop_scope="session")
async def admin(live_hub: LiveHub) -> AsyncIterator[httpx.AsyncClient]:
    token = mint_token(JWT_SECRET, subject="reader-admin", scopes=["admin"])
    async with httpx.AsyncClient(
        base_url=live_hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


# path, query, the error's loc, words in its msg
BAD_QUERIES = [
    (DLQ, "limit=ten", "query.limit", "integer"),
    (DLQ, "limit=0", "query.limit", "greater than or equal to 1"),
    (DLQ, "limit=501", "query.limit", "less than or equal to 500"),
    (DLQ, "before=99999999999999999999", "query.before", "less than or equal"),
    (DLQ, "replayed=maybe", "query.replayed", "boolean"),
    (DLQ, "limit=5&limit=6", "query.limit", "given more than once"),
    (DLQ, "reason=a%00b", "query.reason", "control character"),
    (DLQ, "reason=a%0D%0Ab", "query.reason", "control character"),
    (DLQ, "colour=red", "query.colour", "unknown parameter"),
    (DLQ, "reason=%7F", "query.reason", "control character"),
    (SCAN, "symbol=AAPL%0A", "query.symbol", "control character"),
    (SCAN, "cursor=abc%00", "query.cursor", "control character"),
    (SCAN, "limit=5&per_page=5", "query.per_page", "same parameter"),
    ("/api/universes", "kind=index%01", "query.kind", "control character"),
    ("/api/symbols", "limit=1&limit=2", "query.limit", "given more than once"),
]


@pytest.mark.parametrize(
    ("path", "query", "loc", "words"), BAD_QUERIES, ids=[f"{p} {q}" for p, q, _, _ in BAD_QUERIES]
)
async def test_bad_query_values_are_documented_400s(
    admin: httpx.AsyncClient, path: str, query: str, loc: str, words: str
) -> None:
    body = problem(await admin.get(f"{path}?{query}"), 400)
    assert loc in locs(body), body
    assert any(words in e["msg"] for e in body["errors"]), body
    assert body["detail"]


async def test_good_queries_are_typed(admin: httpx.AsyncClient) -> None:
    response = await admin.get(DLQ, params={"limit": "3", "replayed": "false"})
    assert response.status_code == 200, response.text
    assert response.json()["next_before"] is None or isinstance(response.json()["next_before"], int)


async def test_purge_needs_a_condition(admin: httpx.AsyncClient) -> None:
    body = problem(await admin.delete(DLQ), 400)
    assert locs(body) == ["query"]
    problem(await admin.delete(DLQ, params={"replayed": "false"}), 400)  # only "true" means something


# -- admin replay bodies ----------------------------------------------------------------------------


async def test_a_huge_replay_body_is_a_413(admin: httpx.AsyncClient, live_hub: LiveHub) -> None:
    limit = live_hub.settings.admin_max_body_bytes
    assert limit == 1024 * 1024  # the default
    body = problem(await admin.post(MISSING_REPLAY, content=b" " * (limit + 1)), 413)
    assert str(limit) in body["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound holds while streaming
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    problem(await admin.post(MISSING_REPLAY, content=chunks()), 413)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 100_000])
async def test_a_deeply_nested_replay_body_is_a_400(admin: httpx.AsyncClient, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    body = problem(await admin.post(MISSING_REPLAY, content=nested), 400)
    assert locs(body) == ["body"]
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    problem(await admin.post(MISSING_REPLAY, content=objects), 400)


async def test_a_body_at_the_depth_bound_is_read(admin: httpx.AsyncClient) -> None:
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    # Read and accepted as JSON; then the replay itself answers: no such dead letter.
    body = problem(await admin.post(MISSING_REPLAY, content=nested), 404)
    assert body["detail"] == "no dead letter 999999999"
