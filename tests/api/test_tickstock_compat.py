"""The TickStock compatibility routes (``api/routes/compat``) on a live hub over stored events: every
call of ``tickstock-upstream.md`` §3 with upstream's parameter names, its response checked against the
OpenAPI document; the page-numbered scan against our ``/api/patterns/scan``; hostile input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from api.auth import mint_token
from store.scan_window import window_page
from store.scans import ScanFilter, Sort
from tests.api.test_scan import insert_events
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, make_event

P = "/tickstock"
SUBJECT = "compat-user"
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "XOM")
PATTERNS = ("hammer", "doji", "engulfing")
TIMEFRAMES = ("daily", "hourly", "5min", "weekly", "monthly")
EVENTS = 400

# §3, call by call, with upstream's parameter names: (path, query, the keys upstream reads).
CALLS: list[tuple[str, list[tuple[str, str]], set[str]]] = [
    ("/api/patterns/scan", [], {"patterns", "pagination", "cache_info"}),
    (
        "/api/patterns/scan",
        [
            ("pattern_types", "hammer"),
            ("pattern_types", "doji"),
            ("symbols", "AAPL"),
            ("symbols", "MSFT"),
            ("confidence_min", "0.2"),
            ("rs_min", "0.5"),
            ("vol_min", "0.1"),
            ("rsi_range", "10,90"),
            ("timeframe", "Daily"),
            ("sectors", "Information Technology"),
            ("page", "1"),
            ("per_page", "20"),
            ("sort_by", "rs"),
            ("sort_order", "desc"),
        ],
        {"patterns", "pagination", "cache_info"},
    ),
    (
        "/api/patterns/scan",
        [("universe", "sp500"), ("confidence_min", "0.7"), ("limit", "100"), ("sector", "all")],
        {"patterns", "pagination", "cache_info"},
    ),
    ("/api/patterns/scan", [("timeframe", "All"), ("sort_by", "volume")], {"patterns", "pagination"}),
    ("/api/patterns/definitions", [], {"patterns", "count"}),
    *[
        (
            f"/api/patterns/{tier}",
            [("limit", "50"), ("confidence_min", "0.5"), ("symbols", "AAPL,MSFT")],
            {"patterns", "metadata"},
        )
        for tier in ("daily", "hourly", "intraday", "weekly", "monthly", "daily_intraday")
    ],
    ("/api/symbols", [("market", "stocks"), ("search", "AA"), ("limit", "5000")], {"symbols", "count"}),
    ("/api/symbols/search", [("query", "MS")], {"symbols"}),
    ("/api/users/universe", [], {"universes", "total_universes"}),
    ("/api/users/universe/sp500", [], {"universe_key", "tickers", "count"}),
    ("/api/users/watchlists", [], {"watchlists"}),
    ("/api/users/filter-presets", [], {"presets"}),
]
ITEM_KEYS = {
    "/api/patterns/scan": {
        "symbol",
        "pattern",
        "confidence",
        "price",
        "change_percent",
        "rs",
        "volume",
        "timestamp",
        "source",
    },
    "/api/patterns/definitions": {"name"},
    "/api/symbols": {"symbol", "name", "exchange", "market", "type", "active"},
    "/api/symbols/search": {"symbol", "name"},
    "/api/users/universe": {"key", "description", "criteria", "count", "category"},
    "/api/users/watchlists": {"id", "name", "symbols", "created_at", "updated_at"},
    "/api/users/filter-presets": {"id", "name", "filters", "is_default"},
}
TIER_KEYS = {
    "id",
    "symbol",
    "pattern_type",
    "confidence",
    "pattern_data",
    "detection_timestamp",
    "expiration_date",
    "levels",
    "metadata",
    "tier",
}


def _event(i: int, now: datetime) -> dict[str, Any]:
    indicators = {}
    if i % 3:
        indicators["relative_strength"] = round(0.2 + (i * 37 % 300) / 100, 2)
    if i % 4:
        indicators["relative_volume"] = round(0.1 + (i * 53 % 500) / 100, 2)
    if i % 5:
        indicators["rsi"] = float(i * 29 % 101)
    extra: dict[str, Any] = {"indicators": indicators, "data": {"price_change": round((i % 21 - 10) / 3, 2)}}
    if i % 17 == 0:  # expired: upstream's scan does not list it
        extra["expires_at"] = (now - timedelta(minutes=4 + i * 7)).isoformat()
    return make_event(
        i,
        prefix="tsc",
        symbol=SYMBOLS[i % len(SYMBOLS)],
        pattern=PATTERNS[i // 2 % len(PATTERNS)],
        timeframe=TIMEFRAMES[i // 5 % len(TIMEFRAMES)],
        confidence=round((i * 13 % 100) / 100, 2),
        detected_at=(now - timedelta(minutes=5 + i * 7)).isoformat(),
        **extra,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stored(live_hub: LiveHub) -> list[dict[str, Any]]:
    now = datetime.now(UTC).replace(microsecond=0)
    events = [_event(i, now) for i in range(EVENTS)]
    await insert_events(live_hub, events)
    token = mint_token(JWT_SECRET, subject=SUBJECT, scopes=["patterns:read", "universe:write"])
    async with httpx.AsyncClient(base_url=live_hub.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert (
            await c.put("/api/users/watchlists/tech", json={"symbols": ["AAPL", "MSFT"]})
        ).status_code == 201
        saved = await c.post("/api/users/filters", json={"name": "strong", "filter": {"confidence_min": 0.8}})
        assert saved.status_code == 201, saved.text
    return events


@pytest_asyncio.fixture(loop_scope="session")
async def client(live_hub: LiveHub, stored: list[dict[str, Any]]) -> Any:
    token = mint_token(JWT_SECRET, subject=SUBJECT, scopes=["patterns:read"])
    async with httpx.AsyncClient(
        base_url=live_hub.url, headers={"Authorization": f"Bearer {token}", "X-User-ID": "someone-else"}
    ) as c:
        yield c


def _validator(document: dict[str, Any], path: str) -> Draft202012Validator:
    schema = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": document["components"]})


def _openapi_path(path: str) -> str:
    return "/tickstock/api/users/universe/{key}" if path.startswith("/api/users/universe/") else P + path


async def test_every_upstream_call_answers_with_upstreams_keys(
    live_hub: LiveHub, client: httpx.AsyncClient
) -> None:
    document = (await client.get("/openapi.json")).json()
    for path, params, keys in CALLS:
        response = await client.get(P + path, params=params)
        assert response.status_code == 200, (path, params, response.text)
        body = response.json()
        assert keys <= set(body), (path, body.keys())
        _validator(document, _openapi_path(path)).validate(body)
        items = next(
            body[k]
            for k in ("patterns", "symbols", "universes", "watchlists", "presets", "tickers")
            if k in body
        )
        assert items, (path, params, "an empty list proves little")
        want = TIER_KEYS if body.get("metadata") else ITEM_KEYS.get(path, set())
        assert want <= set(items[0]), (path, items[0])
        print(f"{response.status_code} {P}{path}?{httpx.QueryParams(params)}: {len(items)} items")
    # X-User-ID is ignored: the watchlist is the token subject's.
    lists = (await client.get(P + "/api/users/watchlists")).json()["watchlists"]
    assert [(w["id"], w["symbols"]) for w in lists] == [("tech", ["AAPL", "MSFT"])]


UPSTREAM_TIMEFRAMES = {"All": None, "Daily": ["daily"], "Hourly": ["hourly"], "Weekly": ["weekly"]}


@st.composite
def scans(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A compat scan query and the same query in our /api/patterns/scan's names."""
    upstream: list[tuple[str, str]] = []
    ours: list[tuple[str, str]] = [("active_only", "true")]
    for name, our_name, values in (("pattern_types", "pattern", PATTERNS), ("symbols", "symbol", SYMBOLS)):
        for value in draw(st.lists(st.sampled_from(values), max_size=3, unique=True)):
            upstream.append((name, value))
            ours.append((our_name, value))
    confidence = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.33, 0.5, 0.9])))
    upstream += [] if confidence is None else [("confidence_min", str(confidence))]
    ours.append(("confidence_min", str(0.5 if confidence is None else confidence)))
    timeframe = draw(st.sampled_from(sorted(UPSTREAM_TIMEFRAMES)))
    upstream.append(("timeframe", timeframe))
    ours += [("timeframe", tf) for tf in UPSTREAM_TIMEFRAMES[timeframe] or []]
    sort_by = draw(st.sampled_from(["confidence", "detected_at", "symbol"]))
    order = draw(st.sampled_from(["desc", "asc"]))
    per_page = draw(st.integers(1, 100))
    page = draw(st.integers(1, 6))
    upstream += [
        ("sort_by", sort_by),
        ("sort_order", order),
        ("per_page", str(per_page)),
        ("page", str(page)),
    ]
    ours += [("sort", sort_by), ("order", order), ("limit", str(per_page)), ("page", str(page))]
    return upstream, ours


