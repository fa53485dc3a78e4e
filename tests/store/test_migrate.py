"""Migrations apply in order, once, atomically, and refuse edited history."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from store.migrate import Migration, MigrationError, available_migrations, migrate
from tests.conftest import Servers
from tests.support import admin_url_for, database_url_for


def test_shipped_migrations_are_ordered_and_unique() -> None:
    found = available_migrations()
    versions = [m.version for m in found]
    assert versions == sorted(versions) == list(range(1, len(found) + 1))
    assert {m.name for m in found} >= {"reference", "users", "pattern_events", "pattern_views"}


async def test_rerun_is_a_no_op(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        assert await migrate(conn) == []
        rows = await (
            await conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        ).fetchall()
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
        with pytest.raises(
            MigrationError, match=r"0900_broken failed: function no_such_function\(\) does not exist"
        ):
            await migrate(conn, migrations=[bad])
        assert await (await conn.execute("SELECT to_regclass('half_done') AS t")).fetchone() == {"t": None}
        assert await (
            await conn.execute("SELECT count(*) AS n FROM schema_migrations WHERE version = 900")
        ).fetchone() == {"n": 0}


async def test_concurrent_nodes_apply_each_migration_once(
    pool: AsyncConnectionPool, database_url: str
) -> None:
    extra = Migration(901, "counted", "CREATE TABLE counted (x int); INSERT INTO counted VALUES (1);")

    async def node() -> list[Migration]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await migrate(conn, migrations=[extra])

    results = await asyncio.gather(node(), node(), node())
    assert sorted(len(r) for r in results) == [0, 0, 1]
    async with pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) AS n FROM counted")).fetchone() == {"n": 1}


@pytest.fixture
def empty_database_url(servers: Servers) -> Iterator[str]:
    """A database with nothing in it (not even ``schema_migrations``), dropped afterwards."""
    admin = admin_url_for(servers.database_url)
    name = f"t{os.getpid()}_empty_{os.urandom(4).hex()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url_for(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


NODES = 6
SMALL = [
    Migration(1, "one", "CREATE TABLE one (x int); INSERT INTO one VALUES (1);"),
    Migration(2, "two", "CREATE TABLE two (x int); INSERT INTO two VALUES (2);"),
]


@pytest.mark.parametrize("round_", range(5))
async def test_concurrent_nodes_migrate_an_empty_database(empty_database_url: str, round_: int) -> None:
    """Several nodes starting together on a database nobody migrated yet: every ``migrate()`` succeeds
    (creating ``schema_migrations`` is part of the locked section) and each migration runs once."""
    start = asyncio.Event()

    async def node() -> list[Migration]:
        async with await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True) as conn:
            await start.wait()  # all connected first, so the migrate() calls really overlap
            return await migrate(conn, migrations=SMALL)

    nodes = [asyncio.create_task(node()) for _ in range(NODES)]
    await asyncio.sleep(0)
    start.set()
    results = await asyncio.gather(*nodes, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sorted(m.version for r in results if isinstance(r, list) for m in r) == [1, 2]
    async with await psycopg.AsyncConnection.connect(empty_database_url, autocommit=True) as conn:
        rows = await (await conn.execute("SELECT version FROM schema_migrations ORDER BY version")).fetchall()
        assert [r[0] for r in rows] == [1, 2]
        counts = await (
            await conn.execute("SELECT (SELECT count(*) FROM one), (SELECT count(*) FROM two)")
        ).fetchone()
        assert counts == (1, 1)
