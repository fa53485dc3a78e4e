"""The symbol directory: prefix search with keyset pages, one symbol in detail, the admin's bulk upsert.

Every function takes a connection (autocommit, dict rows, as :func:`store.pool.open_pool` lends them);
the caller owns it and any transaction around it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from store.cursor import NOT_ISSUED, CursorCodec, CursorError, read_text

__all__ = [
    "LATEST_PATTERNS",
    "SYMBOLS_CURSOR",
    "SYMBOL_TYPES",
    "SymbolPage",
    "SymbolQuery",
    "decode_cursor",
    "encode_cursor",
    "get_symbol",
    "search_symbols",
    "unknown_symbols",
    "upsert_symbols",
]

# Mirrors the CHECK constraint on symbols.type in migrations/0001_reference.sql.
SYMBOL_TYPES = ("stock", "etf", "fund", "preferred", "warrant", "unit", "right", "note", "index", "other")
LATEST_PATTERNS = 10
_COLUMNS = "s.symbol, s.name, s.exchange, s.type, s.sector, s.industry, s.market_cap, s.active, s.updated_at"
_OPTIONAL = ("exchange", "type", "sector", "industry", "market_cap", "active")


@dataclass(frozen=True)
class SymbolQuery:
    """A directory search. ``q`` is a prefix of the symbol or (case-insensitively) of the name;
    ``universes`` is a union (a symbol in any of them); ``after`` is the keyset position (exclusive)."""

    q: str | None = None
    sector: str | None = None
    exchange: str | None = None
    type: str | None = None
    universes: tuple[str, ...] = ()
    active: bool | None = None
    after: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class SymbolPage:
    items: list[dict[str, Any]]
    next_after: str | None  # the last symbol of this page when there is a next one


SYMBOLS_CURSOR = "symbols"  # the cursor kind (store.cursor): never valid as a scan cursor


def encode_cursor(after: str, *, fingerprint: str, codec: CursorCodec) -> str:
    """A signed cursor (:mod:`store.cursor`) for the page after the symbol ``after`` of the search
    whose filters have ``fingerprint``."""
    return codec.encode(SYMBOLS_CURSOR, {"after": after, "f": fingerprint})


def decode_cursor(token: str, *, fingerprint: str, codec: CursorCodec) -> str:
    """The symbol after which the next page starts; raises :class:`store.cursor.CursorError` when the
    token is malformed, altered or holds a wrong type, or was issued for a search with other filters."""
    body = codec.decode(SYMBOLS_CURSOR, token)
    if set(body) != {"after", "f"}:
        raise CursorError(NOT_ISSUED)
    after, fp = read_text(body["after"]), read_text(body["f"])
    if fp != fingerprint:
        raise CursorError("it was issued for a search with other filters; start again without it")
    return after


def _like_prefix(text: str) -> str:
    """``text`` as a LIKE prefix pattern, its wildcards escaped (backslash is LIKE's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def search_symbols(conn: psycopg.AsyncConnection[Any], query: SymbolQuery) -> SymbolPage:
    """One page of symbols in symbol order.

    The prefix conditions are written as ``symbol LIKE 'AA%'`` and ``lower(name) LIKE 'app%'`` so that
    the ``text_pattern_ops`` indexes serve them. ``sector`` and ``exchange`` match case-insensitively.
    Raises psycopg's errors.
    """
    where: list[str] = []
    params: list[Any] = []
    if query.q:
        where.append("(s.symbol LIKE %s OR lower(s.name) LIKE %s)")
        params += [_like_prefix(query.q.upper()), _like_prefix(query.q.lower())]
    if query.sector is not None:
        where.append("lower(s.sector) = lower(%s)")
        params.append(query.sector)
    if query.exchange is not None:
        where.append("lower(s.exchange) = lower(%s)")
        params.append(query.exchange)
    if query.type is not None:
        where.append("s.type = %s")
        params.append(query.type)
    if query.active is not None:
        where.append("s.active = %s")
        params.append(query.active)
    if query.universes:
        where.append(
            "EXISTS (SELECT 1 FROM universe_members m WHERE m.symbol = s.symbol AND m.universe = ANY(%s))"
        )
        params.append(list(query.universes))
    if query.after is not None:
        where.append("s.symbol > %s")
        params.append(query.after)
    sql = f"SELECT {_COLUMNS} FROM symbols s"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY s.symbol LIMIT %s"
    params.append(query.limit + 1)
    cur = await conn.execute(sql, params)  # built from literals only
    rows = await cur.fetchall()
    more = len(rows) > query.limit
    items = [dict(r) for r in rows[: query.limit]]
    return SymbolPage(items=items, next_after=items[-1]["symbol"] if more else None)


async def get_symbol(conn: psycopg.AsyncConnection[Any], symbol: str) -> dict[str, Any] | None:
    """The symbol's row with ``universes`` (its universe keys, sorted) and ``latest_patterns`` (the
    latest events of its :data:`LATEST_PATTERNS` most recent pattern instances, newest first); ``None``
    if it is not in the directory."""
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM symbols s WHERE s.symbol = %s", (symbol,))
    row = await cur.fetchone()
    if row is None:
        return None
    found = dict(row)
    cur = await conn.execute(
        "SELECT universe FROM universe_members WHERE symbol = %s ORDER BY universe", (symbol,)
    )
    found["universes"] = [r["universe"] for r in await cur.fetchall()]
    cur = await conn.execute(
        "SELECT id, pattern, timeframe, confidence, detected_at, type FROM pattern_events"
        " WHERE symbol = %s AND superseded IS NOT TRUE ORDER BY detected_at DESC, id DESC LIMIT %s",
        (symbol, LATEST_PATTERNS),
    )
    found["latest_patterns"] = [dict(r) for r in await cur.fetchall()]
    return found


async def unknown_symbols(conn: psycopg.AsyncConnection[Any], symbols: Sequence[str]) -> set[str]:
    """Those of ``symbols`` (canonical) that are not in the directory."""
    if not symbols:
        return set()
    cur = await conn.execute(
        "SELECT u.symbol FROM unnest(%s::text[]) AS u(symbol)"
        " WHERE NOT EXISTS (SELECT 1 FROM symbols s WHERE s.symbol = u.symbol)",
        (list(symbols),),
    )
    return {r["symbol"] for r in await cur.fetchall()}


# New symbols get the table's defaults for the fields they leave out.
_INSERT = """
INSERT INTO symbols (symbol, name, exchange, type, sector, industry, market_cap, active)
SELECT e->>'symbol', e->>'name', e->>'exchange', coalesce(e->>'type', 'stock'), e->>'sector', e->>'industry',
       (e->>'market_cap')::bigint, coalesce((e->>'active')::boolean, true)
FROM jsonb_array_elements(%s::jsonb) AS e
ON CONFLICT (symbol) DO NOTHING
RETURNING symbol
"""

# Existing symbols keep the fields the request leaves out (`e ? 'x'` tells "left out" from "null"),
# and a row that would not change is not rewritten, so updated_at means "last changed".
_UPDATE = """
WITH input AS (
    SELECT e FROM jsonb_array_elements(%s::jsonb) AS e WHERE NOT (e->>'symbol' = ANY(%s::text[]))
), new AS (
    SELECT s.symbol, i.e->>'name' AS name,
           CASE WHEN i.e ? 'exchange' THEN i.e->>'exchange' ELSE s.exchange END AS exchange,
           CASE WHEN i.e ? 'type' THEN i.e->>'type' ELSE s.type END AS type,
           CASE WHEN i.e ? 'sector' THEN i.e->>'sector' ELSE s.sector END AS sector,
           CASE WHEN i.e ? 'industry' THEN i.e->>'industry' ELSE s.industry END AS industry,
           CASE WHEN i.e ? 'market_cap' THEN (i.e->>'market_cap')::bigint ELSE s.market_cap END AS market_cap,
           CASE WHEN i.e ? 'active' THEN (i.e->>'active')::boolean ELSE s.active END AS active
    FROM input i JOIN symbols s ON s.symbol = i.e->>'symbol'
)
UPDATE symbols s SET name = n.name, exchange = n.exchange, type = n.type, sector = n.sector,
       industry = n.industry, market_cap = n.market_cap, active = n.active, updated_at = now()
FROM new n
WHERE s.symbol = n.symbol
  AND (s.name, s.exchange, s.type, s.sector, s.industry, s.market_cap, s.active)
      IS DISTINCT FROM (n.name, n.exchange, n.type, n.sector, n.industry, n.market_cap, n.active)
"""


async def upsert_symbols(conn: psycopg.AsyncConnection[Any], rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or update ``rows`` (validated, canonical, unique symbols; each has ``symbol`` and ``name``
    and any of the optional fields) in one transaction; returns how many rows were given.

    A field left out of a row keeps its stored value (or takes the column default for a new symbol);
    a field given as ``None`` is cleared. Raises psycopg's errors (nothing is written then).
    """
    if not rows:
        return 0
    fields = ("symbol", "name", *_OPTIONAL)
    batch = json.dumps([{k: v for k, v in row.items() if k in fields} for row in rows])
    async with conn.transaction():
        cur = await conn.execute(_INSERT, (batch,))
        inserted = [r["symbol"] for r in await cur.fetchall()]
        # Every given symbol exists now, so the update reaches all that were not just inserted.
        await conn.execute(_UPDATE, (batch, inserted))
    return len(rows)
