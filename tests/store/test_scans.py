"""Scan queries in PostgreSQL: plans on 50k events, symbol resolution, keysets and cursors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from store.cursor import CursorCodec
from store.scans import (
    CursorError,
    ScanError,
    ScanFilter,
    Sort,
    build_scan,
    decode_cursor,
    encode_cursor,
    get_event,
    resolve_symbols,
    scan_events,
)
from store.universe_resolver import SqlResolver

ROWS = 50_000
DAYS = 120
CODEC = CursorCodec(b"k" * 32)
# A partition this small (the edge months, the ones created ahead) is read whole: that is the cheap plan.
SMALL_PARTITION = 1000
DEFAULT_SORT = Sort()

GENERATE = """
WITH syms AS (SELECT array_agg(symbol ORDER BY symbol) AS a FROM universe_members WHERE universe = 'sp500'),
     pats AS (SELECT array_agg(name ORDER BY name) AS a FROM pattern_definitions),
     tfs  AS (SELECT ARRAY['1min','5min','15min','30min','hourly','daily','weekly','monthly'] AS a)
INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at, payload)
SELECT 'gen-' || lpad(g::text, 6, '0'), 'pattern_detected',
       syms.a[1 + (g * 7919) %% array_length(syms.a, 1)],
       pats.a[1 + (g * 104729) %% array_length(pats.a, 1)],
       tfs.a[1 + (g * 31) %% 8],
       ((g * 7) %% 1000) / 1000.0,
       %(now)s - (%(days)s * interval '1 day') * (g::float8 / %(n)s),
       CASE WHEN g %% 3 = 0 THEN NULL ELSE %(now)s + interval '1 day' - interval '1 hour' * (g %% 100) END,
       '{}'::jsonb
FROM generate_series(1::bigint, %(n)s) AS g, syms, pats, tfs
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def loaded(ref_pool: AsyncConnectionPool) -> AsyncIterator[tuple[AsyncConnectionPool, datetime]]:
    now = datetime.now(UTC).replace(microsecond=0)
    async with ref_pool.connection() as conn:
        await conn.execute(
            "SELECT tickstock_ensure_partitions(%s, %s)", (now - timedelta(days=DAYS + 1), now)
        )
        await conn.execute(GENERATE, {"n": ROWS, "days": DAYS, "now": now})
        # Every 25th event is updated (its detection superseded), so the default scans filter real rows.
        await conn.execute(
            "WITH old AS (UPDATE pattern_events SET superseded = true WHERE right(id, 2) IN ('00', '25', '50', '75')"
            " RETURNING *) INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at,"
            " expires_at, payload) SELECT 'upd-' || id, 'pattern_updated', symbol, pattern, timeframe, confidence,"
            " detected_at, expires_at, payload FROM old"
        )
        await conn.execute(
            "INSERT INTO pattern_event_ids (id, detected_at) SELECT id, detected_at FROM pattern_events"
        )
        await conn.execute("ANALYZE pattern_events")
        await conn.execute(
            "INSERT INTO user_universes (subject, symbols, universe_keys) VALUES "
            "('alice', '{ZZZZ,AAPL}', '{dow30}')"
        )
    yield ref_pool, now


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _walk(child))]


