"""``GET /api/patterns/scan`` and friends on a live hub, checked against a brute-force filter in Python."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import math
import random
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from api.auth import mint_token
from api.routes import patterns as pattern_routes
from api.settings import Settings
from hub.model import EVENT_TYPES, TIMEFRAMES
from hub.parsing import parse_event
from store.cursor import CursorCodec
from store.maintenance import refresh_views
from store.patterns import ensure_months, store_events
from store.scans import ScanFilter
from tests.conftest import JWT_SECRET
from tests.support import LiveHub

SCAN = "/api/patterns/scan"
PROBLEM = "application/problem+json"
SUBJECT = "scan-user"
EVENTS = 3000
SEED = 20261128
USED_TIMEFRAMES = ("1min", "hourly", "daily", "weekly")
NO_UNIVERSE = "QQQQ"  # a symbol in no universe and no sector


def f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


@dataclass
class World:
    """What the module loaded: the hub, the symbols and patterns used, and reference sets."""

    hub: LiveHub
    now: datetime
    symbols: list[str]
    patterns: dict[str, str]  # spelling -> canonical
    members: dict[str, frozenset[str]]  # universe key (and "my") -> symbols
    sectors: dict[str, str]  # symbol -> sector
    headers: dict[str, str]


async def _fetch(pool: Any, query: str, *params: Any) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        return await (await conn.execute(query, params)).fetchall()  # type: ignore[no-any-return]


async def insert_events(hub: LiveHub, events: list[dict[str, Any]]) -> None:
    catalog = hub.hub.catalog.current
    parsed = [parse_event(e, catalog=catalog) for e in events]
    lo = min(e.detected_at for e in parsed)
    hi = max(e.detected_at for e in parsed)
    async with hub.hub.pool.connection() as conn, conn.transaction():
        await ensure_months(conn, lo, hi)
        stored = await store_events(conn, parsed)
    assert all(s.new for s in stored.values()) and len(stored) == len(events)
    if hub.hub.cache is not None:  # what the writer does after a commit
        await hub.hub.cache.events_stored(parsed)


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    """No staleness allowed: events inserted here are in the very next scan (the brute force would
    otherwise see a cached page up to the bound older than the rows it compares with)."""
    return dataclasses.replace(settings, cache_staleness_ms=0)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(live_hub: LiveHub) -> AsyncIterator[World]:
    app = live_hub.app
    assert app is not None
    if not any(getattr(r, "path", None) == SCAN for r in app.router.routes):
        app.router.routes.extend(pattern_routes.routes)  # until api/app.py registers them
    pool = live_hub.hub.pool
    rows = await _fetch(
        pool,
        "SELECT universe, symbol FROM universe_members "
        "WHERE universe IN ('sp500', 'dow30', 'nasdaq100') OR universe LIKE 'sector-%%'",
    )
    members: dict[str, set[str]] = {}
    for r in rows:
        members.setdefault(r["universe"], set()).add(r["symbol"])
    plain = {s for v in members.values() for s in v if s.isalpha()}
    dow = sorted(members["dow30"] & members["sp500"] & plain)[:10]
    sp = sorted(members["sp500"] - members["dow30"] & plain)[::40][:10]
    ndx = sorted(members["nasdaq100"] - members["sp500"] & plain)[:4]
    symbols = [*dow, *sp, *ndx, NO_UNIVERSE]
    sector_rows = await _fetch(
        pool, "SELECT symbol, sector FROM symbols WHERE sector IS NOT NULL AND symbol = ANY(%s)", symbols
    )
    defs = await _fetch(pool, "SELECT name, aliases FROM pattern_definitions ORDER BY name")
    chosen = [d for d in defs if d["aliases"]][::9][:6]
    spellings: dict[str, str] = {}
    for d in chosen:
        spellings[d["name"]] = d["name"]
        spellings[d["aliases"][0]] = d["name"]
        spellings[d["name"].upper()] = d["name"]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO user_universes (subject, symbols, universe_keys) VALUES (%s, %s, %s)",
            (SUBJECT, [sp[0], sp[1], NO_UNIVERSE], ["dow30"]),
        )
    my = frozenset({sp[0], sp[1], NO_UNIVERSE} | members["dow30"])

    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(microsecond=0)
    canon = sorted({d["name"] for d in chosen})
    events: list[dict[str, Any]] = []
    for i in range(EVENTS):
        same = rng.choice(events) if events and rng.random() < 0.15 else None  # another event of its instance
        if same is not None:
            detected = datetime.fromisoformat(str(same["detected_at"]))
        elif events and rng.random() < 0.1:
            detected = datetime.fromisoformat(str(rng.choice(events)["detected_at"]))  # a tie on time
        else:
            detected = now - timedelta(hours=2) - timedelta(seconds=rng.randrange(90 * 86400))
        kind = rng.random()
        expires = (
            None if kind < 0.4 else detected + timedelta(hours=1) if kind < 0.7 else now + timedelta(days=5)
        )
        event: dict[str, Any] = {
            "id": f"scan-{i:05d}",
            "type": rng.choice(EVENT_TYPES),
            "symbol": rng.choice(symbols),
            "pattern": rng.choice(canon),
            "timeframe": rng.choice(USED_TIMEFRAMES),
            "confidence": round(rng.random(), 2),
            "detected_at": detected.isoformat(),
            "price": round(10 + rng.random() * 500, 2),
            "volume": rng.randrange(1, 10**6),
            "source": "tests",
        }
        if expires is not None:
            event["expires_at"] = expires.isoformat()
        if same is not None:
            event |= {k: same[k] for k in ("symbol", "pattern", "timeframe")}
        events.append(event)
    await insert_events(live_hub, events)
    async with pool.connection() as conn:
        await conn.execute("ANALYZE pattern_events")
    token = mint_token(JWT_SECRET, subject=SUBJECT, scopes=["patterns:read"])
    yield World(
        hub=live_hub,
        now=now,
        symbols=symbols,
        patterns=spellings,
        members={**{k: frozenset(v) for k, v in members.items()}, "my": my},
        sectors={r["symbol"]: r["sector"] for r in sector_rows},
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=world.hub.url, headers=world.headers, timeout=30) as c:
        yield c


async def stored_rows(world: World) -> list[dict[str, Any]]:
    return await _fetch(
        world.hub.hub.pool,
        "SELECT id, type, symbol, pattern, timeframe, confidence, detected_at, "
        "expires_at, received_at FROM pattern_events",
    )


# -- the brute force ---------------------------------------------------------------------------------


def _multi(params: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in params if k == name]


RANK = {"pattern_detected": 0, "pattern_updated": 1, "pattern_expired": 2}


def latest_events(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Each pattern instance's latest event, by the documented rule: the higher type rank, then the one
    stored later (a later transaction; in one batch, the later event: these ids grow with it)."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["symbol"], r["pattern"], r["timeframe"], r["detected_at"])
        order = (RANK[r["type"]], r["received_at"], r["id"])
        held = latest.get(key)
        if held is None or order > (RANK[held["type"]], held["received_at"], held["id"]):
            latest[key] = r
    return latest


def expected(world: World, rows: list[dict[str, Any]], params: list[tuple[str, str]]) -> list[str]:
    """The ids a scan with ``params`` (our names) must return, in order."""
    now = datetime.now(UTC)
    patterns = {world.patterns[p] for p in _multi(params, "pattern")}
    symbols = {s.upper() for s in _multi(params, "symbol")}
    universes = _multi(params, "universe")
    allowed_u = set().union(*(world.members.get(k, frozenset()) for u in universes for k in u.split(":")))
    sectors = {s.casefold() for s in _multi(params, "sector")}
    timeframes = set(_multi(params, "timeframe"))
    types = set(_multi(params, "type"))
    one = dict(params)
    cmin = f32(float(one["confidence_min"])) if "confidence_min" in one else None
    cmax = f32(float(one["confidence_max"])) if "confidence_max" in one else None
    after = datetime.fromisoformat(one["detected_after"]) if "detected_after" in one else None
    before = datetime.fromisoformat(one["detected_before"]) if "detected_before" in one else None
    active = one.get("active_only") == "true"
    history = one.get("history") == "true"
    latest = latest_events(rows)

    def live(r: dict[str, Any]) -> bool:
        return r["type"] != "pattern_expired" and (r["expires_at"] is None or r["expires_at"] > now)

    def instance(r: dict[str, Any]) -> dict[str, Any]:
        return latest[(r["symbol"], r["pattern"], r["timeframe"], r["detected_at"])]

    def keep(r: dict[str, Any]) -> bool:
        return (
            (not patterns or r["pattern"] in patterns)
            and (not symbols or r["symbol"] in symbols)
            and (not universes or r["symbol"] in allowed_u)
            and (not sectors or world.sectors.get(r["symbol"], "").casefold() in sectors)
            and (not timeframes or r["timeframe"] in timeframes)
            and (not types or r["type"] in types)
            and (cmin is None or f32(r["confidence"]) >= cmin)
            and (cmax is None or f32(r["confidence"]) <= cmax)
            and (after is None or r["detected_at"] >= after)
            and (before is None or r["detected_at"] < before)
            and (history or instance(r) is r)
            and (not active or live(instance(r)))
        )

    kept = [r for r in rows if keep(r)]
    sort, desc = one.get("sort", "detected_at"), one.get("order", "desc") == "desc"
    if sort == "symbol":
        kept.sort(key=lambda r: (r["detected_at"], r["id"]), reverse=True)
        kept.sort(key=lambda r: r["symbol"], reverse=desc)
    else:
        kept.sort(key=lambda r: (f32(r[sort]) if sort == "confidence" else r[sort], r["id"]), reverse=desc)
    return [r["id"] for r in kept]


def page_through(http: httpx.Client, params: list[tuple[str, str]], *, max_pages: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(max_pages):
        response = http.get(SCAN, params=[*params, *([("cursor", cursor)] if cursor else [])])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["query_ms"] >= 0
        assert (
            body["cache"]["hit"] in (True, False)
            and (body["cache"]["age_ms"] is None) != body["cache"]["hit"]
        )
        ids.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError(f"more than {max_pages} pages")


def _legacy_spelling(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same query with TickStock's names where it has them."""
    out = [(k, v) for k, v in params if k not in ("pattern", "symbol", "sort", "order", "limit")]
    if pats := _multi(params, "pattern"):
        out.append(("pattern_types", ",".join(pats)))
    if syms := _multi(params, "symbol"):
        out.append(("symbols", ",".join(syms)))
    renames = {"sort": "sort_by", "order": "sort_order", "limit": "per_page"}
    out.extend((renames[k], v) for k, v in params if k in renames)
    return out


