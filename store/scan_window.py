"""Page-numbered scans with a total, over a bounded window of :func:`store.scans.build_scan`'s rows.

TickStock's clients page by number and show a total; they also filter and sort on indicator values
(relative strength, relative volume, RSI) that our scan does not index. Both are answered over one
*window*: the first ``window`` rows :func:`~store.scans.build_scan` returns for the filter, in its own
order (the requested one when it is a scan sort, else newest first). The indicator conditions, the
count and the page's ``LIMIT``/``OFFSET`` apply inside that window, in one statement::

    WITH w AS MATERIALIZED (<build_scan ... LIMIT window>), f AS (SELECT * FROM w WHERE <indicators>)
    SELECT totals, page rows FROM (counts) t LEFT JOIN LATERAL (<f ordered, LIMIT, OFFSET>) ON true

So the cost of any request is bounded by reading ``window`` rows through the scan's own plan, however
deep the page or large the match; ``total`` is exact below ``window`` and ``capped`` once it is full.
No query logic is repeated here: the filter is the scan's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from store.scans import ScanFilter, Sort, build_scan, resolve_symbols
from store.universe_resolver import SqlResolver, UniverseResolver

__all__ = [
    "DEFAULT_WINDOW",
    "INDICATOR_SORTS",
    "IndicatorFilter",
    "WindowPage",
    "build_window",
    "indicator",
    "window_page",
]

DEFAULT_WINDOW = 10_000  # rows a page-numbered scan may look at: 100 pages of 100
# TickStock's defaults for an event without the indicator (its cache's CachedPattern reads them so).
INDICATOR_DEFAULTS = {"relative_strength": 1.0, "relative_volume": 1.0, "rsi": 50.0}
# TickStock's sort names over indicators -> the indicator.
INDICATOR_SORTS = {"rs": "relative_strength", "volume": "relative_volume"}


def indicator(name: str) -> sql.Composable:
    """``indicators.<name>`` as a float8, TickStock's default when it is absent or not a number."""
    return sql.SQL(
        "coalesce(CASE WHEN jsonb_typeof(indicators->{name}) = 'number' THEN (indicators->>{name})::float8 END,"
        " {default})"
    ).format(name=sql.Literal(name), default=sql.Literal(INDICATOR_DEFAULTS[name]))


@dataclass(frozen=True)
class IndicatorFilter:
    """Bounds on indicator values (inclusive), each ``None`` when not set."""

    rs_min: float | None = None
    vol_min: float | None = None
    rsi_min: float | None = None
    rsi_max: float | None = None

    def conditions(self) -> tuple[list[sql.Composable], list[Any]]:
        where: list[sql.Composable] = []
        params: list[Any] = []
        for name, op, value in (
            ("relative_strength", ">=", self.rs_min),
            ("relative_volume", ">=", self.vol_min),
            ("rsi", ">=", self.rsi_min),
            ("rsi", "<=", self.rsi_max),
        ):
            if value is not None:
                where.append(sql.SQL("{} {} %s::float8").format(indicator(name), sql.SQL(op)))
                params.append(value)
        return where, params


@dataclass(frozen=True)
class WindowPage:
    """One page; ``total`` counts matches in the window, ``capped`` says the window was full (more
    rows may match beyond it, and pages past the window are empty)."""

    items: list[dict[str, Any]]
    total: int
    capped: bool


def _order(sort: Sort, by: str | None, order: str) -> sql.Composable:
    """The total order of the page: the indicator ``by`` first when given, then the scan sort's columns."""
    keys: list[sql.Composable] = []
    if by is not None:
        keys.append(sql.SQL("{} {}").format(indicator(by), sql.SQL("DESC" if order == "desc" else "ASC")))
    keys += [
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL("DESC" if desc else "ASC"))
        for column, desc in sort.columns()
    ]
    return sql.SQL(", ").join(keys)


def build_window(
    filt: ScanFilter,
    *,
    symbols: frozenset[str] | None,
    sort: Sort,
    indicators: IndicatorFilter = IndicatorFilter(),
    by: str | None = None,
    order: str = "desc",
    limit: int,
    offset: int = 0,
    window: int = DEFAULT_WINDOW,
) -> tuple[sql.Composed, list[Any]]:
    """The window statement (see the module docstring) and its parameters, with ``symbols`` already
    resolved. Its rows: one per page row, each with ``scanned`` (rows in the window) and ``total``
    (matches in it); a single row of ``NULL`` event columns when the page is empty."""
    inner, params = build_scan(filt, symbols=symbols, sort=sort, limit=window)
    where, where_params = indicators.conditions()
    order_by = _order(sort, by, order)
    query = sql.SQL(
        "WITH w AS MATERIALIZED ({inner}), f AS (SELECT * FROM w WHERE {where}) "
        "SELECT t.scanned, t.total, p.* FROM "
        "(SELECT (SELECT count(*) FROM w) AS scanned, (SELECT count(*) FROM f) AS total) t "
        "LEFT JOIN LATERAL (SELECT * FROM f ORDER BY {order} LIMIT %s OFFSET %s) p ON true "
        "ORDER BY {order}"
    ).format(
        inner=inner,
        where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"),
        order=order_by,
    )
    return query, [*params, *where_params, max(0, min(limit, window - offset)), offset]


async def window_page(
    conn: psycopg.AsyncConnection[Any],
    filt: ScanFilter,
    *,
    sort: Sort,
    indicators: IndicatorFilter = IndicatorFilter(),
    by: str | None = None,
    order: str = "desc",
    limit: int,
    offset: int = 0,
    window: int = DEFAULT_WINDOW,
    subject: str | None = None,
    resolver: UniverseResolver | None = None,
) -> WindowPage:
    """Rows ``offset .. offset + limit`` of the window (see the module docstring) of ``filt`` in
    ``sort`` order, filtered by ``indicators``; with ``by`` (an indicator name) the window is ordered by
    that indicator in ``order`` first. Raises ``ValueError`` for a ``limit`` < 1, a negative ``offset``
    or ``window`` < 1, :class:`~store.scans.ScanError` for an unknown universe or sector, and psycopg's
    errors (the pool's statement timeout applies)."""
    if limit < 1 or offset < 0 or window < 1:
        raise ValueError("limit and window must be at least 1 and offset at least 0")
    symbols = await resolve_symbols(resolver or SqlResolver.over(conn), filt, subject=subject)
    if symbols is not None and not symbols:
        return WindowPage([], 0, False)
    query, params = build_window(
        filt,
        symbols=symbols,
        sort=sort,
        indicators=indicators,
        by=by,
        order=order,
        limit=limit,
        offset=offset,
        window=window,
    )
    rows: Sequence[dict[str, Any]] = await (await conn.execute(query, params)).fetchall()
    scanned, total = (rows[0]["scanned"], rows[0]["total"]) if rows else (0, 0)
    items = [
        {k: v for k, v in r.items() if k not in ("scanned", "total")} for r in rows if r["id"] is not None
    ]
    return WindowPage(items, total, scanned >= window)