async def test_the_compat_scan_lists_our_scans_rows(live_hub: LiveHub, stored: list[dict[str, Any]]) -> None:
    """Property: for any query both understand, the compat scan's page holds the rows of our scan's
    page, in order, in upstream's shape; the total counts our scan's rows."""
    token = mint_token(JWT_SECRET, subject=SUBJECT, scopes=["patterns:read"])
    headers = {"Authorization": f"Bearer {token}"}
    compared: list[int] = []

    @hsettings(
        max_examples=60,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(query=scans())
    def check(query: tuple[list[tuple[str, str]], list[tuple[str, str]]]) -> None:
        upstream, ours = query
        with httpx.Client(base_url=live_hub.url, headers=headers, timeout=30) as http:
            compat = http.get(P + "/api/patterns/scan", params=upstream)
            own = http.get("/api/patterns/scan", params=ours)
            everything = http.get(
                "/api/patterns/scan",
                params=[(k, "500" if k == "limit" else "1" if k == "page" else v) for k, v in ours],
            )
        assert compat.status_code == own.status_code == 200, (compat.text, own.text)
        body, mine = compat.json(), own.json()
        assert [p["id"] for p in body["patterns"]] == [e["id"] for e in mine["items"]]
        for row, event in zip(body["patterns"], mine["items"], strict=True):
            assert set(row) == set(ITEM_KEYS["/api/patterns/scan"]) | {"id"}
            assert (row["symbol"], row["pattern"], row["confidence"]) == (
                event["symbol"],
                event["pattern"],
                event["confidence"],
            )
            assert row["rs"] == event["indicators"].get("relative_strength", 1.0)
            assert row["change_percent"] == event["data"]["price_change"]
        total = len(everything.json()["items"])
        pagination = body["pagination"]
        assert (pagination["total"], pagination["capped"]) == (total, False)
        assert pagination["pages"] == -(-total // pagination["per_page"])
        compared.append(len(body["patterns"]))

    await asyncio.to_thread(check)
    print(
        f"hypothesis: {len(compared)} examples, {sum(1 for n in compared if n)} non-empty, {sum(compared)} rows"
    )
    assert sum(1 for n in compared if n > 5) >= 10


def _indicator(event: dict[str, Any], name: str, default: float) -> float:
    return float(event["indicators"].get(name, default))


@pytest.mark.parametrize("sort_by", ["rs", "volume"])
async def test_indicator_filters_and_sorts_match_upstreams_rules(
    client: httpx.AsyncClient, stored: list[dict[str, Any]], sort_by: str
) -> None:
    """rs_min, vol_min and rsi_range over the stored indicators (upstream's defaults when absent),
    sorted by relative strength or volume; checked against the events in Python."""
    now = datetime.now(UTC)
    want = [
        e
        for e in stored
        if e["confidence"] >= 0.3
        and "expires_at" not in e
        and _indicator(e, "relative_strength", 1.0) >= 1.1
        and _indicator(e, "relative_volume", 1.0) >= 0.5
        and 20 <= _indicator(e, "rsi", 50.0) <= 80
        and datetime.fromisoformat(e["detected_at"]) < now
    ]
    name = {"rs": "relative_strength", "volume": "relative_volume"}[sort_by]
    # Ties by newest first, then id: the scan's own order within the window.
    want.sort(key=lambda e: (-_indicator(e, name, 1.0), e["detected_at"], e["id"]), reverse=False)
    params = {
        "confidence_min": "0.3",
        "rs_min": "1.1",
        "vol_min": "0.5",
        "rsi_range": "80,20",
        "sort_by": sort_by,
        "per_page": "100",
    }
    got: list[str] = []
    for page in (1, 2, 3, 4):
        body = (await client.get(P + "/api/patterns/scan", params={**params, "page": str(page)})).json()
        assert body["pagination"]["total"] == len(want)
        got += [p["id"] for p in body["patterns"]]
    assert len(want) > 20
    by_value = [(_indicator(e, name, 1.0)) for e in want]
    got_values = [_indicator(next(e for e in stored if e["id"] == i), name, 1.0) for i in got]
    assert got_values == by_value
    assert sorted(got) == sorted(e["id"] for e in want)


HOSTILE = [
    ("per_page=100000000000000000000000&page=99999999999999999999999999", 200),
    ("per_page=-5&page=-3", 200),
    ("page=1e3", 400),
    ("per_page=" + "9" * 5000, 400),
    ("rsi_range=a,b", 400),
    ("rsi_range=1,2,3", 400),
    ("rsi_range=nan,5", 400),
    ("rsi_range=-50,500", 200),
    ("sort_by=price", 400),
    ("sort_order=sideways", 400),
    ("timeframe=daily", 400),
    ("confidence_min=2", 400),
    ("confidence_min=1e-300", 200),
    ("rs_min=inf", 400),
    ("rs_min=-4", 200),
    ("pattern_types=nonesuch", 400),
    ("symbols=%00", 400),
    ("universe=nonesuch", 400),
    ("universe=a%20b", 400),
    ("sectors=Nowhere", 400),
    ("per_page=5&limit=6", 400),
    ("confidence_min=0.1&confidence_min=0.2", 400),
    ("frobnicate=1", 400),
    ("pattern_types=" + ",".join(["hammer"] * 101), 400),
]


@pytest.mark.parametrize(("query", "status"), HOSTILE, ids=[q[:40] for q, _ in HOSTILE])
async def test_hostile_scan_queries_are_problems_or_clamped(
    client: httpx.AsyncClient, query: str, status: int
) -> None:
    response = await client.get(f"{P}/api/patterns/scan?{query}")
    assert response.status_code == status, response.text
    if status == 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"]
    else:
        pagination = response.json()["pagination"]
        assert 1 <= pagination["per_page"] <= 100 and pagination["page"] >= 1


async def test_pages_past_the_window_are_empty_and_cheap(client: httpx.AsyncClient) -> None:
    first = (await client.get(P + "/api/patterns/scan", params={"per_page": "100"})).json()
    deep = (
        await client.get(P + "/api/patterns/scan", params={"per_page": "100", "page": str(10**30)})
    ).json()
    assert deep["patterns"] == [] and deep["pagination"]["total"] == first["pagination"]["total"] > 0
    assert deep["pagination"]["page"] == 10**30


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/patterns/daily?limit=x", 400),
        ("/api/patterns/daily?confidence_min=nan", 400),
        ("/api/patterns/daily?symbols=A%20B", 400),
        ("/api/patterns/daily?limit=-9&confidence_min=7", 200),
        ("/api/symbols?limit=999999999&search=" + "A" * 65, 400),
        ("/api/symbols?market=moon", 400),
        ("/api/symbols?market=crypto", 200),
        ("/api/symbols?limit=-1", 200),
        ("/api/symbols/search?query=%00", 400),
        ("/api/users/universe/nonesuch", 404),
        ("/api/users/universe/A%20B", 404),
        ("/api/users/universe?x=1", 400),
        ("/api/users/watchlists?user_id=7", 400),
    ],
)
async def test_hostile_reads(client: httpx.AsyncClient, path: str, status: int) -> None:
    response = await client.get(P + path)
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"


