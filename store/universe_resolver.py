"""One universe resolver: universe keys and sectors -> symbol sets, in two forms behind one interface.

:class:`UniverseResolver` is what scans (``store.scans.resolve_symbols``) and the websocket fan-out
ask. :class:`SqlResolver` reads PostgreSQL on every call; :class:`MemoryResolver` answers from the
in-process :class:`Directory` (kept by :class:`store.lookups.Lookups`, dropped on every change) and asks
its fallback while that copy cannot be trusted. Both answer the same questions the same way, and one
contract test (``tests/store/test_universe_resolver.py``) runs over both.

The contract:

- ``universe_symbols(keys, subject=...)`` is the union of the members of ``keys``. The key ``my``
  (:data:`MY_UNIVERSE`) stands for ``subject``'s saved universe: its own symbols plus the members of
  its saved universe keys (a saved key that no longer names a universe adds nothing); nothing when
  ``subject`` is ``None`` or saved none. Any other key that names no universe raises
  :class:`UnknownUniverse` listing every such key, sorted.
- ``sector_symbols(sectors)`` is the union of the symbols whose ``sector`` matches one of ``sectors``
  case-insensitively; a sector no symbol has raises :class:`UnknownSector` listing them, sorted.
- Both raise psycopg's errors when PostgreSQL must be read and cannot be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = [
    "MY_UNIVERSE",
    "Directory",
    "MemoryResolver",
    "MyUniverse",
    "ScanError",
    "SqlResolver",
    "UniverseResolver",
    "UnknownSector",
    "UnknownUniverse",
    "load_directory",
]

MY_UNIVERSE = "my"


class ScanError(ValueError):
    """A filter names something that does not exist; ``loc`` is the query parameter (``query.universe``)."""

    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


class UnknownUniverse(ScanError):
    """Universe keys that name no universe; ``names`` lists them, sorted."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = sorted(names)
        super().__init__("query.universe", f"unknown universe {', '.join(self.names)}")


class UnknownSector(ScanError):
    """Sectors no symbol has (lower-cased); ``names`` lists them, sorted."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = sorted(names)
        super().__init__("query.sector", f"unknown sector {', '.join(self.names)}")


@dataclass(frozen=True)
class MyUniverse:
    """A user's saved universe: its own symbols and universe keys (both empty when none is saved)."""

    symbols: tuple[str, ...] = ()
    universe_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Directory:
    """Universe key -> members, and lower-cased sector -> (sector, its symbols)."""

    universes: dict[str, frozenset[str]]
    sectors: dict[str, tuple[str, frozenset[str]]]


class UniverseResolver(Protocol):
    """Universe keys and sectors to symbol sets (the contract is in the module docstring)."""

    async def universe_symbols(
        self, keys: Collection[str], *, subject: str | None = None
    ) -> frozenset[str]: ...

    async def sector_symbols(self, sectors: Collection[str]) -> frozenset[str]: ...


def _named(keys: Collection[str]) -> list[str]:
    return sorted(set(keys) - {MY_UNIVERSE})


async def load_directory(conn: psycopg.AsyncConnection[Any]) -> Directory:
    """Every universe with its members and every sector with its symbols (three reads)."""
    members: dict[str, set[str]] = {
        r["key"]: set() for r in await (await conn.execute("SELECT key FROM universes")).fetchall()
    }
    for r in await (await conn.execute("SELECT universe, symbol FROM universe_members")).fetchall():
        members.setdefault(r["universe"], set()).add(r["symbol"])
    sectors: dict[str, tuple[str, set[str]]] = {}
    for r in await (
        await conn.execute("SELECT sector, symbol FROM symbols WHERE sector IS NOT NULL")
    ).fetchall():
        sectors.setdefault(r["sector"].lower(), (r["sector"], set()))[1].add(r["symbol"])
    return Directory(
        {k: frozenset(v) for k, v in members.items()},
        {k: (name, frozenset(v)) for k, (name, v) in sectors.items()},
    )


