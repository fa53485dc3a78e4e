"""The pattern catalog in memory, loaded from ``pattern_definitions`` and refreshed on demand."""

from __future__ import annotations

import logging

from psycopg_pool import AsyncConnectionPool

from hub.events import PatternCatalog
from store.patterns import load_pattern_aliases

__all__ = ["CatalogCache"]

log = logging.getLogger("tickstock.catalog")


class CatalogCache:
    """Holds the current :class:`PatternCatalog`. Until the first load it is permissive (any name,
    snake-cased), so nothing is rejected for want of a catalog."""

    def __init__(self) -> None:
        self.current = PatternCatalog.permissive()
        self.loaded = False

    async def refresh(self, pool: AsyncConnectionPool) -> int:
        """Reload from the database; returns the number of definitions. An empty table keeps the
        permissive catalog (a hub without reference data still stores events)."""
        entries = await load_pattern_aliases(pool)
        if entries:
            self.current = PatternCatalog(entries)
            self.loaded = True
        else:
            log.warning("pattern_definitions is empty: accepting any pattern name")
        return len(entries)
