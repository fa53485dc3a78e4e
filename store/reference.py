"""Reference data: the symbol directory, index, sector and exchange universes, and pattern definitions.

:func:`load_reference_data` reads the files in ``store/reference_data/`` (:mod:`store.reference_files`
says what they hold and how they are read) and writes them in one transaction.

Ownership: the loader owns the universes :mod:`store.reference_files` names and every ``sector`` universe whose key starts
with ``sector-``. It deletes a sector universe that is no longer in the files, and it removes members
that are no longer in the files from the universes it owns. It never touches custom universes, users'
data, symbols missing from the files, or pattern definitions missing from ``patterns.json``. If a custom
or theme universe already holds one of its keys, it refuses to load rather than take that universe over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from store.definitions import key_conflicts, lock_definitions
from store.reference_files import FIXED_KEYS, ReferenceData, ReferenceDataError, read_reference_files

__all__ = ["ReferenceCounts", "ReferenceDataError", "load_reference_data", "reference_counts"]

log = logging.getLogger("tickstock.store.reference")

_LOCK_KEY = 0x74726566  # "tref": one loader at a time per database
_PATTERNS_FILE = "patterns.json"


@dataclass(frozen=True)
class ReferenceCounts:
    """What the database holds.

    ``symbols`` and ``patterns`` count every row of their tables. ``universes`` counts the loader's
    universes, ``sector_universes`` those of kind ``sector``, and ``members`` maps each of the loader's
    universe keys to its member count.
    """

    symbols: int
    universes: int
    sector_universes: int
    members: dict[str, int]
    patterns: int


async def load_reference_data(
    pool: AsyncConnectionPool, *, source_dir: Path | None = None
) -> ReferenceCounts:
    """Load the reference files in one transaction and return the counts the database then holds.

    ``source_dir`` replaces the package's ``reference_data`` folder (same file names).

    Idempotent: rows are upserted and unchanged rows are not rewritten, so a second run changes nothing
    and returns the same counts. Waits for a pool connection (the pool's timeout) and for any other
    loader on the same database (advisory lock). Raises :class:`ReferenceDataError` for a malformed file
    or a reserved universe key held by a custom or theme universe, ``OSError`` if a file cannot be read,
    and ``psycopg.Error`` if the database refuses the data. Nothing is written in those cases.
    """
    started = time.perf_counter()
    root: Traversable = source_dir if source_dir is not None else resources.files("store") / "reference_data"
    data = await asyncio.to_thread(read_reference_files, root)  # ~0.1 s of parsing, off the event loop
    read_s = time.perf_counter() - started
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await _write_symbols(conn, data)
        await _write_universes(conn, data)
        await _write_patterns(conn, data)
        counts = await _counts(conn)
    log.info(
        "reference data loaded in %.0f ms (%.0f ms reading files): %d symbols, %d universes, %d patterns",
        (time.perf_counter() - started) * 1000,
        read_s * 1000,
        counts.symbols,
        counts.universes,
        counts.patterns,
    )
    return counts


async def reference_counts(pool: AsyncConnectionPool) -> ReferenceCounts:
    """Read the counts back from the database (one pooled connection, no lock)."""
    async with pool.connection() as conn:
        return await _counts(conn)


# -- writing ----------------------------------------------------------------------------------------


async def _copy(
    conn: psycopg.AsyncConnection[Any],
    table: LiteralString,
    columns: LiteralString,
    rows: list[tuple[Any, ...]],
) -> None:
    """COPY ``rows`` into a new temporary ``table`` dropped at commit; ANALYZE it for the planner."""
    await conn.execute(f"CREATE TEMP TABLE {table} ({columns}) ON COMMIT DROP")
    names = ", ".join(part.split()[0] for part in columns.split(","))
    async with conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)
    await conn.execute(f"ANALYZE {table}")


async def _write_symbols(conn: psycopg.AsyncConnection[Any], data: ReferenceData) -> None:
    rows = [(s.symbol, s.name, s.exchange, s.type, s.sector, s.industry) for s in data.symbols.values()]
    await _copy(
        conn,
        "ref_symbols",
        "symbol text, name text, exchange text, type text, sector text, industry text",
        rows,
    )
    await conn.execute(
        "INSERT INTO symbols AS s (symbol, name, exchange, type, sector, industry, active)"
        " SELECT symbol, name, exchange, type, sector, industry, true FROM ref_symbols"
        " ON CONFLICT (symbol) DO UPDATE SET name = EXCLUDED.name, exchange = EXCLUDED.exchange,"
        " type = EXCLUDED.type, sector = EXCLUDED.sector, industry = EXCLUDED.industry, active = true,"
        " updated_at = now()"
        " WHERE (s.name, s.exchange, s.type, s.sector, s.industry, s.active)"
        " IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.exchange, EXCLUDED.type, EXCLUDED.sector,"
        " EXCLUDED.industry, true)"
    )


async def _write_universes(conn: psycopg.AsyncConnection[Any], data: ReferenceData) -> None:
    keys = [key for key, *_ in data.universes]
    async with conn.cursor(row_factory=tuple_row) as held:
        await held.execute(
            "SELECT key, kind FROM universes"
            " WHERE key = ANY(%s) AND kind IN ('custom', 'theme') ORDER BY key",
            (keys,),
        )
        taken = ", ".join(f"{key} ({kind})" for key, kind in await held.fetchall())
    if taken:
        raise ReferenceDataError(f"reference universe keys already used by other universes: {taken}")
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO universes AS u (key, name, kind, description) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,"
            " description = EXCLUDED.description, updated_at = now()"
            " WHERE (u.name, u.kind, u.description) IS DISTINCT FROM"
            " (EXCLUDED.name, EXCLUDED.kind, EXCLUDED.description)",
            data.universes,
        )
    await conn.execute(
        "DELETE FROM universes WHERE kind = 'sector' AND key LIKE 'sector-%%' AND key <> ALL(%s)", (keys,)
    )
    rows = [(key, symbol) for key, symbols in data.members.items() for symbol in dict.fromkeys(symbols)]
    await _copy(conn, "ref_members", "universe text, symbol text", rows)
    await conn.execute(
        "INSERT INTO universe_members (universe, symbol) SELECT universe, symbol FROM ref_members"
        " ON CONFLICT (universe, symbol) DO NOTHING"
    )
    await conn.execute(
        "DELETE FROM universe_members m WHERE m.universe = ANY(%s) AND NOT EXISTS"
        " (SELECT 1 FROM ref_members r WHERE r.universe = m.universe AND r.symbol = m.symbol)",
        (keys,),
    )


async def _write_patterns(conn: psycopg.AsyncConnection[Any], data: ReferenceData) -> None:
    await lock_definitions(conn)  # definitions added at run time are checked under the same lock
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO pattern_definitions AS p"
            " (name, aliases, category, direction, description, timeframes, enabled)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET aliases = EXCLUDED.aliases, category = EXCLUDED.category,"
            " direction = EXCLUDED.direction, description = EXCLUDED.description,"
            " timeframes = EXCLUDED.timeframes, updated_at = now()"
            " WHERE (p.aliases, p.category, p.direction, p.description, p.timeframes) IS DISTINCT FROM"
            " (EXCLUDED.aliases, EXCLUDED.category, EXCLUDED.direction, EXCLUDED.description,"
            " EXCLUDED.timeframes)",
            data.patterns,
        )
    async with conn.cursor(row_factory=tuple_row) as held:
        await held.execute("SELECT name, aliases FROM pattern_definitions ORDER BY name")
        clashes = key_conflicts(await held.fetchall())
    if clashes:
        listed = "; ".join(
            f"{spelling!r} of {name!r} also names {other!r}" for name, spelling, other in clashes
        )
        raise ReferenceDataError(f"{_PATTERNS_FILE} clashes with definitions added at run time: {listed}")


async def _counts(conn: psycopg.AsyncConnection[Any]) -> ReferenceCounts:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT u.key, u.kind, count(m.symbol) AS members FROM universes u"
            " LEFT JOIN universe_members m ON m.universe = u.key"
            " WHERE u.key = ANY(%s) OR (u.kind = 'sector' AND u.key LIKE 'sector-%%')"
            " GROUP BY u.key, u.kind ORDER BY u.key",
            (FIXED_KEYS,),
        )
        universes = await cur.fetchall()
        await cur.execute(
            "SELECT (SELECT count(*) FROM symbols) AS symbols,"
            " (SELECT count(*) FROM pattern_definitions) AS patterns"
        )
        (totals,) = await cur.fetchall()
    return ReferenceCounts(
        symbols=totals["symbols"],
        universes=len(universes),
        sector_universes=sum(1 for row in universes if row["kind"] == "sector"),
        members={row["key"]: row["members"] for row in universes},
        patterns=totals["patterns"],
    )
