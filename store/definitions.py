"""Pattern definitions in PostgreSQL: the catalog's rows, read, and written at run time.

A definition is a canonical name (``[a-z0-9_]{1,64}``) with aliases. Names and aliases match
case-insensitively, ignoring whitespace, ``_`` and ``-`` (:func:`match_key`, the one rule the hub's
catalog and the reference loader use too), and each such key names exactly one definition: a write
that would give a key to a second definition raises :class:`DefinitionConflict` and changes nothing.
Writes are serialised by a transaction-level advisory lock, so two writers cannot each pass the check
and together break it. Every write is announced to every hub node (``NOTIFY tickstock_reference``,
payload ``pattern_definitions``, migration 0009).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from store.errors import StoreError

__all__ = [
    "CATEGORIES",
    "DIRECTIONS",
    "TIMEFRAMES",
    "DefinitionConflict",
    "DefinitionError",
    "key_conflicts",
    "list_definitions",
    "lock_definitions",
    "match_key",
    "put_definition",
]

CATEGORIES = ("candlestick", "chart", "indicator")
DIRECTIONS = ("bullish", "bearish", "neutral")
TIMEFRAMES = ("1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly")
_IGNORED = re.compile(r"[\s_\-]+")
_LOCK = "tickstock_pattern_definitions"
_COLUMNS = "name, aliases, category, direction, description, timeframes, enabled"
_DEFAULTS: dict[str, Any] = {
    "aliases": [],
    "direction": "neutral",
    "description": "",
    "timeframes": list(TIMEFRAMES),
    "enabled": True,
}


def match_key(name: str) -> str:
    """What two spellings of one pattern have in common: ``Bull_Flag``, ``bull flag``, ``BULLFLAG``."""
    return _IGNORED.sub("", name).casefold()


class DefinitionError(StoreError, ValueError):
    """A definition cannot be written as given (``field`` names the part at fault)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class DefinitionConflict(StoreError):
    """Names or aliases of the definition ``name`` already name other definitions: ``conflicts`` holds
    ``(spelling, other definition)`` pairs, in the order given."""

    def __init__(self, name: str, conflicts: list[tuple[str, str]]) -> None:
        listed = ", ".join(f"{spelling!r} names {other!r}" for spelling, other in conflicts)
        super().__init__(f"pattern {name!r} cannot take names of other definitions: {listed}")
        self.name = name
        self.conflicts = conflicts


def key_conflicts(entries: Iterable[tuple[str, Iterable[str]]]) -> list[tuple[str, str, str]]:
    """``(definition, spelling, other definition)`` for every spelling whose :func:`match_key` an
    earlier entry already holds (or that is blank: then the other definition is ``""``)."""
    owners: dict[str, str] = {}
    found: list[tuple[str, str, str]] = []
    for name, aliases in entries:
        for spelling in (name, *aliases):
            key = match_key(spelling)
            owner = owners.setdefault(key, name) if key else ""
            if owner != name:
                found.append((name, spelling, owner))
    return found


async def lock_definitions(conn: psycopg.AsyncConnection[Any]) -> None:
    """Wait for every other writer of definitions to commit; held until this transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))


async def list_definitions(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every pattern definition, by category then name."""
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM pattern_definitions ORDER BY category, name")
    return await cur.fetchall()


async def put_definition(
    conn: psycopg.AsyncConnection[Any], name: str, fields: Mapping[str, Any]
) -> tuple[dict[str, Any], bool, bool]:
    """Create or change the definition ``name`` in one transaction; returns ``(the stored definition,
    created, changed)``.

    ``fields`` may hold ``aliases``, ``category``, ``direction``, ``description``, ``timeframes`` and
    ``enabled`` (checked by the caller: the table's constraints refuse the rest). A field left out keeps
    its stored value, or takes its default for a new definition (``category`` has none: a new
    definition without it raises :class:`DefinitionError`). Idempotent: the same call twice changes
    nothing the second time. Raises :class:`DefinitionConflict` when a name or alias already names
    another definition, and psycopg's errors.
    """
    async with conn.transaction():
        await lock_definitions(conn)
        rows = await (
            await conn.execute(f"SELECT {_COLUMNS} FROM pattern_definitions ORDER BY name")
        ).fetchall()
        stored = next((dict(r) for r in rows if r["name"] == name), None)
        if stored is None and "category" not in fields:
            raise DefinitionError(f"pattern {name!r} is new: it needs a category", field="category")
        wanted = {**_DEFAULTS, **(stored or {}), **fields, "name": name}
        wanted["aliases"] = list(dict.fromkeys(wanted["aliases"]))
        if any(not match_key(alias) for alias in wanted["aliases"]):
            raise DefinitionError("an alias needs a letter or a digit", field="aliases")
        others = [(r["name"], r["aliases"]) for r in rows if r["name"] != name]
        clashes = key_conflicts([*others, (name, wanted["aliases"])])
        conflicts = [(spelling, other) for owner, spelling, other in clashes if owner == name]
        if conflicts:
            raise DefinitionConflict(name, conflicts)
        if stored is not None and all(stored[k] == wanted[k] for k in stored):
            return stored, False, False
        values = [wanted[c.strip()] for c in _COLUMNS.split(",")]
        row = await (
            await conn.execute(
                f"INSERT INTO pattern_definitions AS p ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET aliases = EXCLUDED.aliases, category = EXCLUDED.category,"
                " direction = EXCLUDED.direction, description = EXCLUDED.description,"
                f" timeframes = EXCLUDED.timeframes, enabled = EXCLUDED.enabled, updated_at = now() RETURNING {_COLUMNS}",
                values,
            )
        ).fetchone()
    return dict(row or {}), stored is None, True
