"""``/api/users/…`` on a live hub: each caller's universe, watchlists and saved filters, kept apart."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError
from psycopg_pool import AsyncConnectionPool

from hub.subjects import UNIVERSE_CHANGED_SUBJECT
from tests.support import LiveHub, locs, problem

Client = Callable[..., httpx.AsyncClient]
WRITE = ("patterns:read", "universe:write")
UNIVERSE = "/api/users/universe"


@pytest.fixture
def client(token_clients: Client) -> Client:
    return lambda subject, scopes=WRITE: token_clients(subject, scopes)


async def covered(pool: AsyncConnectionPool, symbols: list[str], keys: list[str]) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM symbols s WHERE s.symbol = ANY(%s) OR EXISTS"
            " (SELECT 1 FROM universe_members m WHERE m.symbol = s.symbol AND m.universe = ANY(%s))",
            (symbols, keys),
        )
        row = await cur.fetchone()
        return int(row["n"])  # type: ignore[index,call-overload]


async def first_symbols(pool: AsyncConnectionPool, n: int) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT symbol FROM symbols ORDER BY symbol LIMIT %s", (n,))
        return [r["symbol"] for r in await cur.fetchall()]  # type: ignore[call-overload]


# -- the user's universe ----------------------------------------------------------------------------


async def test_a_new_user_has_an_empty_universe(client: Client) -> None:
    response = await client("newcomer", ["patterns:read"]).get(UNIVERSE)
    assert response.status_code == 200, response.text
    assert response.json() == {"symbols": [], "universe_keys": [], "resolved_count": 0, "updated_at": None}


async def test_put_replaces_and_users_are_isolated(client: Client, ref_pool: AsyncConnectionPool) -> None:
    alice, bob = client("alice-u"), client("bob-u")
    response = await alice.put(
        UNIVERSE, json={"symbols": ["aapl", "BRK.B", "AAPL", "tsla"], "universe_keys": ["dow30", "dow30"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["symbols"] == ["AAPL", "BRK.B", "TSLA"] and body["universe_keys"] == ["dow30"]
    assert body["resolved_count"] == await covered(ref_pool, ["AAPL", "BRK.B", "TSLA"], ["dow30"])
    assert 30 < body["resolved_count"] <= 33
    assert datetime.fromisoformat(body["updated_at"]).tzinfo is not None
    assert (await alice.get(UNIVERSE)).json() == body

    assert (await bob.get(UNIVERSE)).json()["symbols"] == []
    await bob.put(UNIVERSE, json={"symbols": ["MSFT"]})
    assert (await alice.get(UNIVERSE)).json() == body
    assert (await bob.get(UNIVERSE)).json()["symbols"] == ["MSFT"]

    cleared = (await alice.put(UNIVERSE, json={})).json()
    assert (cleared["symbols"], cleared["universe_keys"], cleared["resolved_count"]) == ([], [], 0)
    assert cleared["updated_at"] > body["updated_at"]


async def test_patch_adds_and_removes(client: Client, ref_pool: AsyncConnectionPool) -> None:
    carol = client("carol-u")
    await carol.put(UNIVERSE, json={"symbols": ["AAPL", "MSFT"], "universe_keys": ["dow30"]})
    response = await carol.patch(
        UNIVERSE,
        json={
            "add_symbols": ["nvda", "MSFT"],
            "remove_symbols": ["AAPL", "ZZZZ"],
            "add_universes": ["nasdaq100"],
            "remove_universes": ["dow30"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["symbols"], body["universe_keys"]) == (["MSFT", "NVDA"], ["nasdaq100"])
    assert body["resolved_count"] == await covered(ref_pool, ["MSFT", "NVDA"], ["nasdaq100"]) == 101
    # A patch that changes nothing writes nothing.
    same = (await carol.patch(UNIVERSE, json={"add_symbols": ["NVDA"], "remove_universes": ["sp500"]})).json()
    assert same == body
    # A user who never set a universe can patch one into existence.
    fresh = (await client("dave-u").patch(UNIVERSE, json={"add_universes": ["dow30"]})).json()
    assert (fresh["universe_keys"], fresh["resolved_count"]) == (["dow30"], 30)


async def test_a_change_is_announced_on_nats(client: Client, nats_client: NATS) -> None:
    sub = await nats_client.subscribe(UNIVERSE_CHANGED_SUBJECT)
    await nats_client.flush()
    erin = client("erin-u")
    put = (await erin.put(UNIVERSE, json={"symbols": ["AAPL"]})).json()
    message = await sub.next_msg(timeout=5)
    assert json.loads(message.data) == {"subject": "erin-u", "version": put["updated_at"]}
    patched = (await erin.patch(UNIVERSE, json={"add_symbols": ["MSFT"]})).json()
    assert json.loads((await sub.next_msg(timeout=5)).data) == {
        "subject": "erin-u",
        "version": patched["updated_at"],
    }
    # Unchanged: no announcement. The next one seen is that of the following real change.
    await erin.put(UNIVERSE, json={"symbols": ["AAPL", "MSFT"]})
    await erin.patch(UNIVERSE, json={"remove_symbols": ["NVDA"]})
    last = (await erin.put(UNIVERSE, json={"symbols": ["TSLA"]})).json()
    assert json.loads((await sub.next_msg(timeout=5)).data)["version"] == last["updated_at"]
    await sub.unsubscribe()


class _BrokenNats:
    async def publish(self, subject: str, payload: bytes) -> None:
        raise ConnectionClosedError


async def test_a_failed_announcement_does_not_fail_the_change(
    client: Client,
    live_hub: LiveHub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(live_hub.hub, "nats", _BrokenNats())
    frank = client("frank-u")
    with caplog.at_level(logging.WARNING, logger="tickstock.api.users"):
        response = await frank.put(UNIVERSE, json={"symbols": ["AAPL"]})
    assert response.status_code == 200, response.text
    assert (await frank.get(UNIVERSE)).json()["symbols"] == ["AAPL"]
    assert any("not announced" in r.getMessage() and "frank-u" in r.getMessage() for r in caplog.records)


async def test_unknown_symbols_and_universes_are_listed(client: Client) -> None:
    grace = client("grace-u")
    body = problem(
        await grace.put(
            UNIVERSE,
            json={"symbols": ["AAPL", "NOSUCH1", "MSFT", "NOSUCH2"], "universe_keys": ["sp500", "no-such"]},
        ),
        400,
    )
    assert locs(body) == ["body.symbols[1]", "body.symbols[3]", "body.universe_keys[1]"]
    assert "NOSUCH1" in body["detail"] and "no-such" in body["detail"]
    patch = problem(
        await grace.patch(
            UNIVERSE,
            json={"add_symbols": ["NOSUCH3"], "add_universes": ["zilch"], "remove_symbols": ["NOSUCH4"]},
        ),
        400,
    )
    assert locs(patch) == ["body.add_symbols[0]", "body.add_universes[0]"]
    assert (await grace.get(UNIVERSE)).json()["updated_at"] is None  # nothing written


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"symbols": [f"S{i}" for i in range(2001)]}, "body.symbols"),
        ({"universe_keys": [f"u{i}" for i in range(51)]}, "body.universe_keys"),
        ({"symbols": ["not a symbol"]}, "body.symbols[0]"),
        ({"universe_keys": ["Bad Key"]}, "body.universe_keys[0]"),
        ({"symbols": "AAPL"}, "body.symbols"),
        ({"tickers": []}, "body.tickers"),
    ],
)
async def test_put_bounds_and_shapes(client: Client, body: dict[str, Any], loc: str) -> None:
    assert loc in locs(problem(await client("henry-u").put(UNIVERSE, json=body), 400))


async def test_patch_cannot_grow_beyond_the_bound(client: Client, ref_pool: AsyncConnectionPool) -> None:
    ivy = client("ivy-u")
    symbols = await first_symbols(ref_pool, 2001)
    assert (await ivy.put(UNIVERSE, json={"symbols": symbols[:2000]})).status_code == 200
    body = problem(await ivy.patch(UNIVERSE, json={"add_symbols": [symbols[2000]]}), 400)
    assert locs(body) == ["body.add_symbols"]
    swapped = await ivy.patch(UNIVERSE, json={"add_symbols": [symbols[2000]], "remove_symbols": [symbols[0]]})
    assert swapped.json()["symbols"][-1] == symbols[2000] and len(swapped.json()["symbols"]) == 2000

    keys = [f"k{i}" for i in range(50)]
    async with ref_pool.connection() as conn:
        await conn.execute(
            "INSERT INTO universes (key, name, kind) SELECT unnest(%s::text[]), 'test', 'custom'"
            " ON CONFLICT DO NOTHING",
            ([*keys, "k50"],),
        )
    assert (await ivy.put(UNIVERSE, json={"universe_keys": keys})).status_code == 200
    assert locs(problem(await ivy.patch(UNIVERSE, json={"add_universes": ["k50"]}), 400)) == [
        "body.add_universes"
    ]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{oops", 400),
        (b"[1]", 400),
        (b'{"symbols": [NaN]}', 400),
        (b"{" + b" " * 300_000 + b"}", 413),
    ],
)
async def test_malformed_or_oversized_bodies(client: Client, content: bytes, status: int) -> None:
    problem(await client("jack-u").put(UNIVERSE, content=content), status)


async def test_changing_needs_universe_write(client: Client) -> None:
    reader = client("kate-u", ["patterns:read"])
    for call in (
        reader.put(UNIVERSE, json={}),
        reader.patch(UNIVERSE, json={}),
        reader.put("/api/users/watchlists/x", json={"symbols": []}),
        reader.delete("/api/users/watchlists/x"),
        reader.post("/api/users/filters", json={"name": "x", "filter": {}}),
        reader.delete("/api/users/filters/1"),
    ):
        assert problem(await call, 403)["detail"] == "this needs the 'universe:write' scope"
    problem(await client("kate-u", ["patterns:write"]).get("/api/users/watchlists"), 403)


# -- watchlists -------------------------------------------------------------------------------------


async def test_watchlist_crud_and_isolation(client: Client) -> None:
    liam, mia = client("liam-w"), client("mia-w")
    created = await liam.put(
        "/api/users/watchlists/Tech%20giants", json={"symbols": ["aapl", "MSFT", "AAPL"]}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["symbols"]) == ("Tech giants", ["AAPL", "MSFT"])
    replaced = await liam.put("/api/users/watchlists/Tech%20giants", json={"symbols": ["NVDA"]})
    assert replaced.status_code == 200
    assert replaced.json()["symbols"] == ["NVDA"] and replaced.json()["created_at"] == body["created_at"]
    await liam.put("/api/users/watchlists/banks", json={"symbols": []})
    listed = (await liam.get("/api/users/watchlists")).json()["items"]
    assert [(w["name"], w["symbols"]) for w in listed] == [("Tech giants", ["NVDA"]), ("banks", [])]

    assert (await mia.get("/api/users/watchlists")).json() == {"items": []}
    problem(await mia.delete("/api/users/watchlists/banks"), 404)
    await mia.put("/api/users/watchlists/banks", json={"symbols": ["JPM"]})
    assert [w["symbols"] for w in (await liam.get("/api/users/watchlists")).json()["items"]] == [["NVDA"], []]

    assert (await liam.delete("/api/users/watchlists/banks")).status_code == 204
    problem(await liam.delete("/api/users/watchlists/banks"), 404)
    assert [w["name"] for w in (await liam.get("/api/users/watchlists")).json()["items"]] == ["Tech giants"]
    assert [w["symbols"] for w in (await mia.get("/api/users/watchlists")).json()["items"]] == [["JPM"]]


@pytest.mark.parametrize(
    ("name", "body", "loc"),
    [
        ("ok", {"symbols": [f"S{i}" for i in range(501)]}, "body.symbols"),
        ("ok", {"symbols": ["AAPL", "NOSUCH9"]}, "body.symbols[1]"),
        ("ok", {}, "body.symbols"),
        ("x" * 65, {"symbols": []}, "path.name"),
        ("tab%09name", {"symbols": []}, "path.name"),
    ],
)
async def test_watchlist_validation(client: Client, name: str, body: dict[str, Any], loc: str) -> None:
    nora = client("nora-w")
    assert locs(problem(await nora.put(f"/api/users/watchlists/{name}", json=body), 400)) == [loc]
    assert (await nora.get("/api/users/watchlists")).json() == {"items": []}


async def test_delete_with_an_impossible_name_is_404(client: Client) -> None:
    problem(await client("nora-w").delete(f"/api/users/watchlists/{'y' * 65}"), 404)


async def test_at_most_fifty_watchlists(client: Client) -> None:
    oscar = client("oscar-w")
    for i in range(50):
        assert (
            await oscar.put(f"/api/users/watchlists/w{i:02}", json={"symbols": ["AAPL"]})
        ).status_code == 201
    problem(await oscar.put("/api/users/watchlists/one-more", json={"symbols": []}), 409)
    # Replacing an existing one is still allowed at the limit.
    assert (await oscar.put("/api/users/watchlists/w07", json={"symbols": ["MSFT"]})).status_code == 200
    assert len((await oscar.get("/api/users/watchlists")).json()["items"]) == 50


# -- saved scan filters -----------------------------------------------------------------------------

FILTER = {
    "pattern": ["hammer", "doji"],
    "symbol": "AAPL",
    "universe": "sp500",
    "sector": "Energy",
    "timeframe": "daily",
    "type": "pattern_detected",
    "confidence_min": 0.5,
    "confidence_max": 0.9,
    "detected_after": "2026-11-01T00:00:00Z",
    "detected_before": "2026-11-02T00:00:00+01:00",
    "active_only": True,
    "sort": "confidence",
    "order": "desc",
    "limit": 100,
}


async def test_filter_crud_and_isolation(client: Client) -> None:
    pam, quinn = client("pam-f"), client("quinn-f")
    created = await pam.post("/api/users/filters", json={"name": " strong hammers ", "filter": FILTER})
    assert created.status_code == 201, created.text
    saved = created.json()
    assert created.headers["location"] == f"/api/users/filters/{saved['id']}"
    assert saved["name"] == "strong hammers"
    assert saved["filter"] == {**FILTER, "detected_before": "2026-11-02T00:00:00+01:00"}
    minimal = (await pam.post("/api/users/filters", json={"name": "all", "filter": {"limit": None}})).json()
    assert minimal["filter"] == {}
    assert [f["name"] for f in (await pam.get("/api/users/filters")).json()["items"]] == [
        "strong hammers",
        "all",
    ]

    duplicate = problem(await pam.post("/api/users/filters", json={"name": "all", "filter": {}}), 409)
    assert locs(duplicate) == ["body.name"]
    # Names are per user.
    assert (await quinn.post("/api/users/filters", json={"name": "all", "filter": {}})).status_code == 201
    assert [f["name"] for f in (await quinn.get("/api/users/filters")).json()["items"]] == ["all"]

    problem(await quinn.delete(f"/api/users/filters/{saved['id']}"), 404)
    assert (await pam.delete(f"/api/users/filters/{saved['id']}")).status_code == 204
    problem(await pam.delete(f"/api/users/filters/{saved['id']}"), 404)
    assert [f["id"] for f in (await pam.get("/api/users/filters")).json()["items"]] == [minimal["id"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "x", "filter": {"colour": "red"}}, "body.filter.colour"),
        ({"name": "x", "filter": {"pattern": 3}}, "body.filter.pattern"),
        ({"name": "x", "filter": {"pattern": ["ok", ""]}}, "body.filter.pattern"),
        ({"name": "x", "filter": {"symbol": []}}, "body.filter.symbol"),
        ({"name": "x", "filter": {"confidence_min": "high"}}, "body.filter.confidence_min"),
        ({"name": "x", "filter": {"confidence_max": 1.5}}, "body.filter.confidence_max"),
        ({"name": "x", "filter": {"confidence_min": 0.9, "confidence_max": 0.1}}, "body.filter"),
        ({"name": "x", "filter": {"detected_after": "2026-11-01"}}, "body.filter.detected_after"),
        (
            {
                "name": "x",
                "filter": {
                    "detected_after": "2026-11-02T00:00:00Z",
                    "detected_before": "2026-11-01T00:00:00Z",
                },
            },
            "body.filter",
        ),
        ({"name": "x", "filter": {"active_only": "sometimes"}}, "body.filter.active_only"),
        ({"name": "x", "filter": {"order": "up"}}, "body.filter.order"),
        ({"name": "x", "filter": {"sort": "volume"}}, "body.filter.sort"),
        ({"name": "x", "filter": {"timeframe": ["daily", "fortnightly"]}}, "body.filter.timeframe"),
        ({"name": "x", "filter": {"type": "pattern_found"}}, "body.filter.type"),
        ({"name": "x", "filter": {"limit": 0}}, "body.filter.limit"),
        ({"name": "x", "filter": ["pattern"]}, "body.filter"),
        ({"name": "", "filter": {}}, "body.name"),
        ({"name": "n" * 65, "filter": {}}, "body.name"),
        ({"filter": {}}, "body.name"),
    ],
)
async def test_filter_validation(client: Client, body: dict[str, Any], loc: str) -> None:
    rita = client("rita-f")
    assert locs(problem(await rita.post("/api/users/filters", json=body), 400)) == [loc]
    assert (await rita.get("/api/users/filters")).json() == {"items": []}


async def test_at_most_a_hundred_filters(client: Client) -> None:
    sam = client("sam-f")
    for i in range(100):
        assert (
            await sam.post("/api/users/filters", json={"name": f"f{i}", "filter": {"limit": i + 1}})
        ).status_code == 201
    problem(await sam.post("/api/users/filters", json={"name": "f100", "filter": {}}), 409)
    assert len((await sam.get("/api/users/filters")).json()["items"]) == 100


@pytest.mark.parametrize("ident", ["abc", "-1", "99999999999999999999", "1.5"])
async def test_delete_filter_with_a_bad_id_is_404(client: Client, ident: str) -> None:
    problem(await client("tom-f").delete(f"/api/users/filters/{ident}"), 404)
