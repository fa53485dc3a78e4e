"""Storage upkeep: partitions created ahead of time, materialized views refreshed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

__all__ = ["MATERIALIZED_VIEWS", "ensure_partitions", "refresh_views"]

log = logging.getLogger("tickstock.store.maintenance")

MATERIALIZED_VIEWS = ("pattern_stats_daily", "latest_patterns")


async def ensure_partitions(
    pool: AsyncConnectionPool, *, start: datetime | None = None, ahead: timedelta = timedelta(days=7)
) -> int:
    """Make sure partitions exist from ``start`` (default: now) to ``start + ahead``; return how many
    were created (0 on a TimescaleDB hypertable, which makes its own chunks)."""
    lo = start or datetime.now(UTC)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT tickstock_ensure_partitions(%s, %s) AS created", (lo, lo + ahead))
        row: dict[str, Any] | None = await cur.fetchone()  # type: ignore[assignment]  # pool rows are dicts
    created = int(row["created"]) if row else 0
    if created:
        log.info("created %d pattern_events partition(s) up to %s", created, (lo + ahead).date())
    return created


async def refresh_views(pool: AsyncConnectionPool) -> None:
    """Refresh every materialized view CONCURRENTLY (readers are never blocked)."""
    async with pool.connection() as conn:
        for view in MATERIALIZED_VIEWS:
            # A refresh reads every event: on millions of rows it outlasts the pool's statement
            # timeout, which is meant for requests.
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
