"""Per-user state keyed by the token subject: the user's universe, watchlists and saved scan filters.

Every query is scoped to one subject; no function reads or writes another subject's rows. Changes to
one subject's state run in a transaction under a per-subject advisory lock, so that bounds checked
there (at most so many watchlists, say) hold under concurrent requests. The caller validates values
(canonical symbols that exist, universe keys that exist); this module enforces counts and names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from store.errors import StoreError

__all__ = [
    "DuplicateName",
    "LimitExceeded",
    "UserDataError",
    "UserUniverse",
    "create_filter",
    "delete_filter",
    "delete_watchlist",
    "get_user_universe",
    "list_filters",
    "list_watchlists",
    "patch_user_universe",
    "put_watchlist",
    "replace_user_universe",
]

_LOCK_NAMESPACE = 0x75736572  # "user": first key of the per-subject advisory lock


class UserDataError(StoreError, ValueError):
    """A change to a user's state was refused; nothing was written."""


class LimitExceeded(UserDataError):
    """The change would take ``field`` (``symbols``, ``universe_keys``, ``watchlists``, ``filters``)
    beyond ``limit`` items."""

    def __init__(self, field: str, limit: int, size: int) -> None:
        super().__init__(f"{field}: at most {limit} allowed, the change would make {size}")
        self.field, self.limit, self.size = field, limit, size


class DuplicateName(UserDataError):
    """The user already has an item of that name."""


@dataclass(frozen=True)
class UserUniverse:
    """``resolved_count`` is the number of distinct directory symbols the symbols and universes cover;
    ``updated_at`` is ``None`` for a user who never set one."""

    symbols: list[str]
    universe_keys: list[str]
    resolved_count: int
    updated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbols": self.symbols,
            "universe_keys": self.universe_keys,
            "resolved_count": self.resolved_count,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


async def _lock(conn: psycopg.AsyncConnection[Any], subject: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, subject))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- the user's universe ----------------------------------------------------------------------------


async def _universe(
    conn: psycopg.AsyncConnection[Any], symbols: list[str], keys: list[str], updated_at: datetime | None
) -> UserUniverse:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM (SELECT symbol FROM symbols WHERE symbol = ANY(%s)"
        " UNION SELECT symbol FROM universe_members WHERE universe = ANY(%s)) AS covered",
        (symbols, keys),
    )
    row = await cur.fetchone()
    return UserUniverse(symbols, keys, row["n"] if row else 0, updated_at)


async def _stored_universe(
    conn: psycopg.AsyncConnection[Any], subject: str
) -> tuple[list[str], list[str], datetime | None]:
    cur = await conn.execute(
        "SELECT symbols, universe_keys, updated_at FROM user_universes WHERE subject = %s", (subject,)
    )
    row = await cur.fetchone()
    if row is None:
        return [], [], None
    return list(row["symbols"]), list(row["universe_keys"]), row["updated_at"]


async def get_user_universe(conn: psycopg.AsyncConnection[Any], subject: str) -> UserUniverse:
    """The subject's universe; an empty one (``updated_at`` ``None``) if it was never set."""
    return await _universe(conn, *await _stored_universe(conn, subject))


async def _write_universe(
    conn: psycopg.AsyncConnection[Any], subject: str, symbols: list[str], keys: list[str]
) -> UserUniverse:
    cur = await conn.execute(
        "INSERT INTO user_universes (subject, symbols, universe_keys) VALUES (%s, %s, %s)"
        " ON CONFLICT (subject) DO UPDATE SET symbols = EXCLUDED.symbols,"
        " universe_keys = EXCLUDED.universe_keys, updated_at = clock_timestamp()"
        " RETURNING updated_at",
        (subject, symbols, keys),
    )
    row = await cur.fetchone()
    return await _universe(conn, symbols, keys, row["updated_at"] if row else None)


def _bounded(symbols: list[str], keys: list[str], *, max_symbols: int, max_universes: int) -> None:
    if len(symbols) > max_symbols:
        raise LimitExceeded("symbols", max_symbols, len(symbols))
    if len(keys) > max_universes:
        raise LimitExceeded("universe_keys", max_universes, len(keys))


async def replace_user_universe(
    conn: psycopg.AsyncConnection[Any],
    subject: str,
    *,
    symbols: Sequence[str],
    universe_keys: Sequence[str],
    max_symbols: int,
    max_universes: int,
) -> tuple[UserUniverse, bool]:
    """Replace the subject's universe (duplicates dropped, order kept); returns it and whether it
    changed (an identical replacement writes nothing). Raises :class:`LimitExceeded`."""
    new_symbols, new_keys = _unique(symbols), _unique(universe_keys)
    _bounded(new_symbols, new_keys, max_symbols=max_symbols, max_universes=max_universes)
    async with conn.transaction():
        await _lock(conn, subject)
        old_symbols, old_keys, updated_at = await _stored_universe(conn, subject)
        if updated_at is not None and (old_symbols, old_keys) == (new_symbols, new_keys):
            return await _universe(conn, old_symbols, old_keys, updated_at), False
        return await _write_universe(conn, subject, new_symbols, new_keys), True