class SqlResolver:
    """The SQL form: every call reads PostgreSQL through a connection from ``pool`` (or, built with
    :meth:`over`, through one connection the caller holds)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._connection: Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]] = (
            pool.connection
        )

    @classmethod
    def over(cls, conn: psycopg.AsyncConnection[Any]) -> SqlResolver:
        """A resolver that reads through ``conn`` (the caller owns it and keeps it open meanwhile)."""

        @asynccontextmanager
        async def lend() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
            yield conn

        resolver = cls.__new__(cls)
        resolver._connection = lend
        return resolver

    async def user_universe(self, subject: str) -> MyUniverse:
        """``subject``'s saved universe, read now (empty when none is saved)."""
        async with self._connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT symbols, universe_keys FROM user_universes WHERE subject = %s", (subject,)
                )
            ).fetchone()
        return MyUniverse() if row is None else MyUniverse(tuple(row["symbols"]), tuple(row["universe_keys"]))

    async def universe_symbols(self, keys: Collection[str], *, subject: str | None = None) -> frozenset[str]:
        named = _named(keys)
        if not named and MY_UNIVERSE not in keys:
            return frozenset()
        async with self._connection() as conn:
            found = {
                r["key"]
                for r in await (
                    await conn.execute("SELECT key FROM universes WHERE key = ANY(%s)", (named,))
                ).fetchall()
            }
            unknown = [k for k in named if k not in found]
            if unknown:
                raise UnknownUniverse(unknown)
            members: set[str] = set()
            if MY_UNIVERSE in keys and subject is not None:
                row = await (
                    await conn.execute(
                        "SELECT symbols, universe_keys FROM user_universes WHERE subject = %s", (subject,)
                    )
                ).fetchone()
                if row is not None:
                    members.update(row["symbols"])
                    named.extend(row["universe_keys"])
            cur = await conn.execute(
                "SELECT DISTINCT symbol FROM universe_members WHERE universe = ANY(%s)", (named,)
            )
            members.update(r["symbol"] for r in await cur.fetchall())
        return frozenset(members)

    async def sector_symbols(self, sectors: Collection[str]) -> frozenset[str]:
        wanted = sorted({s.casefold() for s in sectors})
        if not wanted:
            return frozenset()
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT sector FROM symbols WHERE sector IS NOT NULL AND lower(sector) = ANY(%s)",
                (wanted,),
            )
            names = [r["sector"] for r in await cur.fetchall()]
            unknown = set(wanted) - {s.casefold() for s in names}
            if unknown:
                raise UnknownSector(unknown)
            cur = await conn.execute("SELECT symbol FROM symbols WHERE sector = ANY(%s)", (names,))
            return frozenset(r["symbol"] for r in await cur.fetchall())


class MemoryResolver:
    """The in-memory form: answers from ``directory()`` (the in-process copy, or ``None`` while it
    cannot be trusted, and then ``fallback`` answers); users' universes come from ``users``.

    ``users`` decides how fresh a saved universe is: the scan route passes the cached copy kept by
    :class:`store.lookups.Lookups` (dropped on every change notice); the fan-out reads PostgreSQL, since
    it re-resolves on that very notice and may hear it before the cache drops its copy.
    """

    def __init__(
        self,
        directory: Callable[[], Awaitable[Directory | None]],
        *,
        users: Callable[[str], Awaitable[MyUniverse]],
        fallback: UniverseResolver,
    ) -> None:
        self._directory = directory
        self._users = users
        self._fallback = fallback

    async def universe_symbols(self, keys: Collection[str], *, subject: str | None = None) -> frozenset[str]:
        directory = await self._directory()
        if directory is None:
            return await self._fallback.universe_symbols(keys, subject=subject)
        named = _named(keys)
        unknown = [k for k in named if k not in directory.universes]
        if unknown:
            raise UnknownUniverse(unknown)
        members: set[str] = set()
        if MY_UNIVERSE in keys and subject is not None:
            mine = await self._users(subject)
            members.update(mine.symbols)
            named.extend(mine.universe_keys)
        for key in named:
            members.update(directory.universes.get(key, ()))
        return frozenset(members)

    async def sector_symbols(self, sectors: Collection[str]) -> frozenset[str]:
        directory = await self._directory()
        if directory is None:
            return await self._fallback.sector_symbols(sectors)
        wanted = sorted({s.casefold() for s in sectors})
        unknown = [s for s in wanted if s not in directory.sectors]
        if unknown:
            raise UnknownSector(unknown)
        return frozenset().union(*(directory.sectors[s][1] for s in wanted))
