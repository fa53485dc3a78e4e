"""One contract for the universe resolver, run over each of its forms against real PostgreSQL.

``sql`` reads PostgreSQL on every call; ``memory`` answers from the in-process directory that
:class:`store.lookups.Lookups` keeps (loaded once, dropped on ``NOTIFY``), with users' universes from
its cache. The same cases must give the same answers and the same errors on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from store.lookups import Lookups
from store.universe_resolver import (
    MY_UNIVERSE,
    MemoryResolver,
    ScanError,
    SqlResolver,
    UniverseResolver,
    UnknownSector,
    UnknownUniverse,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Universes and sectors of this module's own (the reference data is loaded too, and left alone).
ALPHA = {"ZRA", "ZRB", "ZRC"}
BETA = {"ZRC", "ZRD"}
SYMBOLS = {
    "ZRA": "Zr Alpha Sector",
    "ZRB": "Zr Alpha Sector",
    "ZRC": "Zr Beta Sector",
    "ZRD": None,
    "ZRE": None,
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(ref_pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnectionPool]:
    async with ref_pool.connection() as conn:
        for symbol, sector in SYMBOLS.items():
            await conn.execute(
                "INSERT INTO symbols (symbol, name, sector) VALUES (%s, %s, %s)",
                (symbol, f"{symbol} Inc", sector),
            )
        for key, members in (("zr-alpha", ALPHA), ("zr-beta", BETA), ("zr-empty", set())):
            await conn.execute(
                "INSERT INTO universes (key, name, kind) VALUES (%s, %s, 'custom')", (key, key)
            )
            for symbol in sorted(members):
                await conn.execute(
                    "INSERT INTO universe_members (universe, symbol) VALUES (%s, %s)", (key, symbol)
                )
        await conn.execute(
            "INSERT INTO user_universes (subject, symbols, universe_keys) VALUES "
            "('zr-carol', '{ZRE}', '{zr-beta}'), ('zr-dave', '{}', '{zr-gone,zr-alpha}'), ('zr-erin', '{}', '{}')"
        )
    yield ref_pool


@pytest_asyncio.fixture(params=["sql", "memory"], loop_scope="session")
async def resolver(
    request: pytest.FixtureRequest, world: AsyncConnectionPool, ref_database_url: str
) -> AsyncIterator[UniverseResolver]:
    sql = SqlResolver(world)
    if request.param == "sql":
        yield sql
        return

    class Refuse:
        """Fails the test if the memory form falls back to PostgreSQL (it must answer from memory)."""

        async def universe_symbols(self, keys: object, *, subject: str | None = None) -> frozenset[str]:
            raise AssertionError("the memory form asked its fallback")

        async def sector_symbols(self, sectors: object) -> frozenset[str]:
            raise AssertionError("the memory form asked its fallback")

    async with Lookups(ref_database_url, world) as lookups:
        assert lookups.listening and await lookups.directory() is not None
        yield MemoryResolver(lookups.directory, users=lookups.user_universe, fallback=Refuse())


async def test_one_key_and_a_union(resolver: UniverseResolver) -> None:
    assert await resolver.universe_symbols(["zr-alpha"]) == ALPHA
    assert await resolver.universe_symbols(["zr-alpha", "zr-beta"]) == ALPHA | BETA
    assert await resolver.universe_symbols(("zr-beta", "zr-beta")) == BETA


async def test_no_keys_and_an_empty_universe_give_nothing(resolver: UniverseResolver) -> None:
    assert await resolver.universe_symbols([]) == frozenset()
    assert await resolver.universe_symbols(["zr-empty"]) == frozenset()


async def test_reference_universes_resolve_to_their_members(
    resolver: UniverseResolver, world: AsyncConnectionPool
) -> None:
    async with world.connection() as conn:
        cur = await conn.execute("SELECT symbol FROM universe_members WHERE universe = 'dow30'")
        dow = {r["symbol"] for r in await cur.fetchall()}
    assert len(dow) == 30
    assert await resolver.universe_symbols(["dow30"]) == dow


@pytest.mark.parametrize(
    ("keys", "unknown"),
    [
        (["zr-nope"], ["zr-nope"]),
        (["zr-alpha", "zr-zz", "zr-aa"], ["zr-aa", "zr-zz"]),
        ([MY_UNIVERSE, "zr-nope"], ["zr-nope"]),
    ],
)
async def test_unknown_keys_are_all_named(
    resolver: UniverseResolver, keys: list[str], unknown: list[str]
) -> None:
    with pytest.raises(UnknownUniverse) as raised:
        await resolver.universe_symbols(keys, subject="zr-carol")
    assert raised.value.names == unknown
    assert isinstance(raised.value, ScanError) and isinstance(raised.value, ValueError)
    assert (
        raised.value.loc == "query.universe" and raised.value.msg == f"unknown universe {', '.join(unknown)}"
    )


async def test_my_universe_is_the_saved_symbols_and_the_members_of_the_saved_keys(
    resolver: UniverseResolver,
) -> None:
    assert await resolver.universe_symbols([MY_UNIVERSE], subject="zr-carol") == BETA | {"ZRE"}
    assert await resolver.universe_symbols([MY_UNIVERSE, "zr-alpha"], subject="zr-carol") == ALPHA | BETA | {
        "ZRE"
    }


async def test_a_saved_key_that_no_longer_exists_adds_nothing_and_is_not_an_error(
    resolver: UniverseResolver,
) -> None:
    assert await resolver.universe_symbols([MY_UNIVERSE], subject="zr-dave") == ALPHA


@pytest.mark.parametrize("subject", ["zr-erin", "zr-never-saved", "", None])
async def test_my_universe_without_a_saved_one_is_empty(
    resolver: UniverseResolver, subject: str | None
) -> None:
    assert await resolver.universe_symbols([MY_UNIVERSE], subject=subject) == frozenset()
    assert await resolver.universe_symbols([MY_UNIVERSE, "zr-beta"], subject=subject) == BETA


async def test_sectors_match_case_insensitively(resolver: UniverseResolver) -> None:
    assert await resolver.sector_symbols(["Zr Alpha Sector"]) == {"ZRA", "ZRB"}
    assert await resolver.sector_symbols(["ZR ALPHA SECTOR", "zr beta sector"]) == {"ZRA", "ZRB", "ZRC"}
    assert await resolver.sector_symbols([]) == frozenset()


async def test_unknown_sectors_are_all_named(resolver: UniverseResolver) -> None:
    with pytest.raises(UnknownSector) as raised:
        await resolver.sector_symbols(["Zr Alpha Sector", "Basket Weaving", "Alchemy"])
    assert raised.value.names == ["alchemy", "basket weaving"]
    assert raised.value.loc == "query.sector" and isinstance(raised.value, ScanError)


async def test_the_memory_form_falls_back_while_its_copy_cannot_be_trusted(
    world: AsyncConnectionPool,
) -> None:
    """No directory (the listener is down): the answer comes from the fallback, the SQL form."""

    async def untrusted() -> None:
        return None

    sql = SqlResolver(world)
    resolver = MemoryResolver(untrusted, users=sql.user_universe, fallback=sql)
    assert await resolver.universe_symbols([MY_UNIVERSE, "zr-alpha"], subject="zr-carol") == ALPHA | BETA | {
        "ZRE"
    }
    assert await resolver.sector_symbols(["zr beta sector"]) == {"ZRC"}
    with pytest.raises(UnknownUniverse):
        await resolver.universe_symbols(["zr-nope"])


# -- the directory's own load ------------------------------------------------------------------------


async def test_the_directory_loads_while_every_pooled_connection_is_taken(ref_database_url: str) -> None:
    """Scans ask for the directory while holding a pooled connection: its load must not need one."""
    from store.pool import open_pool
    from tests.support import within

    async with open_pool(ref_database_url, min_size=1, max_size=1, timeout_s=1) as pool:
        async with Lookups(ref_database_url, pool) as lookups, pool.connection():
            async with within(10, what="the directory loaded with the pool exhausted"):
                directory = await lookups.directory()
    assert directory is not None


async def test_a_failed_directory_load_is_tried_again(
    ref_database_url: str, world: AsyncConnectionPool
) -> None:
    import psycopg

    async with Lookups(ref_database_url, world) as lookups:
        assert lookups.listening
        lookups.forget_directory()
        lookups._url = "postgresql://nobody@127.0.0.1:1/none"  # the next load fails
        with pytest.raises(psycopg.OperationalError):
            await lookups.directory()
        lookups._url = ref_database_url
        assert await lookups.directory() is not None  # not the failed load, kept