@st.composite
def scan_queries(draw: st.DrawFn, world: World) -> tuple[list[tuple[str, str]], bool]:
    params: list[tuple[str, str]] = []

    def some(name: str, values: list[str], most: int = 2) -> None:
        params.extend((name, v) for v in draw(st.lists(st.sampled_from(values), max_size=most, unique=True)))

    # Each list filter is present in about a third of the examples, so intersections stay non-empty.
    if draw(st.integers(0, 2)) == 0:
        some("pattern", sorted(world.patterns))
    if draw(st.integers(0, 2)) == 0:
        some("symbol", [*world.symbols, world.symbols[0].lower(), world.symbols[12].lower(), "ZZZZ"], 3)
    if draw(st.integers(0, 2)) == 0:
        some(
            "universe",
            [
                "sp500",
                "dow30",
                "nasdaq100",
                "my",
                "sp500:nasdaq100",
                "dow30:my",
                "sector-information-technology",
            ],
        )
    if draw(st.integers(0, 3)) == 0:
        sectors = sorted(set(world.sectors.values()))
        some("sector", [*sectors, sectors[0].lower(), sectors[-1].upper()])
    if draw(st.integers(0, 2)) == 0:
        some("timeframe", ["1min", "5min", "hourly", "daily", "weekly"], 3)
    if draw(st.integers(0, 3)) == 0:
        some("type", list(EVENT_TYPES))
    bounds = sorted(
        draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.7, 0.71, 0.9, 1.0]), max_size=2, unique=True))
    )
    if bounds and draw(st.booleans()):
        params.append(("confidence_min", str(bounds[0])))
    if bounds and draw(st.booleans()):
        params.append(("confidence_max", str(bounds[-1])))
    days = sorted(draw(st.lists(st.sampled_from([1, 7, 30, 60, 89]), max_size=2, unique=True)), reverse=True)
    if days and draw(st.booleans()):
        params.append(("detected_after", _iso(world.now - timedelta(days=days[0]))))
    if len(days) == 2 and draw(st.booleans()):
        params.append(("detected_before", _iso(world.now - timedelta(days=days[1]))))
    if draw(st.integers(0, 2)) == 0:
        params.append(("active_only", draw(st.sampled_from(["true", "false"]))))
    if draw(st.integers(0, 2)) == 0:
        params.append(("history", draw(st.sampled_from(["true", "false"]))))
    if (sort := draw(st.sampled_from([None, "detected_at", "confidence", "symbol"]))) is not None:
        params.append(("sort", sort))
    if (order := draw(st.sampled_from([None, "desc", "asc"]))) is not None:
        params.append(("order", order))
    params.append(("limit", str(draw(st.sampled_from([1, 3, 10, 37, 100, 500])))))
    return params, draw(st.booleans())