async def _plan(
    pool: AsyncConnectionPool,
    filt: ScanFilter,
    *,
    sort: Sort = DEFAULT_SORT,
    after: Any = None,
    subject: str | None = None,
) -> tuple[set[str], set[str], int, list[str]]:
    """Parent indexes used, partitions read, partitions in all, and large partitions read by a seq scan."""
    async with pool.connection() as conn:
        symbols = await resolve_symbols(SqlResolver.over(conn), filt, subject=subject)
        query, params = build_scan(filt, symbols=symbols, sort=sort, limit=51, after=after)
        cur = await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params)
        row = await cur.fetchone()
        assert row is not None
        plan = next(iter(row.values()))
        plan = json.loads(plan) if isinstance(plan, str) else plan
        parents = {
            r["child"]: r["parent"]
            for r in await (
                await conn.execute(
                    "SELECT c.relname AS child, p.relname AS parent FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                    "WHERE p.relkind = 'I'"
                )
            ).fetchall()
        }
        sizes = {
            r["relname"]: r["reltuples"]
            for r in await (
                await conn.execute(
                    "SELECT c.relname, c.reltuples FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'pattern_events'::regclass"
                )
            ).fetchall()
        }
    nodes = _walk(plan[0]["Plan"])
    indexes = {parents.get(n["Index Name"], n["Index Name"]) for n in nodes if "Index Name" in n}
    parts = {n["Relation Name"] for n in nodes if n.get("Relation Name", "").startswith("pattern_events")}
    seq = [
        n["Relation Name"]
        for n in nodes
        if n["Node Type"] == "Seq Scan" and sizes.get(n.get("Relation Name", ""), 0) >= SMALL_PARTITION
    ]
    return indexes, parts, len(sizes), seq


async def test_typical_shapes_use_the_indexes_and_prune_partitions(
    loaded: tuple[AsyncConnectionPool, datetime],
) -> None:
    pool, now = loaded
    week = now - timedelta(days=7)
    shapes: list[tuple[str, ScanFilter, dict[str, Any], set[str], bool]] = [
        ("newest first, no filter", ScanFilter(), {}, {"pattern_events_time_idx"}, False),
        ("one symbol", ScanFilter(symbols=("AAPL",)), {}, {"pattern_events_symbol_idx"}, False),
        (
            "pattern + timeframe, 30 days",
            ScanFilter(patterns=("hammer",), timeframes=("daily",), detected_after=now - timedelta(days=30)),
            {},
            {"pattern_events_pattern_idx"},
            True,
        ),
        (
            "dow30, confidence, 7 days",
            ScanFilter(universes=("dow30",), confidence_min=0.7, detected_after=week),
            {},
            {"pattern_events_symbol_idx", "pattern_events_time_idx"},
            True,
        ),
        (
            "timeframe, keyset page",
            ScanFilter(timeframes=("hourly",)),
            {"after": (now - timedelta(days=100), "gen-000000")},
            {"pattern_events_timeframe_idx", "pattern_events_time_idx"},
            True,
        ),
        (
            "keyset page, oldest first",
            ScanFilter(),
            {"sort": Sort("detected_at", "asc"), "after": (now - timedelta(days=3), "gen-000000")},
            {"pattern_events_time_idx"},
            True,
        ),
        (
            "symbols by symbol",
            ScanFilter(symbols=("AAPL", "MSFT"), active_only=True),
            {"sort": Sort("symbol", "asc")},
            {"pattern_events_symbol_idx"},
            False,
        ),
        (
            "one symbol, active instances",
            ScanFilter(symbols=("MSFT",), active_only=True),
            {},
            {"pattern_events_symbol_idx"},
            False,
        ),
        (
            "one symbol, with history",
            ScanFilter(symbols=("AAPL",), history=True),
            {},
            {"pattern_events_symbol_idx"},
            False,
        ),
        (
            "pattern + timeframe, active instances with history",
            ScanFilter(patterns=("hammer",), timeframes=("daily",), active_only=True, history=True),
            {},
            {"pattern_events_pattern_idx"},
            False,
        ),
        (
            "my universe, sector",
            ScanFilter(universes=("my",), sectors=("information technology",)),
            {"subject": "alice"},
            {"pattern_events_symbol_idx", "pattern_events_time_idx"},
            False,
        ),
    ]
    for name, filt, kwargs, wanted, prune in shapes:
        indexes, parts, total, seq = await _plan(pool, filt, **kwargs)
        print(f"{name}: indexes {sorted(indexes)}, partitions read {len(parts)} of {total}")
        assert not seq, f"{name}: sequential scan on {seq}"
        assert indexes & wanted, f"{name}: used {indexes}, wanted one of {wanted}"
        if prune and total:
            assert len(parts) < total, f"{name}: read {len(parts)} of {total} partitions"