async def test_tier_clamps_and_symbols(client: httpx.AsyncClient, stored: list[dict[str, Any]]) -> None:
    body = (
        await client.get(
            P + "/api/patterns/intraday",
            params={"symbols": "aapl, nvda", "confidence_min": "-1", "limit": "500"},
        )
    ).json()
    want = [e for e in stored if e["timeframe"] == "5min" and e["symbol"] in ("AAPL", "NVDA")]
    assert body["metadata"] == {"count": len(want), "tier": "intraday"}
    confidences = [p["confidence"] for p in body["patterns"]]
    assert confidences == sorted(confidences, reverse=True) and len(want) > 0
    crypto = (await client.get(P + "/api/symbols", params={"market": "crypto"})).json()
    assert crypto == {"symbols": [], "count": 0}
    types = {
        s["type"] for s in (await client.get(P + "/api/symbols", params={"limit": "5000"})).json()["symbols"]
    }
    assert {"CS", "ETF"} <= types


async def test_a_token_is_needed(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as anonymous:
        response = await anonymous.get(P + "/api/patterns/scan", headers={"X-User-ID": "1"})
    assert response.status_code == 401


async def test_universe_sector_and_my_narrow_the_scan(
    client: httpx.AsyncClient, stored: list[dict[str, Any]]
) -> None:
    def ids(body: dict[str, Any]) -> set[str]:
        return {p["symbol"] for p in body["patterns"]}

    energy = (
        await client.get(P + "/api/patterns/scan", params={"sector": "Energy", "per_page": "100"})
    ).json()
    assert ids(energy) == {"XOM"}
    none = (
        await client.get(
            P + "/api/patterns/scan", params={"symbols": "XOM", "sectors": "Information Technology"}
        )
    ).json()
    assert none["patterns"] == [] and none["pagination"] == {
        "page": 1,
        "per_page": 30,
        "total": 0,
        "pages": 0,
        "capped": False,
    }
    # "my" is the caller's saved universe (ours, not upstream's): empty until they save one.
    mine = (await client.get(P + "/api/patterns/scan", params={"universe": "my"})).json()
    assert mine["pagination"]["total"] == 0


async def test_the_window_refuses_impossible_bounds() -> None:
    with pytest.raises(ValueError, match="at least"):
        await window_page(None, ScanFilter(), sort=Sort(), limit=0)  # type: ignore[arg-type]  # no I/O before the check
