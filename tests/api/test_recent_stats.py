"""``GET /api/patterns/stats/recent`` on a live hub: counts checked against the events published, the
cache (a hit, then fresh after a new event), and hostile parameters."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.api.conftest import TokenClients
from tests.support import LiveHub, make_event, publish_events, wait_for

RECENT = "/api/patterns/stats/recent"
PROBLEM = "application/problem+json"
NOWHERE = "QZQZ"  # in no sector


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _minute(t: datetime) -> str:
    return _iso(t.replace(second=0, microsecond=0))


async def _sectors(pool: AsyncConnectionPool, symbols: set[str]) -> dict[str, str | None]:
    async with pool.connection() as conn:
        rows: list[dict[str, Any]] = await (
            await conn.execute(
                "SELECT symbol, sector FROM symbols WHERE symbol = ANY(%s)", (sorted(symbols),)
            )  # type: ignore[assignment]
        ).fetchall()
    found = {r["symbol"]: r["sector"] for r in rows}
    return {s: found.get(s) for s in symbols}


async def _stored(pool: AsyncConnectionPool, prefix: str) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT count(*) AS n FROM pattern_events WHERE id LIKE %s", (prefix + "-%",))
        ).fetchone()
    return int(row["n"])  # type: ignore[index,call-overload]


@pytest.fixture
def client(token_clients: TokenClients) -> httpx.AsyncClient:
    return token_clients()


async def test_counts_per_minute_and_per_sector_and_pattern(
    client: httpx.AsyncClient, live_hub: LiveHub, ref_pool: AsyncConnectionPool
) -> None:
    now = datetime.now(UTC)
    symbols = ("AAPL", "MSFT", "XOM", NOWHERE)
    patterns = ("hammer", "shooting_star", "doji", "engulfing")
    events = []
    for i in range(40):
        at = now - timedelta(minutes=(i * 7) % 50, seconds=i % 3)
        extra: dict[str, object] = {}
        if patterns[(i // 2) % 4] == "engulfing":  # reported both ways: the producer says which
            extra["data"] = {"direction": ("bullish", "bearish")[i % 2]}
        events.append(
            make_event(
                i,
                prefix="rs",
                symbol=symbols[i % 4],
                pattern=patterns[(i // 2) % 4],
                timeframe=("daily", "1min")[i % 2],
                detected_at=_iso(at),
                **extra,
            )
        )
    # Outside the window (two hours ago): counted by neither picture.
    events.append(make_event(99, prefix="rs", symbol="AAPL", detected_at=_iso(now - timedelta(hours=2))))
    await publish_events(live_hub.hub.js, events)
    await wait_for(lambda: _stored_at_least(ref_pool, len(events)), timeout=30, what="all stored")
    sectors = await _sectors(ref_pool, set(symbols))
    assert sectors[NOWHERE] is None and sectors["AAPL"]

    response = await client.get(RECENT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["minutes"] == 60 and body["timeframes"] == []
    since, until = (datetime.fromisoformat(body[k]) for k in ("since", "until"))
    assert until - since == timedelta(minutes=60) and since <= now - timedelta(minutes=59) and until > now

    inside = [e for e in events if since <= datetime.fromisoformat(str(e["detected_at"])) < until]
    assert len(inside) == 40
    per_minute = Counter(
        (_minute(datetime.fromisoformat(str(e["detected_at"]))), e["timeframe"]) for e in inside
    )
    assert {(r["minute"], r["timeframe"]): r["events"] for r in body["per_minute"]} == per_minute
    minutes = [r["minute"] for r in body["per_minute"]]
    assert minutes == sorted(minutes)

    catalog = {"hammer": "bullish", "shooting_star": "bearish", "doji": "neutral"}
    expected: dict[tuple[str | None, str], dict[str, Any]] = {}
    for e in inside:
        cell = expected.setdefault(
            (sectors[str(e["symbol"])], str(e["pattern"])),
            {"events": 0, "bullish": 0, "bearish": 0, "neutral": 0, "symbols": set(), "conf": []},
        )
        data: dict[str, Any] = e.get("data", {})  # type: ignore[assignment]
        direction = data.get("direction") or catalog[str(e["pattern"])]
        cell["events"] += 1
        cell[direction] += 1
        cell["symbols"].add(e["symbol"])
        cell["conf"].append(e["confidence"])
    got = {(c["sector"], c["pattern"]): c for c in body["heat"]}
    assert set(got) == set(expected)
    for key, want in expected.items():
        cell = got[key]
        assert (cell["events"], cell["bullish"], cell["bearish"], cell["neutral"]) == (
            want["events"],
            want["bullish"],
            want["bearish"],
            want["neutral"],
        ), key
        assert cell["symbols"] == sorted(want["symbols"]) and cell["symbol_count"] == len(want["symbols"])
        assert cell["avg_confidence"] == pytest.approx(sum(want["conf"]) / len(want["conf"]), abs=1e-3)
    counts = [c["events"] for c in body["heat"]]
    assert counts == sorted(counts, reverse=True)

    # A shorter window and one timeframe narrow both pictures.
    narrow = (await client.get(RECENT, params={"minutes": "10", "timeframe": "1min"})).json()
    assert narrow["timeframes"] == ["1min"] and narrow["minutes"] == 10
    start = datetime.fromisoformat(narrow["since"])
    want_narrow = [
        e
        for e in inside
        if e["timeframe"] == "1min" and datetime.fromisoformat(str(e["detected_at"])) >= start
    ]
    assert sum(r["events"] for r in narrow["per_minute"]) == len(want_narrow)
    assert sum(c["events"] for c in narrow["heat"]) == len(want_narrow)
    assert {r["timeframe"] for r in narrow["per_minute"]} <= {"1min"}


async def _stored_at_least(pool: AsyncConnectionPool, n: int) -> bool:
    return await _stored(pool, "rs") >= n


async def test_cached_like_the_scans_and_fresh_after_a_new_event(
    client: httpx.AsyncClient, live_hub: LiveHub, ref_pool: AsyncConnectionPool
) -> None:
    params = {"minutes": "30", "timeframe": "hourly"}
    first = await client.get(RECENT, params=params)
    assert first.status_code == 200 and first.headers["X-Cache"] in ("miss", "hit")
    again = await client.get(RECENT, params=params)
    assert again.headers["X-Cache"] == "hit" and again.json() == first.json()
    before = sum(r["events"] for r in first.json()["per_minute"])

    event = make_event(
        0, prefix="fresh", symbol="MSFT", timeframe="hourly", detected_at=_iso(datetime.now(UTC))
    )
    await publish_events(live_hub.hub.js, [event])

    async def counted() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(RECENT, params=params)).json()
        return body if sum(r["events"] for r in body["per_minute"]) == before + 1 else None

    body = await wait_for(counted, timeout=30, what="the new event in the recent stats")
    assert any("MSFT" in c["symbols"] for c in body["heat"])
    ready = (await client.get("/health/ready")).json()
    assert ready["cache"]["routes"]["stats"]["hit"] >= 1


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("minutes=0", "query.minutes"),
        ("minutes=1441", "query.minutes"),
        ("minutes=abc", "query.minutes"),
        ("minutes=1&minutes=2", "query.minutes"),
        ("minutes=1%00", "query.minutes"),
        ("timeframe=2min", "query.timeframe"),
        ("timeframe=" + "x" * 5000, "query.timeframe"),
        ("days=3", "query.days"),
    ],
)
async def test_bad_parameters_are_problem_documents(client: httpx.AsyncClient, query: str, loc: str) -> None:
    response = await client.get(f"{RECENT}?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert loc in {e["loc"] for e in response.json()["errors"]}


async def test_needs_a_token_with_patterns_read(live_hub: LiveHub, token_clients: TokenClients) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as anonymous:
        assert (await anonymous.get(RECENT)).status_code == 401
    assert (await token_clients(scopes=("patterns:write",)).get(RECENT)).status_code == 403
