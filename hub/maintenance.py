"""The hub's periodic upkeep task: partitions ahead, materialized views, the pattern catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from types import TracebackType

import psycopg
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from store.maintenance import ensure_partitions, refresh_views

__all__ = ["Maintenance"]

log = logging.getLogger("tickstock.maintenance")


class Maintenance:
    """Runs the upkeep once on entry, then every ``interval_s`` until exit.

    Several hub nodes may run it at once: both operations are idempotent and concurrency-safe. A
    failed round is logged and retried on the next tick; it never stops the hub. With ``upkeep`` false
    (a hub's secondary workers) a round only reloads the catalog; partitions and views are the
    primary's.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        interval_s: float,
        ahead_days: int,
        catalog: CatalogCache | None = None,
        upkeep: bool = True,
    ) -> None:
        self._upkeep = upkeep
        self._pool = pool
        self._catalog = catalog
        self._interval_s = interval_s
        self._ahead = timedelta(days=ahead_days)
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.failures = 0

    async def run_once(self) -> None:
        # The catalog first: validation depends on it; the views are the least urgent.
        if self._catalog is not None:
            await self._catalog.refresh(self._pool)
        if not self._upkeep:
            self.rounds += 1
            return
        await ensure_partitions(self._pool, ahead=self._ahead)
        await refresh_views(self._pool)
        self.rounds += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.run_once()
            except (psycopg.Error, OSError) as exc:
                self.failures += 1
                log.warning("maintenance round failed: %s", exc)

    async def __aenter__(self) -> Maintenance:
        try:
            await self.run_once()
        except (psycopg.Error, OSError) as exc:  # the next round retries; the hub starts anyway
            self.failures += 1
            log.warning("first maintenance round failed: %s", exc)
        self._task = asyncio.create_task(self._loop(), name="tickstock-maintenance")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
