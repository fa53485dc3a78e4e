"""The storage schema: constraints, partitions, idempotency keys, views and the scan indexes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from store.maintenance import ensure_partitions, refresh_views

UTC = UTC


async def _insert(conn: psycopg.AsyncConnection, **fields: object) -> None:  # type: ignore[type-arg]
    row = {
        "id": "e1",
        "type": "pattern_detected",
        "symbol": "AAPL",
        "pattern": "hammer",
        "timeframe": "daily",
        "confidence": 0.8,
        "detected_at": datetime(2026, 11, 2, 15, tzinfo=UTC),
        "payload": json.dumps({}),
    }
    row.update(fields)
    cols = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    await conn.execute(f"INSERT INTO pattern_events ({cols}) VALUES ({marks})", list(row.values()))  # type: ignore[arg-type]


async def test_partitions_are_created_ahead_and_on_demand(pool: AsyncConnectionPool) -> None:
    far = datetime(2031, 3, 15, tzinfo=UTC)
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition of relation"):
            await _insert(conn, id="future", detected_at=far)
    assert await ensure_partitions(pool, start=far, ahead=timedelta(days=40)) == 2  # March and April 2031
    assert await ensure_partitions(pool, start=far, ahead=timedelta(days=40)) == 0
    async with pool.connection() as conn:
        await _insert(conn, id="future", detected_at=far)
        names = await (
            await conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'pattern_events'::regclass ORDER BY 1"
            )
        ).fetchall()
        with pytest.raises(psycopg.errors.RaiseException, match="is before lo"):
            await conn.execute("SELECT tickstock_ensure_partitions(now(), now() - interval '1 day')")
    assert {"pattern_events_2031_03", "pattern_events_2031_04"} <= {r["relname"] for r in names}


async def test_default_partitions_cover_now(pool: AsyncConnectionPool) -> None:
    await ensure_partitions(pool)
    async with pool.connection() as conn:
        await _insert(conn, id="now", detected_at=datetime.now(UTC))


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"confidence": 1.5}, psycopg.errors.CheckViolation),
        ({"confidence": -0.1}, psycopg.errors.CheckViolation),
        ({"timeframe": "2min"}, psycopg.errors.CheckViolation),
        ({"type": "pattern_guessed"}, psycopg.errors.CheckViolation),
        ({"id": ""}, psycopg.errors.CheckViolation),
        ({"symbol": None}, psycopg.errors.NotNullViolation),
    ],
)
async def test_event_constraints(
    pool: AsyncConnectionPool, fields: dict[str, object], error: type[Exception]
) -> None:
    await ensure_partitions(pool, start=datetime(2026, 11, 1, tzinfo=UTC), ahead=timedelta(days=1))
    async with pool.connection() as conn:
        with pytest.raises(error):
            await _insert(conn, **{"id": "constraint-" + str(sorted(fields)), **fields})


async def test_event_ids_are_globally_unique(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO pattern_event_ids (id, detected_at) VALUES ('dup', now())")
        cur = await conn.execute(
            "INSERT INTO pattern_event_ids (id, detected_at) VALUES ('dup', now() - interval '90 days') "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        assert await cur.fetchall() == []


async def test_reference_and_user_constraints(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO symbols (symbol, name) VALUES ('BRK.B', 'Berkshire B'), ('ABR$D', 'pref')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("INSERT INTO symbols (symbol) VALUES ('lower')")
        await conn.execute("INSERT INTO universes (key, name, kind) VALUES ('mine', 'Mine', 'custom')")
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("INSERT INTO universes (key, name, kind) VALUES ('x', 'X', 'galaxy')")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            await conn.execute("INSERT INTO universe_members (universe, symbol) VALUES ('mine', 'NOPE')")
        await conn.execute("INSERT INTO universe_members (universe, symbol) VALUES ('mine', 'BRK.B')")
        await conn.execute("DELETE FROM universes WHERE key = 'mine'")
        assert await (await conn.execute("SELECT count(*) AS n FROM universe_members")).fetchone() == {"n": 0}
        await conn.execute(
            "INSERT INTO user_universes (subject, symbols, universe_keys) VALUES ('u1', '{AAPL}', '{sp500}')"
        )
        await conn.execute(
            "INSERT INTO user_watchlists (subject, name, symbols) VALUES ('u1', 'tech', '{AAPL,MSFT}')"
        )
        await conn.execute("INSERT INTO user_filters (subject, name, filter) VALUES ('u1', 'f', '{}')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute("INSERT INTO user_filters (subject, name, filter) VALUES ('u1', 'f', '{}')")


async def test_views_refresh_concurrently(pool: AsyncConnectionPool) -> None:
    day = datetime(2026, 11, 3, 14, tzinfo=UTC)
    await ensure_partitions(pool, start=day, ahead=timedelta(days=1))
    async with pool.connection() as conn:
        for i, (symbol, conf) in enumerate([("MSFT", 0.5), ("MSFT", 0.9), ("IBM", 0.7)]):
            await _insert(
                conn, id=f"view-{i}", symbol=symbol, confidence=conf, detected_at=day + timedelta(minutes=i)
            )
    await refresh_views(pool)
    async with pool.connection() as conn:
        stats = await (
            await conn.execute(
                "SELECT events, symbols, max_confidence FROM pattern_stats_daily WHERE day = '2026-11-03'"
            )
        ).fetchone()
        latest = await (await conn.execute("SELECT id FROM latest_patterns WHERE symbol = 'MSFT'")).fetchone()
    assert stats is not None and (stats["events"], stats["symbols"]) == (3, 2)
    assert stats["max_confidence"] == pytest.approx(0.9)
    assert latest == {"id": "view-1"}
