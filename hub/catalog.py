"""The pattern catalog: canonical pattern names and their aliases, in memory.

:class:`PatternCatalog` matches a name as producers spell it (``Hammer``, ``CDLHAMMER``, ``hammer``) to
its canonical name; it is pure and does no I/O. :class:`CatalogCache` holds the current one, loaded from
``pattern_definitions`` and refreshed on demand: by the maintenance task, and at once when PostgreSQL
announces a change to the definitions (``NOTIFY tickstock_reference``, heard by
:class:`store.lookups.Lookups`), so every hub node accepts a name defined at run time within moments.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from psycopg_pool import AsyncConnectionPool

from hub.model import EventError, brief
from store.definitions import match_key
from store.patterns import load_pattern_aliases

__all__ = ["CatalogCache", "PatternCatalog", "match_key"]

log = logging.getLogger("tickstock.catalog")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _snake_case(name: str) -> str:
    return _NOT_ALNUM.sub("_", _CAMEL.sub("_", name)).strip("_").lower()


class PatternCatalog:
    """Canonical pattern names and their aliases, as held in ``pattern_definitions``.

    Names match case-insensitively, ignoring whitespace, ``_`` and ``-``. Construction raises
    :class:`ValueError` if two canonical names would match the same key; it does no I/O.
    """

    _MEMO_LIMIT = 4096

    def __init__(self, entries: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._permissive = False
        self._names: dict[str, str] = {}
        self._memo: dict[str, str] = {}  # exact spelling -> canonical; bounded, it is on the hot path
        for canonical, aliases in entries:
            if isinstance(aliases, str):
                raise TypeError(f"aliases of {canonical!r} must be an iterable of names, not a string")
            for name in (canonical, *aliases):
                key = match_key(name)
                if not key:
                    raise ValueError(f"pattern name {name!r} (for {canonical!r}) is blank")
                if self._names.setdefault(key, canonical) != canonical:
                    raise ValueError(f"{name!r} names both {self._names[key]!r} and {canonical!r}")

    @classmethod
    def permissive(cls) -> PatternCatalog:
        """A catalog that accepts any name with a letter or digit and returns it in snake_case."""
        catalog = cls(())
        catalog._permissive = True
        return catalog

    def canonical(self, name: str) -> str:
        """The canonical name for ``name``; raises ``EventError(reason="unknown_pattern")``."""
        found = self._memo.get(name)
        if found is not None:
            return found
        found = _snake_case(name) if self._permissive else self._names.get(match_key(name))
        if not found:
            raise EventError("unknown_pattern", f"pattern {brief(name)} is not in the pattern catalog")
        if len(self._memo) < self._MEMO_LIMIT:
            self._memo[name] = found
        return found


class CatalogCache:
    """Holds the current :class:`PatternCatalog`. Until the first load it is permissive (any name,
    snake-cased), so nothing is rejected for want of a catalog."""

    def __init__(self) -> None:
        self.current = PatternCatalog.permissive()
        self.loaded = False
        self.refreshes = 0  # catalogs installed
        self._started = 0  # loads begun
        self._installed = 0  # the load whose catalog is current

    async def refresh(self, pool: AsyncConnectionPool) -> int:
        """Reload from the database; returns the number of definitions. An empty table keeps the
        permissive catalog (a hub without reference data still stores events). Loads may overlap (a
        notice during the maintenance round): a load never replaces the catalog of one begun after
        it. Definitions that would make two canonical names match one spelling (the writers refuse
        them, so only a hand edit of the table makes them) keep the current catalog, with an error
        logged. Raises psycopg's errors."""
        ticket = self.begin()
        entries = await load_pattern_aliases(pool)
        self.install(ticket, entries)
        return len(entries)

    def begin(self) -> int:
        """A ticket for a load that is about to start (later loads get larger tickets)."""
        self._started += 1
        return self._started

    def install(self, ticket: int, entries: list[tuple[str, list[str]]]) -> bool:
        """Make ``entries`` (loaded under ``ticket``) the catalog, unless a load begun later is already
        installed, the table is empty, or the entries do not build a catalog. Returns whether it did."""
        if ticket < self._installed:
            return False
        if not entries:
            log.warning("pattern_definitions is empty: accepting any pattern name")
            return False
        try:
            catalog = PatternCatalog(entries)
        except ValueError as exc:
            log.error("pattern_definitions not loaded, the catalog in use stays: %s", exc)
            return False
        self.current, self.loaded, self._installed = catalog, True, ticket
        self.refreshes += 1
        return True