async def test_resolve_symbols(loaded: tuple[AsyncConnectionPool, datetime]) -> None:
    pool, _ = loaded
    async with pool.connection() as conn:

        async def members(key: str) -> set[str]:
            cur = await conn.execute("SELECT symbol FROM universe_members WHERE universe = %s", (key,))
            return {r["symbol"] for r in await cur.fetchall()}

        dow, ndx, sp = await members("dow30"), await members("nasdaq100"), await members("sp500")
        assert await resolve_symbols(SqlResolver.over(conn), ScanFilter()) is None
        assert await resolve_symbols(SqlResolver.over(conn), ScanFilter(universes=("dow30",))) == dow
        assert (
            await resolve_symbols(SqlResolver.over(conn), ScanFilter(universes=("dow30:nasdaq100",)))
            == dow | ndx
        )
        assert (
            await resolve_symbols(SqlResolver.over(conn), ScanFilter(universes=("dow30", "nasdaq100")))
            == dow | ndx
        )
        assert await resolve_symbols(
            SqlResolver.over(conn), ScanFilter(universes=("my",)), subject="alice"
        ) == dow | {"ZZZZ", "AAPL"}
        assert (
            await resolve_symbols(SqlResolver.over(conn), ScanFilter(universes=("my",)), subject="bob")
            == set()
        )
        assert await resolve_symbols(SqlResolver.over(conn), ScanFilter(universes=("my",))) == set()
        both = await resolve_symbols(
            SqlResolver.over(conn), ScanFilter(symbols=("AAPL", "ZZZZ"), universes=("nasdaq100",))
        )
        assert both == {"AAPL"}
        tech = await resolve_symbols(SqlResolver.over(conn), ScanFilter(sectors=("INFORMATION technology",)))
        assert tech and "AAPL" in tech and tech <= sp
        assert (
            await resolve_symbols(
                SqlResolver.over(conn), ScanFilter(sectors=("Information Technology",), universes=("dow30",))
            )
            == tech & dow
        )
        with pytest.raises(ScanError) as universe:
            await resolve_symbols(SqlResolver.over(conn), ScanFilter(universes=("sp500:nope", "nada")))
        assert (
            universe.value.loc == "query.universe"
            and "nada" in universe.value.msg
            and "nope" in universe.value.msg
        )
        with pytest.raises(ScanError) as sector:
            await resolve_symbols(SqlResolver.over(conn), ScanFilter(sectors=("Energy", "Basket Weaving")))
        assert sector.value.loc == "query.sector" and "basket weaving" in sector.value.msg


async def test_scan_events_pages_by_keyset(loaded: tuple[AsyncConnectionPool, datetime]) -> None:
    pool, _ = loaded
    filt = ScanFilter(symbols=("AAPL",), confidence_min=0.5)
    async with pool.connection() as conn:
        everything = await scan_events(conn, filt, sort=Sort("confidence", "asc"), limit=500)
        assert everything.last_values is None and everything.items
        got: list[str] = []
        after = None
        while True:
            page = await scan_events(conn, filt, sort=Sort("confidence", "asc"), limit=7, after=after)
            got.extend(r["id"] for r in page.items)
            if page.last_values is None:
                break
            after = page.last_values
        assert got == [r["id"] for r in everything.items]
        assert all(r["confidence"] >= 0.5 for r in everything.items)
        assert (
            await scan_events(
                conn, ScanFilter(symbols=("AAPL",), universes=("my",)), sort=Sort(), limit=5, subject="nobody"
            )
        ).items == []
        with pytest.raises(ValueError, match="limit"):
            await scan_events(conn, filt, sort=Sort(), limit=0)
        row = await get_event(conn, "gen-000001")
        assert row is not None and row["id"] == "gen-000001" and row["data"] == {}
        assert await get_event(conn, "gen-missing") is None