async def patch_user_universe(
    conn: psycopg.AsyncConnection[Any],
    subject: str,
    *,
    add_symbols: Sequence[str] = (),
    remove_symbols: Sequence[str] = (),
    add_universes: Sequence[str] = (),
    remove_universes: Sequence[str] = (),
    max_symbols: int,
    max_universes: int,
) -> tuple[UserUniverse, bool]:
    """Remove, then add (appended in the order given; removing an absent item is a no-op). Returns the
    universe and whether it changed. Raises :class:`LimitExceeded` if the result would be too large."""
    async with conn.transaction():
        await _lock(conn, subject)
        old_symbols, old_keys, updated_at = await _stored_universe(conn, subject)
        drop_symbols, drop_keys = set(remove_symbols), set(remove_universes)
        symbols = _unique([*(s for s in old_symbols if s not in drop_symbols), *add_symbols])
        keys = _unique([*(k for k in old_keys if k not in drop_keys), *add_universes])
        if (symbols, keys) == (old_symbols, old_keys):
            return await _universe(conn, symbols, keys, updated_at), False
        _bounded(symbols, keys, max_symbols=max_symbols, max_universes=max_universes)
        return await _write_universe(conn, subject, symbols, keys), True


# -- watchlists -------------------------------------------------------------------------------------

_WATCHLIST = "name, symbols, created_at, updated_at"


async def list_watchlists(conn: psycopg.AsyncConnection[Any], subject: str) -> list[dict[str, Any]]:
    """The subject's watchlists by name."""
    cur = await conn.execute(
        f"SELECT {_WATCHLIST} FROM user_watchlists WHERE subject = %s ORDER BY name", (subject,)
    )
    return [dict(r) for r in await cur.fetchall()]


async def put_watchlist(
    conn: psycopg.AsyncConnection[Any],
    subject: str,
    name: str,
    symbols: Sequence[str],
    *,
    max_watchlists: int,
) -> tuple[dict[str, Any], bool]:
    """Create or replace the watchlist ``name``; returns it and whether it was created. Raises
    :class:`LimitExceeded` when creating it would give the subject more than ``max_watchlists``."""
    async with conn.transaction():
        await _lock(conn, subject)
        cur = await conn.execute(
            "SELECT count(*) AS n, count(*) FILTER (WHERE name = %s) AS mine"
            " FROM user_watchlists WHERE subject = %s",
            (name, subject),
        )
        row = await cur.fetchone()
        count, exists = (row["n"], bool(row["mine"])) if row else (0, False)
        if not exists and count >= max_watchlists:
            raise LimitExceeded("watchlists", max_watchlists, count + 1)
        cur = await conn.execute(
            "INSERT INTO user_watchlists (subject, name, symbols) VALUES (%s, %s, %s)"
            " ON CONFLICT (subject, name) DO UPDATE SET symbols = EXCLUDED.symbols, updated_at = now()"
            f" RETURNING {_WATCHLIST}",
            (subject, name, _unique(symbols)),
        )
        saved = await cur.fetchone()
    return dict(saved) if saved else {}, not exists


async def delete_watchlist(conn: psycopg.AsyncConnection[Any], subject: str, name: str) -> bool:
    """Delete the subject's watchlist ``name``; ``False`` if there was none."""
    cur = await conn.execute("DELETE FROM user_watchlists WHERE subject = %s AND name = %s", (subject, name))
    return cur.rowcount > 0


# -- saved scan filters -----------------------------------------------------------------------------

_FILTER = "id, name, filter, created_at"


async def list_filters(conn: psycopg.AsyncConnection[Any], subject: str) -> list[dict[str, Any]]:
    """The subject's saved filters, oldest first."""
    cur = await conn.execute(f"SELECT {_FILTER} FROM user_filters WHERE subject = %s ORDER BY id", (subject,))
    return [dict(r) for r in await cur.fetchall()]


async def create_filter(
    conn: psycopg.AsyncConnection[Any],
    subject: str,
    name: str,
    filter: dict[str, Any],
    *,
    max_filters: int,
) -> dict[str, Any]:
    """Save a filter and return it with its id. Raises :class:`DuplicateName` if the subject has one
    of that name, :class:`LimitExceeded` beyond ``max_filters``."""
    async with conn.transaction():
        await _lock(conn, subject)
        cur = await conn.execute(
            "SELECT count(*) AS n, count(*) FILTER (WHERE name = %s) AS same"
            " FROM user_filters WHERE subject = %s",
            (name, subject),
        )
        row = await cur.fetchone()
        count, same = (row["n"], row["same"]) if row else (0, 0)
        if same:
            raise DuplicateName(f"a filter named {name!r} exists already")
        if count >= max_filters:
            raise LimitExceeded("filters", max_filters, count + 1)
        cur = await conn.execute(
            f"INSERT INTO user_filters (subject, name, filter) VALUES (%s, %s, %s) RETURNING {_FILTER}",
            (subject, name, Jsonb(filter)),
        )
        saved = await cur.fetchone()
    return dict(saved) if saved else {}


async def delete_filter(conn: psycopg.AsyncConnection[Any], subject: str, filter_id: int) -> bool:
    """Delete the subject's filter ``filter_id``; ``False`` if the subject has no such filter."""
    cur = await conn.execute("DELETE FROM user_filters WHERE subject = %s AND id = %s", (subject, filter_id))
    return cur.rowcount > 0
