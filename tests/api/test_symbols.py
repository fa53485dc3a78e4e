"""``/api/symbols`` on a live hub over the real reference data: search, paging, detail, admin upsert."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from hub.catalog import PatternCatalog
from hub.parsing import parse_event
from store.patterns import ensure_months, store_events
from tests.support import LiveHub, locs, make_event, problem

PROBLEM = "application/problem+json"
Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
def client(token_clients: Client) -> Client:
    return token_clients


async def directory(
    pool: AsyncConnectionPool, where: str = "true", params: tuple[Any, ...] = ()
) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT symbol FROM symbols s WHERE {where} ORDER BY symbol", params)
        return [r["symbol"] for r in await cur.fetchall()]  # type: ignore[call-overload]


async def every_page(
    c: httpx.AsyncClient, params: dict[str, Any], *, limit: int = 500
) -> tuple[list[dict[str, Any]], int]:
    """All items of a search, following ``next_cursor``; returns them and the number of pages."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await c.get("/api/symbols", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert len(body["items"]) == limit


# -- search -----------------------------------------------------------------------------------------


async def test_prefix_search_by_symbol_matches_the_directory(
    client: Client, ref_pool: AsyncConnectionPool
) -> None:
    items, _ = await every_page(client(), {"q": "aa"})
    expected = await directory(ref_pool, "symbol LIKE 'AA%%' OR lower(name) LIKE 'aa%%'")
    assert [i["symbol"] for i in items] == expected
    assert "AAPL" in expected and len(expected) > 20
    first = next(i for i in items if i["symbol"] == "AAPL")
    assert set(first) == {
        "symbol",
        "name",
        "exchange",
        "type",
        "sector",
        "industry",
        "market_cap",
        "active",
        "updated_at",
    }
    assert (first["name"], first["sector"], first["type"], first["active"]) == (
        "Apple Inc.",
        "Information Technology",
        "stock",
        True,
    )


async def test_prefix_search_by_name_is_case_insensitive(client: Client) -> None:
    items, _ = await every_page(client(), {"q": "MICROSO"})
    assert "MSFT" in [i["symbol"] for i in items]
    assert all(i["symbol"].startswith("MICROSO") or i["name"].lower().startswith("microso") for i in items)
    # A prefix, not a substring: "soft" is inside Microsoft but starts neither it nor its symbol.
    inside, _ = await every_page(client(), {"q": "soft"})
    assert "MSFT" not in [i["symbol"] for i in inside]


async def test_like_wildcards_in_q_are_literal(client: Client) -> None:
    response = await client().get("/api/symbols", params={"q": "%"})
    assert response.status_code == 200
    assert response.json()["items"] == []


async def test_filters_combine(client: Client, ref_pool: AsyncConnectionPool) -> None:
    c = client()
    items, _ = await every_page(c, {"sector": "energy", "universe": "sp500"})
    expected = await directory(
        ref_pool,
        "sector = 'Energy' AND EXISTS (SELECT 1 FROM universe_members m"
        " WHERE m.symbol = s.symbol AND m.universe = 'sp500')",
    )
    assert [i["symbol"] for i in items] == expected and len(expected) > 10
    etfs, _ = await every_page(c, {"type": "etf", "exchange": "nyse arca"})
    expected_etfs = await directory(ref_pool, "type = 'etf' AND exchange = 'NYSE ARCA'")
    assert [i["symbol"] for i in etfs] == expected_etfs and len(expected_etfs) > 100


async def test_universe_union_joined_or_repeated(client: Client, ref_pool: AsyncConnectionPool) -> None:
    c = client()
    joined, _ = await every_page(c, {"universe": "dow30:nasdaq100"})
    repeated, _ = await every_page(c, {"universe": ["dow30", "nasdaq100"]})
    expected = await directory(
        ref_pool,
        "EXISTS (SELECT 1 FROM universe_members m WHERE m.symbol = s.symbol"
        " AND m.universe IN ('dow30', 'nasdaq100'))",
    )
    assert [i["symbol"] for i in joined] == [i["symbol"] for i in repeated] == expected
    assert 101 < len(expected) < 131  # overlapping indexes: a union, not a concatenation


