"""Pattern-event scans: filters, keyset pagination, cursors, and single events.

A scan is one ``SELECT`` over ``pattern_events`` built with :mod:`psycopg.sql` (values are always
parameters). Symbol, universe and sector filters are resolved to one symbol set first, so the
planner sees ``symbol = ANY(<constant array>)`` and can pick the symbol index or walk the time index.
Every sort ends in ``id``, so the order is total and a keyset ``(sort values, id)`` taken from the
last row of a page names exactly where the next page starts, however many events arrive meanwhile.
Unless history is asked for, a scan reads each pattern instance's latest event only (not
``superseded``: a filter on the rows the same indexes find, since few rows are superseded).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from store.cursor import NOT_ISSUED, CursorCodec, CursorError, read_number, read_text, read_time
from store.universe_resolver import (
    MY_UNIVERSE,
    ScanError,
    SqlResolver,
    UniverseResolver,
    UnknownSector,
    UnknownUniverse,
)

__all__ = [
    "MAX_LIMIT",
    "MY_UNIVERSE",
    "ORDERS",
    "SORTS",
    "UNIVERSE_SEPARATOR",
    "CursorError",
    "ScanError",
    "ScanFilter",
    "ScanPage",
    "Sort",
    "UnknownSector",
    "UnknownUniverse",
    "build_scan",
    "decode_cursor",
    "encode_cursor",
    "get_event",
    "resolve_symbols",
    "scan_events",
]

SORTS = ("detected_at", "confidence", "symbol")
ORDERS = ("desc", "asc")
MAX_LIMIT = 500
UNIVERSE_SEPARATOR = ":"

EVENT_COLUMNS = sql.SQL(
    "id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at, price, volume, levels, "
    "indicators, source, coalesce(payload->'data', '{}'::jsonb) AS data, stream_seq AS seq, received_at, "
    "superseded"
)
# Casts for keyset values: a real compared with a float8 parameter is widened, and 0.7::float8 is not
# 0.7::real, so confidences are compared as real on both sides.
_CASTS = {"detected_at": "timestamptz", "confidence": "real", "symbol": "text", "id": "text"}


@dataclass(frozen=True)
class ScanFilter:
    """What a scan matches. Values within one field OR together; fields AND together.

    ``patterns`` are canonical names and ``symbols`` canonical symbols (the caller normalises them);
    ``universes`` are universe keys, ``my`` or keys joined with ``:`` (a union); ``sectors`` match
    ``symbols.sector`` case-insensitively. ``detected_after`` is inclusive, ``detected_before``
    exclusive. Without ``history`` a scan reads the latest event of each pattern instance (the filters
    apply to it); with ``history`` every stored event. ``active_only`` keeps instances whose latest
    event is not ``pattern_expired`` and has no ``expires_at`` or one in the future (with ``history``:
    every event of such an instance).
    """

    patterns: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    universes: tuple[str, ...] = ()
    sectors: tuple[str, ...] = ()
    timeframes: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    confidence_min: float | None = None
    confidence_max: float | None = None
    detected_after: datetime | None = None
    detected_before: datetime | None = None
    active_only: bool = False
    history: bool = False

    def fingerprint(self) -> str:
        """A stable hash of the filter set (order and repetition of values do not matter)."""
        canonical: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if name == "history" and not value:
                continue  # the default: cursors issued before the field existed stay valid
            if isinstance(value, (tuple, list)):
                if name == "universes":
                    value = [UNIVERSE_SEPARATOR.join(sorted(set(v.split(UNIVERSE_SEPARATOR)))) for v in value]
                elif name == "sectors":
                    value = [v.casefold() for v in value]
                value = sorted(set(value))
            elif isinstance(value, datetime):
                value = value.isoformat()
            canonical[name] = value
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]


@dataclass(frozen=True)
class Sort:
    """``key`` is one of :data:`SORTS`, ``order`` one of :data:`ORDERS`; raises ``ValueError`` otherwise.

    ``detected_at`` and ``confidence`` sort by (key, id) in ``order``; ``symbol`` sorts by symbol in
    ``order`` and, within a symbol, newest first (the symbol index's own order).
    """

    key: str = "detected_at"
    order: str = "desc"

    def __post_init__(self) -> None:
        if self.key not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")

    @property
    def spec(self) -> str:
        return f"{self.key}:{self.order}"

    def columns(self) -> list[tuple[str, bool]]:
        """``(column, descending)`` pairs of the total order."""
        desc = self.order == "desc"
        if self.key == "symbol":
            return [("symbol", desc), ("detected_at", True), ("id", True)]
        return [(self.key, desc), ("id", desc)]


@dataclass(frozen=True)
class ScanPage:
    """One page of rows (dicts) and, when more may follow, the sort values of its last row."""

    items: list[dict[str, Any]]
    last_values: tuple[Any, ...] | None


# -- cursors ----------------------------------------------------------------------------------------

SCAN_CURSOR = "scan"  # the cursor kind (store.cursor): a scan cursor is never a symbols cursor
_READERS: dict[str, Callable[[object], Any]] = {
    "detected_at": read_time,
    "confidence": read_number,
    "symbol": read_text,
    "id": read_text,
}


def encode_cursor(values: Sequence[Any], *, sort: Sort, fingerprint: str, codec: CursorCodec) -> str:
    """A signed cursor (:mod:`store.cursor`) holding the last row's sort values, the sort spec and the
    filter fingerprint."""
    encoded = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return codec.encode(SCAN_CURSOR, {"k": encoded, "s": sort.spec, "f": fingerprint})


def decode_cursor(token: str, *, sort: Sort, fingerprint: str, codec: CursorCodec) -> tuple[Any, ...]:
    """The sort values in ``token``, each checked for its column's type; raises :class:`CursorError`
    when the token is malformed, altered or holds a wrong type, or was issued for another sort or
    filter set."""
    body = codec.decode(SCAN_CURSOR, token)
    if set(body) != {"k", "s", "f"}:
        raise CursorError(NOT_ISSUED)
    spec, fp, raw = body["s"], body["f"], body["k"]
    if not isinstance(spec, str) or not isinstance(fp, str):
        raise CursorError("a value has the wrong type")
    if spec != sort.spec:
        raise CursorError(f"it was issued for sort {read_text(spec)}, not {sort.spec}")
    if fp != fingerprint:
        raise CursorError("it was issued for other filters; start again without it")
    columns = sort.columns()
    if not isinstance(raw, list) or len(raw) != len(columns):
        raise CursorError(NOT_ISSUED)
    return tuple(_READERS[column](value) for (column, _), value in zip(columns, raw, strict=True))


# -- symbols ----------------------------------------------------------------------------------------


async def resolve_symbols(
    resolver: UniverseResolver, filt: ScanFilter, *, subject: str | None = None
) -> frozenset[str] | None:
    """The symbols the symbol, universe and sector filters allow (their intersection), or ``None``
    when none of them is set. A universe value may join keys with ``:`` (a union); ``my`` is
    ``subject``'s saved universe. Raises :class:`UnknownUniverse` / :class:`UnknownSector` (both
    :class:`ScanError`) and whatever ``resolver`` raises."""
    allowed: frozenset[str] | None = frozenset(filt.symbols) if filt.symbols else None
    if filt.universes:
        keys = {k for value in filt.universes for k in value.split(UNIVERSE_SEPARATOR)}
        members = await resolver.universe_symbols(keys, subject=subject)
        allowed = members if allowed is None else allowed & members
    if filt.sectors:
        in_sectors = await resolver.sector_symbols(filt.sectors)
        allowed = in_sectors if allowed is None else allowed & in_sectors
    return allowed


# -- the scan ---------------------------------------------------------------------------------------


# Each instance's latest event. Spelt so that it does not imply the predicate of the instance-key index
# (partial on NOT superseded; the writer's lookup): matched, the planner took it for symbol filters and
# sorted every row of the symbols instead of walking an index in the scan's order (ops/explain_scan.py).
# The column is NOT NULL, so the meaning is the same.
_LATEST = sql.SQL("superseded IS NOT TRUE")
_ACTIVE = sql.SQL("type <> 'pattern_expired' AND (expires_at IS NULL OR expires_at > now())")
# With history: the event's instance is active, judged by its latest row (found by the instance key).
_ACTIVE_INSTANCE = sql.SQL(
    "EXISTS (SELECT 1 FROM pattern_events l WHERE (l.symbol, l.pattern, l.timeframe, l.detected_at) = "
    "(pattern_events.symbol, pattern_events.pattern, pattern_events.timeframe, pattern_events.detected_at) "
    "AND NOT l.superseded AND l.type <> 'pattern_expired' AND (l.expires_at IS NULL OR l.expires_at > now()))"
)


def _value(column: str) -> sql.Composable:
    return sql.SQL("%s::{}").format(sql.SQL(_CASTS[column]))


def _row(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))


def _values(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(_value(c) for c in columns))


def _keyset(columns: list[tuple[str, bool]], values: Sequence[Any]) -> tuple[sql.Composable, list[Any]]:
    """Rows strictly after ``values`` in the order ``columns``: consecutive columns with one direction
    compare as one row value (an index condition); a change of direction nests an ``OR``."""
    groups: list[tuple[bool, list[tuple[str, Any]]]] = []
    for (column, desc), value in zip(columns, values, strict=False):
        if groups and groups[-1][0] == desc:
            groups[-1][1].append((column, value))
        else:
            groups.append((desc, [(column, value)]))
    cond: sql.Composable | None = None
    params: list[Any] = []
    for desc, members in reversed(groups):
        names = [c for c, _ in members]
        vals = [v for _, v in members]
        after = sql.SQL("{} {} {}").format(_row(names), sql.SQL("<" if desc else ">"), _values(names))
        if cond is None:
            cond, params = after, vals
        else:
            equal = sql.SQL("{} = {}").format(_row(names), _values(names))
            cond = sql.SQL("({} OR ({} AND {}))").format(after, equal, cond)
            params = [*vals, *vals, *params]
    # The first column is bounded non-strictly as well: a plain range on it lets the planner prune
    # partitions (detected_at) and start the index scan at the cursor.
    first, desc = columns[0]
    bound = sql.SQL("{} {} {}").format(sql.Identifier(first), sql.SQL("<=" if desc else ">="), _value(first))
    return sql.SQL("{} AND {}").format(bound, cond), [values[0], *params]


def build_scan(
    filt: ScanFilter,
    *,
    symbols: frozenset[str] | None,
    sort: Sort,
    limit: int,
    after: Sequence[Any] | None = None,
    offset: int = 0,
) -> tuple[sql.Composed, list[Any]]:
    """The scan statement and its parameters: rows matching ``filt`` (with ``symbols`` already
    resolved), strictly after the keyset ``after``, in ``sort`` order, ``offset`` rows skipped (only
    for legacy page numbers: unlike a keyset, an offset shifts when new events arrive), at most
    ``limit`` rows."""
    where: list[sql.Composable] = []
    params: list[Any] = []

    def any_of(column: str, values: Sequence[str]) -> None:
        distinct = sorted(set(values))
        if len(distinct) == 1:
            # Plain equality: with "= ANY(array)" the planner walks the time index and filters, which
            # is slow for a rare value (800 ms for an absent symbol on 2M events; 0.2 ms this way).
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(distinct[0])
        else:
            where.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(column)))
            params.append(distinct)

    if symbols is not None:
        any_of("symbol", sorted(symbols))
    if filt.patterns:
        any_of("pattern", filt.patterns)
    if filt.timeframes:
        any_of("timeframe", filt.timeframes)
    if filt.types:
        any_of("type", filt.types)
    for column, op, value, cast in (
        ("confidence", ">=", filt.confidence_min, "real"),
        ("confidence", "<=", filt.confidence_max, "real"),
        ("detected_at", ">=", filt.detected_after, "timestamptz"),
        ("detected_at", "<", filt.detected_before, "timestamptz"),
    ):
        if value is not None:
            where.append(sql.SQL("{} {} %s::{}").format(sql.Identifier(column), sql.SQL(op), sql.SQL(cast)))
            params.append(value)
    if not filt.history:
        where.append(_LATEST)
    if filt.active_only:
        where.append(_ACTIVE_INSTANCE if filt.history else _ACTIVE)
    columns = sort.columns()
    if after is not None:
        cond, cond_params = _keyset(columns, after)
        where.append(cond)
        params.extend(cond_params)
    order = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL("DESC" if desc else "ASC")) for c, desc in columns
    )
    query = sql.SQL("SELECT {} FROM pattern_events WHERE {} ORDER BY {} LIMIT %s").format(
        EVENT_COLUMNS, sql.SQL(" AND ").join(where) if where else sql.SQL("true"), order
    )
    params.append(limit)
    if offset:
        query = sql.SQL("{} OFFSET %s").format(query)
        params.append(offset)
    return query, params


async def scan_events(
    conn: psycopg.AsyncConnection[Any],
    filt: ScanFilter,
    *,
    sort: Sort,
    limit: int,
    after: Sequence[Any] | None = None,
    offset: int = 0,
    subject: str | None = None,
    resolver: UniverseResolver | None = None,
) -> ScanPage:
    """One page of events matching ``filt`` (see :func:`build_scan`), with the sort values of its last
    row when more may follow. The symbol filters are resolved by ``resolver`` (the hub's
    in-process directory, say), else in SQL on ``conn``, with ``subject``'s saved universe as ``my``. Raises ``ValueError`` for a ``limit`` outside 1..:data:`MAX_LIMIT`, :class:`ScanError` for
    an unknown universe or sector, and psycopg's errors (the pool's statement timeout applies)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    symbols = await resolve_symbols(resolver or SqlResolver.over(conn), filt, subject=subject)
    if symbols is not None and not symbols:
        return ScanPage([], None)
    query, params = build_scan(filt, symbols=symbols, sort=sort, limit=limit + 1, after=after, offset=offset)
    rows: list[dict[str, Any]] = await (await conn.execute(query, params)).fetchall()
    if len(rows) <= limit:
        return ScanPage(rows, None)
    rows = rows[:limit]
    return ScanPage(rows, tuple(rows[-1][c] for c, _ in sort.columns()))


# -- single events ---------------------------------------------------------------------------------


async def get_event(conn: psycopg.AsyncConnection[Any], event_id: str) -> dict[str, Any] | None:
    """The stored event with ``event_id``, or ``None``. Finds its partition through ``pattern_event_ids``."""
    query = sql.SQL(
        "SELECT {} FROM pattern_events WHERE id = %s AND detected_at = "
        "(SELECT detected_at FROM pattern_event_ids WHERE id = %s)"
    ).format(EVENT_COLUMNS)
    row: dict[str, Any] | None = await (await conn.execute(query, (event_id, event_id))).fetchone()
    return row
