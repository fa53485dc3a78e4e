"""Migrations apply in order, once, atomically, and refuse edited history."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from store.migrate import Migration, MigrationError, available_migrations, migrate


def test_shipped_migrations_are_ordered_and_unique() -> None:
    found = available_migrations()
    versions = [m.version for m in found]
    assert versions == sorted(versions) == list(range(1, len(found) + 1))
    assert {m.name for m in found} >= {"reference", "users", "pattern_events", "pattern_views"}


async def test_rerun_is_a_no_op(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        assert await migrate(conn) == []
        rows = await (await conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")).fetchall()
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in available_migrations()]


async def test_edited_migration_is_refused(pool: AsyncConnectionPool) -> None:
    first = available_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    async with pool.connection() as conn:
        with pytest.raises(MigrationError, match="0001_reference was changed after it was applied"):
            await migrate(conn, migrations=[edited])


async def test_failed_migration_rolls_back_and_is_not_recorded(pool: AsyncConnectionPool) -> None:
    bad = Migration(900, "broken", "CREATE TABLE half_done (x int); SELECT no_such_function();")
    async with pool.connection() as conn:
        with pytest.raises(MigrationError, match=r"0900_broken failed: function no_such_function\(\) does not exist"):
            await migrate(conn, migrations=[bad])
        assert await (await conn.execute("SELECT to_regclass('half_done') AS t")).fetchone() == {"t": None}
        assert await (await conn.execute("SELECT count(*) AS n FROM schema_migrations WHERE version = 900")).fetchone() == {"n": 0}


async def test_concurrent_nodes_apply_each_migration_once(pool: AsyncConnectionPool, database_url: str) -> None:
    extra = Migration(901, "counted", "CREATE TABLE counted (x int); INSERT INTO counted VALUES (1);")

    async def node() -> list[Migration]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await migrate(conn, migrations=[extra])

    results = await asyncio.gather(node(), node(), node())
    assert sorted(len(r) for r in results) == [0, 0, 1]
    async with pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) AS n FROM counted")).fetchone() == {"n": 1}
