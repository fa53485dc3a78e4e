"""Pattern statistics: event counts per pattern, timeframe and day (:func:`pattern_stats`, from the
materialised ``pattern_stats_daily``), and the recent activity the dashboard's pictures draw
(:func:`recent_activity`: events per minute and timeframe, and per sector and pattern).

The recent reads go to ``pattern_events`` over a short window of ``detected_at`` (the time index
``pattern_events_time_idx`` bounds the read, and partitions outside the window are pruned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["MAX_CELL_SYMBOLS", "MAX_HEAT_CELLS", "RecentActivity", "pattern_stats", "recent_activity"]

MAX_HEAT_CELLS = 400  # the busiest (sector, pattern) cells; a page cannot show more
MAX_CELL_SYMBOLS = 50  # symbols listed per cell (alphabetically first), enough to filter the feed by

# An event's direction: what its producer said (the demo feed always says), else the catalog's.
_DIRECTION = "coalesce(e.payload->'data'->>'direction', d.direction, 'neutral')"


@dataclass(frozen=True, slots=True)
class RecentActivity:
    """``per_minute``: ``{minute, timeframe, events}`` (minutes with no event are absent), oldest
    first; ``heat``: ``{sector, pattern, events, avg_confidence, bullish, bearish, neutral, symbols,
    symbol_count}``, busiest first (``sector`` is ``None`` for symbols outside the directory or
    without a sector)."""

    per_minute: list[dict[str, Any]]
    heat: list[dict[str, Any]]


async def recent_activity(
    conn: psycopg.AsyncConnection[Any],
    *,
    since: datetime,
    until: datetime,
    timeframes: Sequence[str] = (),
) -> RecentActivity:
    """Counts of events detected in ``[since, until)``, of ``timeframes`` (all when empty). Two
    reads; raises psycopg's errors (the pool's statement timeout applies)."""
    where = [sql.SQL("e.detected_at >= %s AND e.detected_at < %s")]
    params: list[Any] = [since, until]
    if timeframes:
        where.append(sql.SQL("e.timeframe = ANY(%s)"))
        params.append(sorted(set(timeframes)))
    cond = sql.SQL(" AND ").join(where)
    per_minute = await (
        await conn.execute(
            sql.SQL(
                "SELECT date_trunc('minute', e.detected_at) AS minute, e.timeframe, count(*)::bigint AS events "
                "FROM pattern_events e WHERE {} GROUP BY 1, 2 ORDER BY 1, 2"
            ).format(cond),
            params,
        )
    ).fetchall()
    heat = await (
        await conn.execute(
            sql.SQL(
                "SELECT s.sector, e.pattern, count(*)::bigint AS events, "
                "avg(e.confidence)::real AS avg_confidence, "
                "count(*) FILTER (WHERE {dir} = 'bullish')::bigint AS bullish, "
                "count(*) FILTER (WHERE {dir} = 'bearish')::bigint AS bearish, "
                "count(*) FILTER (WHERE {dir} NOT IN ('bullish', 'bearish'))::bigint AS neutral, "
                "(array_agg(DISTINCT e.symbol ORDER BY e.symbol))[1:%s] AS symbols, "
                "count(DISTINCT e.symbol)::bigint AS symbol_count "
                "FROM pattern_events e "
                "LEFT JOIN symbols s ON s.symbol = e.symbol "
                "LEFT JOIN pattern_definitions d ON d.name = e.pattern "
                "WHERE {cond} GROUP BY 1, 2 ORDER BY events DESC, 1 NULLS LAST, 2 LIMIT %s"
            ).format(dir=sql.SQL(_DIRECTION), cond=cond),
            [MAX_CELL_SYMBOLS, *params, MAX_HEAT_CELLS],
        )
    ).fetchall()
    return RecentActivity(per_minute=per_minute, heat=heat)


async def pattern_stats(
    conn: psycopg.AsyncConnection[Any],
    *,
    days: int,
    patterns: Sequence[str] = (),
    timeframes: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Totals per (pattern, timeframe) and per day over the last ``days`` UTC days (today included),
    from ``pattern_stats_daily`` (as fresh as its last refresh)."""
    where = [sql.SQL("day > (now() AT TIME ZONE 'UTC')::date - %s")]
    params: list[Any] = [days]
    if patterns:
        where.append(sql.SQL("pattern = ANY(%s)"))
        params.append(sorted(set(patterns)))
    if timeframes:
        where.append(sql.SQL("timeframe = ANY(%s)"))
        params.append(sorted(set(timeframes)))
    cond = sql.SQL(" AND ").join(where)
    by_pattern = await (
        await conn.execute(
            sql.SQL(
                "SELECT pattern, timeframe, sum(events)::bigint AS events, "
                "(sum(avg_confidence * events) / sum(events))::real AS avg_confidence, "
                "max(max_confidence) AS max_confidence, max(last_detected_at) AS last_detected_at "
                "FROM pattern_stats_daily WHERE {} GROUP BY pattern, timeframe "
                "ORDER BY events DESC, pattern, timeframe"
            ).format(cond),
            params,
        )
    ).fetchall()
    by_day = await (
        await conn.execute(
            sql.SQL(
                "SELECT day, sum(events)::bigint AS events FROM pattern_stats_daily WHERE {} "
                "GROUP BY day ORDER BY day"
            ).format(cond),
            params,
        )
    ).fetchall()
    return by_pattern, by_day