async def test_scan_pages_match_a_brute_force_filter(world: World) -> None:
    rows = await stored_rows(world)
    examples: list[int] = []

    @hsettings(
        max_examples=80,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(query=scan_queries(world))
    def check(query: tuple[list[tuple[str, str]], bool]) -> None:
        params, legacy = query
        want = expected(world, rows, params)
        limit = int(dict(params)["limit"])
        if math.ceil(len(want) / limit) > 40:  # keep each example to a few dozen requests
            params = [(k, v) for k, v in params if k != "limit"] + [("limit", str(math.ceil(len(want) / 40)))]
        with httpx.Client(base_url=world.hub.url, headers=world.headers, timeout=30) as http:
            got = page_through(http, _legacy_spelling(params) if legacy else params, max_pages=60)
        assert len(got) == len(set(got)), "duplicates across pages"
        assert got == want
        examples.append(len(want))

    await asyncio.to_thread(check)
    print(
        f"hypothesis: {len(examples)} examples, {sum(1 for n in examples if n)} non-empty, "
        f"{sum(examples)} ids compared"
    )
    assert sum(1 for n in examples if n > 50) >= 10  # the strategy reaches real multi-page results


async def test_pages_stay_stable_while_events_arrive(world: World, client: httpx.AsyncClient) -> None:
    symbol = world.symbols[3]
    params = {"symbol": symbol, "limit": "20"}
    original = expected(world, await stored_rows(world), list(params.items()))
    assert len(original) > 60
    first = (await client.get(SCAN, params=params)).json()
    assert [i["id"] for i in first["items"]] == original[:20]
    newer = [
        {
            "id": f"stable-new-{i:03d}",
            "type": "pattern_detected",
            "symbol": symbol,
            "pattern": "hammer",
            "timeframe": "daily",
            "confidence": 0.5,
            "detected_at": _iso(datetime.now(UTC) - timedelta(seconds=i)),
        }
        for i in range(30)
    ]
    await insert_events(world.hub, newer)
    second = (await client.get(SCAN, params={**params, "cursor": first["next_cursor"]})).json()
    assert [i["id"] for i in second["items"]] == original[20:40]
    # A legacy page number is an OFFSET: the same page has shifted by the 30 new events.
    legacy = (await client.get(SCAN, params={"symbols": symbol, "per_page": "20", "page": "2"})).json()
    assert [i["id"] for i in legacy["items"]] == [e["id"] for e in newer][20:30] + original[:10]
    rest = [i["id"] for i in second["items"]]
    cursor = second["next_cursor"]
    while cursor:
        body = (await client.get(SCAN, params={**params, "cursor": cursor})).json()
        rest.extend(i["id"] for i in body["items"])
        cursor = body["next_cursor"]
    assert rest == original[20:]


# -- validation -------------------------------------------------------------------------------------

INVALID = [
    ("confidence_min=1.5", "query.confidence_min"),
    ("confidence_max=abc", "query.confidence_max"),
    ("confidence_min=nan", "query.confidence_min"),
    ("confidence_min=0.9&confidence_max=0.1", "query.confidence_min"),
    ("detected_after=2024-01-01", "query.detected_after"),
    ("detected_after=2024-05-01T14:30:00", "query.detected_after"),
    ("detected_before=yesterday", "query.detected_before"),
    ("detected_before=2024-13-45T25:00:00Z", "query.detected_before"),
    ("detected_after=2024-05-02T00:00:00Z&detected_before=2024-05-01T00:00:00Z", "query.detected_after"),
    ("limit=0", "query.limit"),
    ("limit=501", "query.limit"),
    ("limit=ten", "query.limit"),
    ("limit=5&limit=6", "query.limit"),
    ("per_page=0", "query.per_page"),
    ("limit=5&per_page=5", "query.per_page"),
    ("page=0", "query.page"),
    ("page=2&cursor=abc", "query.page"),
    ("colour=red", "query.colour"),
    ("pattern=not_a_pattern_at_all", "query.pattern"),
    ("pattern_types=hammer,not_a_pattern_at_all", "query.pattern_types"),
    ("symbol=not%20a%20symbol", "query.symbol"),
    ("universe=no-such-universe", "query.universe"),
    ("universe=sp500:no-such-universe", "query.universe"),
    ("universe=Not%20A%20Key", "query.universe"),
    ("sector=Underwater%20Basket%20Weaving", "query.sector"),
    ("timeframe=2min", "query.timeframe"),
    ("type=pattern_vanished", "query.type"),
    ("sort=price", "query.sort"),
    ("sort_by=price", "query.sort_by"),
    ("order=up", "query.order"),
    ("active_only=maybe", "query.active_only"),
    ("history=all", "query.history"),
    ("cursor=not-a-cursor", "query.cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b'{"k":[],"s":"x"}').decode(), "query.cursor"),
]


@pytest.mark.parametrize(("query", "loc"), INVALID, ids=[q for q, _ in INVALID])
async def test_invalid_queries_are_problems_with_field_errors(
    client: httpx.AsyncClient, query: str, loc: str
) -> None:
    response = await client.get(f"{SCAN}?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == 400 and body["detail"]
    assert loc in [e["loc"] for e in body["errors"]], body


async def test_unknown_parameters_are_all_listed(client: httpx.AsyncClient) -> None:
    body = (await client.get(SCAN, params={"colour": "red", "pattrn": "hammer", "limit": "5"})).json()
    assert body["status"] == 400
    assert sorted(e["loc"] for e in body["errors"]) == ["query.colour", "query.pattrn"]
    assert "colour" in body["detail"] and "pattrn" in body["detail"]


async def test_cursors_are_tamper_evident_and_bound_to_their_query(
    client: httpx.AsyncClient, world: World
) -> None:
    params = {"timeframe": "daily", "limit": "5"}
    cursor = (await client.get(SCAN, params=params)).json()["next_cursor"]
    version, payload, mac = cursor.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["k"][-1] = "scan-99999"  # jump elsewhere, keeping the old MAC
    tampered = f"{version}.{base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip('=')}.{mac}"
    cases = [
        ({**params, "cursor": tampered}, "altered"),
        ({**params, "cursor": cursor[:-3]}, "altered"),
        ({"timeframe": "weekly", "limit": "5", "cursor": cursor}, "other filters"),
        ({**params, "sort": "confidence", "cursor": cursor}, "sort"),
        ({**params, "order": "asc", "cursor": cursor}, "sort"),
    ]
    for query, words in cases:
        response = await client.get(SCAN, params=query)
        assert response.status_code == 400, (query, response.text)
        assert words in response.json()["detail"] and response.json()["detail"].startswith("invalid cursor")
        assert response.json()["errors"][0]["loc"] == "query.cursor"
    # Order and repetition of filter values do not change the query: the cursor still works.
    same = await client.get(
        SCAN, params=[("limit", "5"), ("timeframe", "daily"), ("timeframe", "daily"), ("cursor", cursor)]
    )
    assert same.status_code == 200


def _old_format(key: bytes, body: dict[str, Any]) -> str:
    """A cursor in the format before v1: base64 JSON with a 16-byte MAC under ``m``."""
    message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    mac = base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()[:16]).rstrip(b"=").decode()
    return base64.urlsafe_b64encode(json.dumps({**body, "m": mac}).encode()).decode().rstrip("=")


async def test_cursors_signed_with_the_old_public_keys_are_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    """Before v1 a JWKS-only hub keyed the MAC with a public constant (and others with a hash of the
    JWT secret): cursors forged with either key, in the old format or the new, are refused."""
    params = {"timeframe": "daily", "limit": "5"}
    page = (await client.get(SCAN, params=params)).json()
    fingerprint = ScanFilter(timeframes=("daily",)).fingerprint()
    keys = [
        hashlib.sha256(b"tickstock-scan-cursor\0" + secret.encode()).digest() for secret in ("", JWT_SECRET)
    ]
    for key in keys:
        body = {"k": ["2000-01-01T00:00:00+00:00", "scan-99999"], "s": "detected_at:desc", "f": fingerprint}
        for forged in (_old_format(key, body), CursorCodec(key).encode("scan", body)):
            response = await client.get(SCAN, params={**params, "cursor": forged})
            assert response.status_code == 400, response.text
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["detail"].startswith("invalid cursor")
            assert [e["loc"] for e in response.json()["errors"]] == ["query.cursor"]
    assert (await client.get(SCAN, params={**params, "cursor": page["next_cursor"]})).status_code == 200


HOSTILE_CURSORS = {
    "NUL": "v1.AA\x00.AA",
    "control": "v1.AA\x1b.AA",
    "bad base64": "v1.A.A",
    "bad MAC": "v1.e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "unknown version": "v9.e30.AAAA",
    "oversize": "v1." + "A" * 2000 + ".AAAA",
    "symbols cursor": None,  # filled in by the test: a valid cursor of the other kind
}


@pytest.mark.parametrize("name", HOSTILE_CURSORS)
async def test_hostile_cursors_are_one_400_problem(
    client: httpx.AsyncClient, world: World, name: str
) -> None:
    cursor = HOSTILE_CURSORS[name]
    if cursor is None:
        cursor = (await client.get("/api/symbols", params={"limit": "1"})).json()["next_cursor"]
    response = await client.get(SCAN, params={"cursor": cursor})
    assert response.status_code == 400, response.text
    body = response.json()
    # A control character is refused by the one query reader before the cursor is decoded.
    expected = "invalid query" if any(ord(c) < 32 for c in cursor) else "invalid cursor"
    assert body["detail"].startswith(expected) and [e["loc"] for e in body["errors"]] == ["query.cursor"]


@pytest.mark.parametrize(
    "path", [SCAN, "/api/patterns/definitions", "/api/patterns/stats", "/api/patterns/scan-00001"]
)
async def test_reads_need_a_token_with_patterns_read(world: World, path: str) -> None:
    writer = mint_token(JWT_SECRET, subject="w", scopes=["patterns:write"])
    async with httpx.AsyncClient(base_url=world.hub.url) as anon:
        missing = await anon.get(path)
        bad = await anon.get(path, headers={"Authorization": "Bearer not.a.token"})
        wrong = await anon.get(path, headers={"Authorization": f"Bearer {writer}"})
    assert missing.status_code == 401 and bad.status_code == 401
    assert "WWW-Authenticate" in missing.headers and missing.headers["content-type"] == PROBLEM
    assert wrong.status_code == 403
    assert 'scope="patterns:read"' in wrong.headers["WWW-Authenticate"]


# -- legacy names and the other endpoints ----------------------------------------------------------


async def test_legacy_parameters_map_to_the_new_ones(client: httpx.AsyncClient, world: World) -> None:
    pats = list(world.patterns)
    legacy = {
        "pattern_types": f"{pats[1]}, {pats[4]}",
        "symbols": ",".join(s.lower() for s in world.symbols[:8]),
        "confidence_min": "0.3",
        "per_page": "10",
        "sort_by": "confidence",
        "sort_order": "asc",
    }
    new = [
        ("pattern", pats[1]),
        ("pattern", pats[4]),
        *[("symbol", s) for s in world.symbols[:8]],
        ("confidence_min", "0.3"),
        ("limit", "10"),
        ("sort", "confidence"),
        ("order", "asc"),
    ]
    want = expected(world, await stored_rows(world), new)
    assert len(want) > 20
    old_page = (await client.get(SCAN, params=legacy)).json()
    new_page = (await client.get(SCAN, params=new)).json()
    assert [i["id"] for i in old_page["items"]] == [i["id"] for i in new_page["items"]] == want[:10]
    assert old_page["next_cursor"] == new_page["next_cursor"]  # the same query, so the same cursor
    page3 = (await client.get(SCAN, params={**legacy, "page": "3"})).json()
    assert [i["id"] for i in page3["items"]] == want[20:30]
    # A cursor from a legacy page continues after it, as a keyset.
    after3 = (await client.get(SCAN, params=[*new, ("cursor", page3["next_cursor"])])).json()
    assert [i["id"] for i in after3["items"]] == want[30:40]
    by_time = (await client.get(SCAN, params={"symbols": world.symbols[0], "sort_by": "timestamp"})).json()
    assert [i["id"] for i in by_time["items"]] == expected(
        world, await stored_rows(world), [("symbol", world.symbols[0]), ("limit", "50")]
    )[:50]


async def test_one_event_with_every_field(client: httpx.AsyncClient, world: World) -> None:
    event = {
        "id": "full-event-1",
        "type": "pattern_updated",
        "symbol": "brk.b",
        "pattern": "Hammer",
        "timeframe": "daily",
        "confidence": 0.87,
        "detected_at": "2026-10-15T13:30:00.250Z",
        "expires_at": "2026-10-20T13:30:00Z",
        "price": 101.5,
        "volume": 2500.0,
        "levels": {"stop": 99.5, "target": 110.0},
        "indicators": {"rsi": 31.2},
        "source": "unit",
        "data": {"note": "ok", "n": [1, 2]},
    }
    await insert_events(world.hub, [event])
    response = await client.get("/api/patterns/full-event-1")
    assert response.status_code == 200
    body = response.json()
    received = body.pop("received_at")
    assert received.endswith("Z")
    assert body == {
        **event,
        "symbol": "BRK.B",
        "pattern": "hammer",
        "seq": None,
        "detected_at": "2026-10-15T13:30:00.250000Z",
        "superseded": False,
    }
    scanned = (await client.get(SCAN, params={"symbol": "BRK.B", "pattern": "hammer"})).json()["items"]
    assert [{**i, "received_at": None} for i in scanned] == [{**body, "received_at": None}]
    missing = await client.get("/api/patterns/no-such-event")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert (await client.get("/api/patterns/full-event-1?x=1")).status_code == 400


async def test_definitions(client: httpx.AsyncClient, world: World) -> None:
    response = await client.get("/api/patterns/definitions")
    assert response.status_code == 200
    items = response.json()["items"]
    count = await _fetch(world.hub.hub.pool, "SELECT count(*) AS n FROM pattern_definitions")
    assert len(items) == count[0]["n"] > 0
    hammer = next(i for i in items if i["name"] == "hammer")
    assert set(hammer) == {"name", "aliases", "category", "direction", "description", "timeframes", "enabled"}
    assert (
        hammer["category"] == "candlestick"
        and isinstance(hammer["aliases"], list)
        and hammer["enabled"] is True
    )
    assert set(hammer["timeframes"]) <= set(TIMEFRAMES)
    assert (await client.get("/api/patterns/definitions?all=1")).status_code == 400


async def test_stats(client: httpx.AsyncClient, world: World) -> None:
    await refresh_views(world.hub.hub.pool)
    rows = await stored_rows(world)
    today = datetime.now(UTC).date()

    def counts(
        days: int, pattern: str | None = None, timeframe: str | None = None
    ) -> tuple[dict[Any, int], dict[str, int]]:
        by_pattern: dict[Any, int] = {}
        by_day: dict[str, int] = {}
        for r in rows:
            day = r["detected_at"].astimezone(UTC).date()
            if (
                (today - day).days >= days
                or (pattern and r["pattern"] != pattern)
                or (timeframe and r["timeframe"] != timeframe)
            ):
                continue
            by_pattern[(r["pattern"], r["timeframe"])] = by_pattern.get((r["pattern"], r["timeframe"]), 0) + 1
            by_day[day.isoformat()] = by_day.get(day.isoformat(), 0) + 1
        return by_pattern, by_day

    body = (await client.get("/api/patterns/stats")).json()
    want_pattern, want_day = counts(30)
    assert body["days"] == 30
    assert {(r["pattern"], r["timeframe"]): r["events"] for r in body["by_pattern"]} == want_pattern
    assert {r["day"]: r["events"] for r in body["by_day"]} == want_day
    assert [r["day"] for r in body["by_day"]] == sorted(want_day)
    first = body["by_pattern"][0]
    assert 0 <= first["avg_confidence"] <= first["max_confidence"] <= 1 and first[
        "last_detected_at"
    ].endswith("Z")
    canonical = next(iter(world.patterns.values()))
    alias = next(k for k, v in world.patterns.items() if v == canonical and k != canonical)
    body = (
        await client.get(
            "/api/patterns/stats", params={"days": "90", "pattern": alias, "timeframe": "hourly"}
        )
    ).json()
    want_pattern, want_day = counts(90, canonical, "hourly")
    assert {(r["pattern"], r["timeframe"]): r["events"] for r in body["by_pattern"]} == want_pattern
    assert {r["day"]: r["events"] for r in body["by_day"]} == want_day
    for query, loc in [
        ("days=0", "query.days"),
        ("days=366", "query.days"),
        ("pattern=nope_nope", "query.pattern"),
        ("timeframe=2min", "query.timeframe"),
        ("symbol=AAPL", "query.symbol"),
    ]:
        response = await client.get(f"/api/patterns/stats?{query}")
        assert response.status_code == 400 and loc in [e["loc"] for e in response.json()["errors"]], query


async def test_my_universe_without_a_saved_one_is_empty(world: World) -> None:
    token = mint_token(JWT_SECRET, subject="nobody-saved-anything", scopes=["patterns:read"])
    async with httpx.AsyncClient(base_url=world.hub.url, headers={"Authorization": f"Bearer {token}"}) as c:
        body = (await c.get(SCAN, params={"universe": "my"})).json()
    assert body["items"] == [] and body["next_cursor"] is None
