"""Pattern statistics: event counts per pattern, timeframe and day, from ``pattern_stats_daily``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["pattern_stats"]


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