def test_sort_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="sort"):
        Sort("price")
    with pytest.raises(ValueError, match="order"):
        Sort("symbol", "up")
    assert Sort("symbol", "desc").columns() == [("symbol", True), ("detected_at", True), ("id", True)]
    assert Sort("confidence", "asc").columns() == [("confidence", False), ("id", False)]


def test_history_changes_the_fingerprint_and_its_default_leaves_old_cursors_valid() -> None:
    # Without history the fingerprint is what it was before the field existed: the fields before it.
    before = {k: ([] if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(ScanFilter()).items()}
    del before["history"]
    encoded = json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    assert ScanFilter().fingerprint() == hashlib.sha256(encoded).hexdigest()[:32]
    assert ScanFilter(history=True).fingerprint() != ScanFilter().fingerprint()


def test_fingerprint_ignores_order_repetition_and_sector_case() -> None:
    a = ScanFilter(patterns=("hammer", "doji"), universes=("sp500:dow30",), sectors=("Energy",))
    b = ScanFilter(patterns=("doji", "hammer", "doji"), universes=("dow30:sp500",), sectors=("ENERGY",))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != ScanFilter(patterns=("hammer",)).fingerprint()
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert ScanFilter(detected_after=t).fingerprint() != ScanFilter(detected_before=t).fingerprint()


def test_cursor_round_trip_and_rejections() -> None:
    sort = Sort("symbol", "asc")
    when = datetime(2026, 11, 2, 14, 30, 0, 123456, tzinfo=UTC)
    token = encode_cursor(("AAPL", when, "ev-1"), sort=sort, fingerprint="f1", codec=CODEC)
    assert "=" not in token and "AAPL" not in token  # base64url, unpadded
    assert decode_cursor(token, sort=sort, fingerprint="f1", codec=CODEC) == ("AAPL", when, "ev-1")
    conf = encode_cursor((0.7, "ev-2"), sort=Sort("confidence"), fingerprint="f1", codec=CODEC)
    assert decode_cursor(conf, sort=Sort("confidence"), fingerprint="f1", codec=CODEC) == (0.7, "ev-2")
    rejections = [
        (token, sort, "f2", CODEC, "other filters"),
        (token, Sort("symbol", "desc"), "f1", CODEC, "sort"),
        (token, sort, "f1", CursorCodec(b"another key, 16+ bytes"), "altered"),
        (token[:-4], sort, "f1", CODEC, "altered"),
        ("!!!", sort, "f1", CODEC, "issued"),
    ]
    for bad, s, fp, codec, words in rejections:
        with pytest.raises(CursorError, match=words):
            decode_cursor(bad, sort=s, fingerprint=fp, codec=codec)


@pytest.mark.parametrize(
    "keyset",
    [
        ["AAPL"],  # too few values
        ["AAPL", "not a time", "x"],
        ["AAPL", "2026-11-02T14:30:00", "x"],  # no time zone
        [5, "2026-11-02T14:30:00+00:00", "x"],
        ["AAPL", "2026-11-02T14:30:00+00:00", ["x"]],
        ["AAPL", "2026-11-02T14:30:00+00:00", "x\x00y"],
        ["AAPL", "2026-11-02T14:30:00+00:00", ""],
        "AAPL",
    ],
)
def test_a_validly_signed_cursor_with_wrong_types_is_refused(keyset: object) -> None:
    """Even a cursor whose MAC verifies (the key leaked, or a bug) has every value checked."""
    sort = Sort("symbol", "asc")
    token = CODEC.encode("scan", {"k": keyset, "s": sort.spec, "f": "f1"})
    with pytest.raises(CursorError, match=r"^invalid cursor: "):
        decode_cursor(token, sort=sort, fingerprint="f1", codec=CODEC)


def test_a_confidence_cursor_needs_a_finite_number() -> None:
    sort = Sort("confidence")
    for value in ("0.7", True, None, 10**400):
        token = CODEC.encode("scan", {"k": [value, "ev-1"], "s": sort.spec, "f": "f1"})
        with pytest.raises(CursorError, match="wrong type"):
            decode_cursor(token, sort=sort, fingerprint="f1", codec=CODEC)