async def test_cursor_pages_to_the_end_without_duplicates(
    client: Client, ref_pool: AsyncConnectionPool
) -> None:
    items, pages = await every_page(client(), {"universe": "sp500"}, limit=37)
    symbols = [i["symbol"] for i in items]
    assert len(symbols) == len(set(symbols)) == 503
    assert symbols == sorted(symbols)
    assert pages == 14  # 13 full pages of 37 and one of 22
    assert symbols == await directory(
        ref_pool,
        "EXISTS (SELECT 1 FROM universe_members m WHERE m.symbol = s.symbol AND m.universe = 'sp500')",
    )


async def test_no_filters_lists_the_whole_directory_in_order(
    client: Client, ref_pool: AsyncConnectionPool
) -> None:
    body = (await client().get("/api/symbols")).json()
    assert [i["symbol"] for i in body["items"]] == (await directory(ref_pool))[:50]
    assert body["next_cursor"]


async def test_exact_last_page_has_no_cursor(client: Client) -> None:
    response = await client().get("/api/symbols", params={"universe": "dow30", "limit": 30})
    body = response.json()
    assert len(body["items"]) == 30 and body["next_cursor"] is None


async def test_a_cursor_is_bound_to_its_filters(client: Client) -> None:
    c = client()
    first = (await c.get("/api/symbols", params={"universe": "dow30", "limit": 5})).json()
    cursor = first["next_cursor"]
    assert cursor
    # The same filters in another spelling are the same search; the limit may change.
    same = await c.get("/api/symbols", params={"universe": ["dow30"], "limit": 7, "cursor": cursor})
    assert same.status_code == 200
    assert same.json()["items"][0]["symbol"] > first["items"][-1]["symbol"]
    other = await c.get("/api/symbols", params={"universe": "nasdaq100", "cursor": cursor})
    assert locs(problem(other, 400)) == ["query.cursor"]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64!!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(json.dumps({"after": 5, "f": "x"}).encode()).decode(),
        # the unsigned format before v1, a NUL in the position (it was a 500)
        base64.urlsafe_b64encode(json.dumps({"after": "A\x00", "f": "x"}).encode()).decode(),
        "v1.AA\x00.AA",
        "v1.e30.\n",
        "v1.A.A",
        "v7.e30.AAAA",
    ],
)
async def test_a_tampered_cursor_is_a_400(client: Client, cursor: str) -> None:
    body = problem(await client().get("/api/symbols", params={"cursor": cursor}), 400)
    # Control characters are refused by the one query reader, before the cursor is decoded.
    expected = "invalid query" if any(ord(c) < 32 for c in cursor) else "invalid cursor"
    assert locs(body) == ["query.cursor"] and body["detail"].startswith(expected)


def _edit(cursor: str, **changes: object) -> str:
    """``cursor`` with its payload changed, keeping its MAC."""
    version, payload, mac = cursor.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc.update(changes)
    return f"{version}.{base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip('=')}.{mac}"


@pytest.mark.parametrize("changes", [{"f": "0" * 16}, {"after": "ZZZZ"}, {"after": 5}, {"after": "A\x00"}])
async def test_an_edited_cursor_is_refused(client: Client, changes: dict[str, object]) -> None:
    c = client()
    cursor = (await c.get("/api/symbols", params={"universe": "dow30", "limit": 5})).json()["next_cursor"]
    forged = _edit(cursor, **changes)
    body = problem(await c.get("/api/symbols", params={"universe": "dow30", "cursor": forged}), 400)
    assert locs(body) == ["query.cursor"] and "altered" in body["detail"]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "501"}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"type": "bond"}, "query.type"),
        ({"active": "maybe"}, "query.active"),
        ({"colour": "red"}, "query.colour"),
        ({"universe": "Not A Key"}, "query.universe"),
        ({"universe": "no-such-universe"}, "query.universe"),
        ({"universe": ":".join(f"u{i}" for i in range(51))}, "query.universe"),
        ({"q": ["a", "b"]}, "query.q"),
    ],
)
async def test_bad_queries_are_400_with_the_field(client: Client, params: dict[str, Any], loc: str) -> None:
    body = problem(await client().get("/api/symbols", params=params), 400)
    assert loc in locs(body)


