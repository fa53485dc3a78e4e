"""Ordered SQL migrations, recorded in the database.

Migrations are the files ``store/migrations/NNNN_name.sql``, applied in version order, each in its own
transaction, under an advisory lock so that several hub nodes starting together apply each once.
Re-running is a no-op. An applied migration whose file changed since is an error, never silently
re-applied.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from .errors import StoreError

__all__ = ["Migration", "MigrationError", "available_migrations", "migrate"]

log = logging.getLogger("tickstock.store.migrate")

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x7469636B  # "tick"


class MigrationError(StoreError):
    """A migration failed, or the recorded history does not match the files.

    Deliberately not a psycopg ``OperationalError``: an edited migration or a failing statement will
    fail again, so nothing should treat it as transient and retry."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order."""
    found = []
    for entry in resources.files("store.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


async def migrate(
    conn: psycopg.AsyncConnection[Any], *, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply the pending migrations on ``conn`` (autocommit connection); return those applied.

    Waits for other nodes migrating the same database (advisory lock). Raises :class:`MigrationError`
    if a migration fails (its transaction is rolled back) or an applied one was edited.
    """
    todo = available_migrations() if migrations is None else migrations
    applied: list[Migration] = []
    # The lock comes first: two sessions running CREATE TABLE IF NOT EXISTS at once on an empty
    # database can both miss the table and one fails on the catalog's unique index.
    await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute("SELECT version, checksum FROM schema_migrations")
            done: dict[int, str] = dict(await cur.fetchall())
        for migration in todo:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was applied"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {str(exc).strip()}"
                ) from exc
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
