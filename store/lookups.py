"""In-process copies of what every scan resolves: universe members, sectors, users' universes.

The directory (universes and sectors) is loaded whole, once, and dropped when PostgreSQL announces a
change (``NOTIFY tickstock_reference``, sent by triggers on ``symbols``, ``universes`` and
``universe_members``, so a change from any node or from ``tickstock load-reference-data`` counts).
While the listening connection is down the copy is not trusted and callers read PostgreSQL. The same
channel announces changes to ``pattern_definitions`` (payload ``pattern_definitions``): those leave
the directory alone and call ``on_definitions`` (the hub reloads its pattern catalog).
Users' universes are kept per subject and dropped by :meth:`Lookups.forget_user` (the hub calls it
on ``tickstock.users.universe.changed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType

import psycopg
from psycopg_pool import AsyncConnectionPool

from store.universe_resolver import Directory, MyUniverse, load_directory
from store.users import get_user_universe

# Directory, MyUniverse and load_directory live in store.universe_resolver (with the resolvers that
# read them); they stay importable from here.
__all__ = ["DEFINITIONS_NOTICE", "REFERENCE_CHANNEL", "Directory", "Lookups", "MyUniverse", "load_directory"]

log = logging.getLogger("tickstock.store.lookups")

REFERENCE_CHANNEL = "tickstock_reference"
DEFINITIONS_NOTICE = "pattern_definitions"  # the payload: the table that changed
DEFAULT_USERS = 10_000
LISTEN_CHECK_S = 5.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
CONNECT_TIMEOUT_S = 5


class Lookups:
    """Owns the listening connection (from ``__aenter__`` to ``__aexit__``) and the copies.

    ``on_change`` is called (without arguments) whenever the directory is dropped, including when the
    listener (re)connects, since notices may have been missed while it was away, and when the pattern
    definitions change. ``on_definitions`` is called when the pattern definitions change and when the
    listener (re)connects. Both must return at once (schedule work, do not do it).
    """

    def __init__(
        self,
        database_url: str,
        pool: AsyncConnectionPool,
        *,
        on_change: Callable[[], None] | None = None,
        on_definitions: Callable[[], None] | None = None,
        max_users: int = DEFAULT_USERS,
    ) -> None:
        self._on_definitions = on_definitions
        self._url = database_url
        self._pool = pool
        self._on_change = on_change
        self._max_users = max_users
        self._directory: Directory | None = None
        self._loading: asyncio.Task[Directory] | None = None
        self._version = 0
        self._users: OrderedDict[str, MyUniverse] = OrderedDict()
        self._user_versions: dict[str, int] = {}
        self._users_version = 0
        self.listening = False
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    # -- the directory ------------------------------------------------------------------------------
    def forget_directory(self) -> None:
        self._version += 1
        self._directory = None
        self._loading = None
        if self._on_change is not None:
            self._on_change()

    async def directory(self) -> Directory | None:
        """The in-process directory (loaded once, shared by concurrent callers), or ``None`` while
        changes cannot be heard (the caller then asks PostgreSQL). Raises psycopg's errors."""
        if not self.listening:
            return None
        if self._directory is not None:
            return self._directory
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(self._version))
        return await asyncio.shield(self._loading)

    async def _load(self, version: int) -> Directory:
        async with self._pool.connection() as conn:
            loaded = await load_directory(conn)
        if version == self._version and self.listening:
            self._directory = loaded  # unless a change arrived meanwhile: then the next caller reloads
        return loaded

    # -- users' universes ---------------------------------------------------------------------------
    def forget_user(self, subject: str) -> None:
        self._users.pop(subject, None)
        self._user_versions[subject] = self._user_versions.get(subject, 0) + 1
        if len(self._user_versions) > self._max_users:
            self._user_versions.clear()
            self.forget_users()

    def forget_users(self) -> None:
        self._users.clear()
        self._users_version += 1

    async def user_universe(self, subject: str) -> MyUniverse:
        """``subject``'s saved universe, from memory or PostgreSQL. Raises psycopg's errors."""
        found = self._users.get(subject)
        if found is not None:
            self._users.move_to_end(subject)
            return found
        versions = (self._users_version, self._user_versions.get(subject, 0))
        async with self._pool.connection() as conn:
            saved = await get_user_universe(conn, subject)
        found = MyUniverse(tuple(saved.symbols), tuple(saved.universe_keys))
        if versions == (self._users_version, self._user_versions.get(subject, 0)):
            self._users[subject] = found
            while len(self._users) > self._max_users:
                self._users.popitem(last=False)
        return found

    def _definitions_changed(self) -> None:
        if self._on_definitions is not None:
            self._on_definitions()

    # -- the listener -------------------------------------------------------------------------------
    async def _listen(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
                async with conn:
                    await conn.execute(f"LISTEN {REFERENCE_CHANNEL}")
                    self.listening = True
                    self.forget_directory()
                    self._definitions_changed()
                    self._connected.set()
                    delay = RETRY_MIN_S
                    while True:
                        async for notice in conn.notifies(timeout=LISTEN_CHECK_S):
                            log.debug("reference data changed (%s)", notice.payload)
                            if notice.payload == DEFINITIONS_NOTICE:
                                self._definitions_changed()
                                if self._on_change is not None:
                                    self._on_change()
                            else:
                                self.forget_directory()
                        await conn.execute("SELECT 1")  # a dead link shows here
            except (psycopg.Error, OSError) as exc:
                if self.listening:
                    log.warning(
                        "reference listener lost PostgreSQL (%s); reading reference data from it "
                        "until it is back",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    )
            self.listening = False
            self.forget_directory()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def __aenter__(self) -> Lookups:
        self._task = asyncio.create_task(self._listen(), name="tickstock-reference-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_S)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.listening = False