async def test_search_needs_a_token_with_read_scope(client: Client, live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as anonymous:
        problem(await anonymous.get("/api/symbols"), 401)
    problem(await client(scopes=["patterns:write"]).get("/api/symbols"), 403)


# -- one symbol -------------------------------------------------------------------------------------


async def test_symbol_detail_has_universes_and_latest_patterns(
    client: Client, ref_pool: AsyncConnectionPool
) -> None:
    catalog = PatternCatalog.permissive()
    events = [
        parse_event(
            make_event(
                i,
                symbol="MSFT",
                prefix="detail",
                pattern=("hammer", "doji")[i % 2],
                timeframe=("daily", "hourly")[i % 2],
            ),
            catalog=catalog,
        )
        for i in range(12)
    ]
    events.append(parse_event(make_event(99, symbol="AAPL", prefix="detail"), catalog=catalog))
    async with ref_pool.connection() as conn, conn.transaction():
        await ensure_months(conn, events[0].detected_at - timedelta(days=1), events[-1].detected_at)
        await store_events(conn, events)

    response = await client().get("/api/symbols/msft")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["symbol"], body["name"], body["sector"]) == ("MSFT", "Microsoft", "Information Technology")
    assert body["universes"] == sorted(
        ["dow30", "nasdaq", "nasdaq100", "sp500", "sector-information-technology"]
    )
    latest = body["latest_patterns"]
    assert [p["id"] for p in latest] == [f"detail-{i}" for i in range(11, 1, -1)]
    assert set(latest[0]) == {"id", "pattern", "timeframe", "confidence", "detected_at", "type"}
    assert (latest[0]["pattern"], latest[0]["timeframe"], latest[0]["type"]) == (
        "doji",
        "hourly",
        "pattern_detected",
    )
    assert latest[0]["confidence"] == pytest.approx(0.11)
    assert latest[0]["detected_at"].startswith("2026-11-02T14:30:11")


async def test_symbol_with_dot_and_slash_forms(client: Client) -> None:
    c = client()
    body = (await c.get("/api/symbols/brk.b")).json()
    assert body["symbol"] == "BRK.B" and "sp500" in body["universes"] and body["latest_patterns"] == []


@pytest.mark.parametrize(
    "path", ["/api/symbols/NOPE123", "/api/symbols/not%20a%20symbol", "/api/symbols/A/B/C"]
)
async def test_unknown_or_invalid_symbol_is_404(client: Client, path: str) -> None:
    body = problem(await client().get(path), 404)
    assert body["detail"].startswith("no symbol")


# -- admin upsert -----------------------------------------------------------------------------------


