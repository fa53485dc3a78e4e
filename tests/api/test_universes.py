"""``/api/universes`` on a live hub over the real reference data: list, detail, unions, 404."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support import LiveHub, locs, problem

Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
def client(token_clients: Client) -> Client:
    return lambda scopes=("patterns:read",): token_clients("reader", scopes)


async def members(pool: AsyncConnectionPool, *keys: str) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT DISTINCT symbol FROM universe_members WHERE universe = ANY(%s) ORDER BY symbol",
            (list(keys),),
        )
        return [r["symbol"] for r in await cur.fetchall()]  # type: ignore[call-overload]


async def test_list_has_every_universe_with_member_counts(
    client: Client, ref_pool: AsyncConnectionPool
) -> None:
    response = await client().get("/api/universes")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    by_key = {u["key"]: u for u in items}
    assert [u["key"] for u in items] == sorted(by_key)
    assert {k: by_key[k]["count"] for k in ("sp500", "dow30", "nasdaq100")} == {
        "sp500": 503,
        "dow30": 30,
        "nasdaq100": 101,
    }
    assert sum(1 for u in items if u["kind"] == "sector") == 11
    assert by_key["sp500"]["name"] == "S&P 500" and by_key["sp500"]["kind"] == "index"
    assert set(by_key["dow30"]) == {"key", "name", "kind", "description", "updated_at", "count"}
    assert by_key["etfs"]["count"] == len(await members(ref_pool, "etfs"))


async def test_list_filters_by_kind(client: Client) -> None:
    sectors = (await client().get("/api/universes", params={"kind": "sector"})).json()["items"]
    assert len(sectors) == 11 and all(
        u["kind"] == "sector" and u["key"].startswith("sector-") for u in sectors
    )
    assert sum(u["count"] for u in sectors) == 503  # every S&P 500 member is in exactly one sector
    assert (await client().get("/api/universes", params={"kind": "custom"})).json()["items"] == []


@pytest.mark.parametrize("params", [{"kind": "union"}, {"kind": ""}, {"sort": "name"}])
async def test_list_rejects_a_bad_query(client: Client, params: dict[str, str]) -> None:
    body = problem(await client().get("/api/universes", params=params), 400)
    assert locs(body) == [f"query.{next(iter(params))}"]


async def test_one_universe_with_members(client: Client, ref_pool: AsyncConnectionPool) -> None:
    body = (await client().get("/api/universes/dow30")).json()
    assert (body["key"], body["name"], body["kind"], body["count"]) == (
        "dow30",
        "Dow Jones Industrial Average",
        "index",
        30,
    )
    assert "dow30.csv" in body["description"]
    assert [m["symbol"] for m in body["members"]] == await members(ref_pool, "dow30")
    aapl = next(m for m in body["members"] if m["symbol"] == "AAPL")
    assert aapl == {
        "symbol": "AAPL",
        "name": "Apple Inc.",
        "sector": "Information Technology",
        "weight": None,
    }


async def test_joined_keys_are_a_union(client: Client, ref_pool: AsyncConnectionPool) -> None:
    body = (await client().get("/api/universes/sp500:nasdaq100")).json()
    expected = await members(ref_pool, "sp500", "nasdaq100")
    assert body["kind"] == "union"
    assert body["key"] == "sp500:nasdaq100" and body["parts"] == ["sp500", "nasdaq100"]
    assert body["name"] == "S&P 500 + Nasdaq-100"
    assert [m["symbol"] for m in body["members"]] == expected
    assert body["count"] == len(expected) and 503 < len(expected) < 604
    # A key repeated is still one universe.
    again = (await client().get("/api/universes/dow30:dow30")).json()
    assert (again["kind"], again["count"]) == ("index", 30)


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        ("nope", "no such universe: nope"),
        ("sp500:nope:zilch", "no such universe: nope, zilch"),
        ("Not%20A%20Key", "no universe"),
        (":".join(["dow30"] + [f"u{i}" for i in range(60)]), "no universe"),
    ],
)
async def test_unknown_universe_is_404(client: Client, key: str, detail: str) -> None:
    body = problem(await client().get(f"/api/universes/{key}"), 404)
    assert body["detail"].startswith(detail)


async def test_universes_need_read_scope(client: Client, live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as anonymous:
        problem(await anonymous.get("/api/universes"), 401)
    problem(await client(["universe:write"]).get("/api/universes/sp500"), 403)