async def test_admin_upserts_new_and_existing_symbols(client: Client, ref_pool: AsyncConnectionPool) -> None:
    admin, reader = client("ops", ["admin"]), client()
    first = await admin.put(
        "/api/symbols",
        json={
            "symbols": [
                {
                    "symbol": "zzt.a",
                    "name": "  Test Alpha  ",
                    "exchange": "NYSE",
                    "type": "etf",
                    "sector": "Energy",
                    "industry": "Oil",
                    "market_cap": 123,
                    "active": False,
                },
                {"symbol": "ZZT/B", "name": "Test Beta"},
            ]
        },
    )
    assert first.status_code == 200, first.text
    assert first.json() == {"upserted": 2}
    alpha = (await reader.get("/api/symbols/ZZT.A")).json()
    assert {
        k: alpha[k] for k in ("name", "exchange", "type", "sector", "industry", "market_cap", "active")
    } == {
        "name": "Test Alpha",
        "exchange": "NYSE",
        "type": "etf",
        "sector": "Energy",
        "industry": "Oil",
        "market_cap": 123,
        "active": False,
    }
    beta = (await reader.get("/api/symbols/zzt/b")).json()
    assert (beta["symbol"], beta["type"], beta["active"], beta["exchange"]) == ("ZZT/B", "stock", True, None)

    inactive, _ = await every_page(reader, {"q": "ZZT", "active": "false"})
    assert [i["symbol"] for i in inactive] == ["ZZT.A"]

    # Omitted fields keep their values, null clears one, an unchanged row is not rewritten.
    second = await admin.put(
        "/api/symbols",
        json={
            "symbols": [
                {"symbol": "ZZT.A", "name": "Test Alpha Renamed", "sector": None},
                {"symbol": "ZZT/B", "name": "Test Beta"},
            ]
        },
    )
    assert second.json() == {"upserted": 2}
    renamed = (await reader.get("/api/symbols/ZZT.A")).json()
    assert (
        renamed["name"],
        renamed["sector"],
        renamed["exchange"],
        renamed["type"],
        renamed["market_cap"],
        renamed["active"],
    ) == ("Test Alpha Renamed", None, "NYSE", "etf", 123, False)
    assert renamed["updated_at"] > alpha["updated_at"]
    assert (await reader.get("/api/symbols/ZZT/B")).json()["updated_at"] == beta["updated_at"]
    assert await directory(ref_pool, "symbol LIKE 'ZZT%%'") == ["ZZT.A", "ZZT/B"]
    assert (await admin.put("/api/symbols", json={"symbols": []})).json() == {"upserted": 0}


async def test_upsert_field_errors_name_the_index(client: Client, ref_pool: AsyncConnectionPool) -> None:
    admin = client("ops", ["admin"])
    response = await admin.put(
        "/api/symbols",
        json={
            "symbols": [
                {"symbol": "ZZOK", "name": "Fine"},
                {"symbol": "ZZOK2"},
                {"symbol": "bad symbol!", "name": "x"},
                {"symbol": "ZZOK3", "name": "x", "type": "bond", "market_cap": -1, "colour": "red"},
            ]
        },
    )
    body = problem(response, 400)
    assert set(locs(body)) == {
        "body.symbols[1].name",
        "body.symbols[2].symbol",
        "body.symbols[3].type",
        "body.symbols[3].market_cap",
        "body.symbols[3].colour",
    }
    assert await directory(ref_pool, "symbol LIKE 'ZZOK%%'") == []  # nothing written

    duplicate = await admin.put(
        "/api/symbols", json={"symbols": [{"symbol": "ZZDUP", "name": "a"}, {"symbol": "zzdup", "name": "b"}]}
    )
    assert locs(problem(duplicate, 400)) == ["body.symbols[1].symbol"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"symbols": "AAPL"}', 400),
        (json.dumps({"symbols": [{"symbol": f"Z{i}", "name": "n"} for i in range(5001)]}).encode(), 413),
        (b" " * (4 * 1024 * 1024 + 1), 413),
    ],
)
async def test_upsert_rejects_malformed_and_oversized_bodies(
    client: Client, body: bytes, status: int
) -> None:
    response = await client("ops", ["admin"]).put(
        "/api/symbols", content=body, headers={"content-type": "application/json"}
    )
    problem(response, status)


async def test_upsert_oversized_body_without_length_is_413(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    response = await client("ops", ["admin"]).put("/api/symbols", content=chunks())
    problem(response, 413)


async def test_upsert_needs_admin(client: Client, ref_pool: AsyncConnectionPool) -> None:
    for scopes in (["patterns:read"], ["patterns:read", "universe:write", "patterns:write"]):
        response = await client("someone", scopes).put(
            "/api/symbols", json={"symbols": [{"symbol": "ZZNO", "name": "n"}]}
        )
        assert problem(response, 403)["detail"] == "this needs the 'admin' scope"
    assert await directory(ref_pool, "symbol = 'ZZNO'") == []
