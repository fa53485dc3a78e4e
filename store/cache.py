"""The response cache in Redis: generations, single flight, circuit breaker.

The Redis connection it runs on is opened by :mod:`store.cache_connection`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from store.breaker import Breaker
from store.cache_entries import Computed, Dependencies, Flight, Outcome, Served

__all__ = ["Computed", "Dependencies", "Outcome", "ResponseCache", "Served"]

T = TypeVar("T")

log = logging.getLogger("tickstock.store.cache")

KEY_PREFIX = "tickstock:cache:"
EPOCH_KEY = KEY_PREFIX + "epoch"
GEN_PREFIX = KEY_PREFIX + "gen:"
ENTRY_PREFIX = KEY_PREFIX + "entry:"
LOCK_PREFIX = KEY_PREFIX + "lock:"
DEFAULT_STALENESS_S = 1.0
DEFAULT_TIMEOUT_S = 0.15
REFRESH_AFTER = 0.3  # of the staleness bound: a hit older than this, on changed data, refreshes ahead
MAX_PENDING = 10_000  # lost generation names kept for replay; beyond, a new epoch is needed
DEFAULT_LOCK_S = 2.0
DEFAULT_LOCK_WAIT_S = 0.2
LOCK_POLL_S = 0.01
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class ResponseCache:
    """Cache-aside of response bodies in Redis, invalidated by generation, never by listing keys.

    Every entry records the wall time its generations were read (before the database was asked) and
    their values. A lookup reads the entry and the current generations in one ``MGET``; the entry is
    served while the epoch and the strict generations are unchanged and either the event generations
    are unchanged or less than ``staleness_s`` has passed since they were read. So an event committed
    at T (its generation bumped right after) is in every body served after T + ``staleness_s``; see
    docs/cache.md for the argument, and for bumps that never reach Redis (they change the epoch).

    Concurrent misses of one key on this node compute once (the others wait for that result); across
    nodes the first takes a short Redis lock and the others poll for its entry up to
    ``lock_wait_s``, then compute themselves. Every Redis call has ``timeout_s``; failures feed a
    :class:`~store.breaker.Breaker`, and while it is open every request is computed (from
    PostgreSQL). When the breaker closes again the epoch is changed first, since bumps may have been
    lost meanwhile. Nothing here raises because of Redis: ``compute``'s own errors propagate.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        staleness_s: float = DEFAULT_STALENESS_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        breaker: Breaker | None = None,
        lock_s: float = DEFAULT_LOCK_S,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
        on_lost: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._redis = redis
        self.staleness_s = staleness_s
        self.timeout_s = timeout_s
        self.breaker = breaker or Breaker()
        self._lock_ms = int(lock_s * 1000)
        self._lock_wait_s = lock_wait_s
        self._on_lost = on_lost
        self._flights: dict[str, Flight] = {}
        self._lost = 0  # bumps that did not reach Redis, counted
        self._covered = 0  # the value of _lost the last successful replay or new epoch covered
        self._pending: set[str] = set()  # their generation names, replayed when Redis answers
        self._overflow = False  # too many to keep: a new epoch instead
        self._renewing = False
        self._refreshing: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count()
        self._node = os.urandom(4).hex()
        self.lost_bumps = 0
        self.refreshes = 0

    # -- state ---------------------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Some bump may not have reached Redis and no new epoch has covered it yet."""
        return self._lost != self._covered

    @property
    def healthy(self) -> bool:
        return not self.dirty and self.breaker.state == "closed"

    def _token(self) -> str:
        return f"{time.time_ns():x}.{self._node}.{next(self._tokens)}"

    async def _call(self, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, self.timeout_s)

    def _failed(self) -> None:
        was = self.breaker.state
        self.breaker.failed()
        if was == "closed" and self.breaker.state != "closed":
            log.warning(
                "cache: Redis failing; serving from PostgreSQL, probing every %.1f s", self.breaker.reset_s
            )
            # Idle pooled connections may point at a server that is gone: each would fail once after
            # it comes back, one probe at a time. Drop them now.
            task = asyncio.ensure_future(self._drop_idle())
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)

    async def _drop_idle(self) -> None:
        try:
            await self._redis.connection_pool.disconnect(inuse_connections=False)
        except REDIS_ERRORS as exc:
            log.debug("cache: dropping idle connections failed: %r", exc)

    async def new_epoch(self) -> bool:
        """Invalidate every entry on every node (one ``SET``). True when Redis took it."""
        covering = self._lost
        try:
            await self._call(self._redis.set(EPOCH_KEY, self._token()))
        except REDIS_ERRORS as exc:
            log.debug("cache: new epoch not set: %r", exc)
            self._failed()
            return False
        self.breaker.succeeded()
        if covering == self._lost:
            self._pending.clear()
            self._overflow = False
        self._covered = covering
        return True

    async def _replay(self) -> bool:
        """Apply the bumps that did not reach Redis (or a new epoch if too many were lost)."""
        if self._overflow:
            return await self.new_epoch()
        covering, names = self._lost, sorted(self._pending)
        try:
            for attempt in (1, 2):  # a connection from before an outage fails once, then is replaced
                try:
                    if names:
                        await self._call(
                            self._redis.mset(dict.fromkeys((GEN_PREFIX + n for n in names), self._token()))
                        )
                    else:
                        await self._call(self._redis.ping())
                    break
                except (RedisConnectionError, OSError):
                    if attempt == 2:
                        raise
        except REDIS_ERRORS as exc:
            log.debug("cache: replay failed: %r", exc)
            self._failed()
            return False
        self.breaker.succeeded()
        if covering == self._lost:  # nothing lost meanwhile (else the next call replays again)
            self._pending.clear()
        self._covered = covering
        return True

    async def _usable(self) -> bool:
        if self.healthy:
            return True
        if self._renewing or not self.breaker.allow():
            return False
        self._renewing = True
        ok = False
        try:
            ok = await self._replay()
        finally:
            self._renewing = False
            if not ok and self.breaker.probing:  # cancelled mid-probe: open again, probe later
                self.breaker.failed()
        if ok and not self.dirty:
            log.info("cache: Redis answers again; lost bumps replayed, serving from the cache")
        return ok and not self.dirty

    # -- the writer's side ------------------------------------------------------------------------------
    def lose(self, names: Iterable[str], *, announce: bool = True) -> None:
        """Record generations whose bump cannot reach Redis: this node bypasses the cache until they
        are replayed (or a new epoch is set), and ``on_lost`` tells the other nodes, which bump them
        from their side."""
        names = list(names)
        self._lost += 1
        self.lost_bumps += 1
        self._pending.update(names)
        if len(self._pending) > MAX_PENDING:
            self._pending.clear()
            self._overflow = True
        if announce and self._on_lost is not None:
            self._on_lost(names)

    async def bump(self, names: Iterable[str], *, announce: bool = True) -> bool:
        """Give each generation in ``names`` a new value (one ``MSET``). Never raises and never waits
        longer than the timeout; a bump that fails (or is skipped because the breaker is open) is
        :meth:`lose`-t (and announced, unless ``announce`` is false). True when Redis took it."""
        names = sorted(set(names))
        if not names:
            return True
        if self.breaker.state != "closed":
            self.lose(names, announce=announce)
            return False
        token = self._token()
        try:
            await self._call(self._redis.mset(dict.fromkeys((GEN_PREFIX + n for n in names), token)))
        except REDIS_ERRORS as exc:
            log.warning("cache: generation bump failed (%r); replayed when Redis answers", exc)
            self._failed()
            self.lose(names, announce=announce)
            return False
        self.breaker.succeeded()
        return True

    # -- the reader's side ------------------------------------------------------------------------------
    def _valid(self, entry: bytes, generations: list[str], deps: Dependencies) -> tuple[Served, float] | None:
        """The entry as served, and the wall time its generations were read when it is valid only
        because the bound has not passed yet (0.0 when its generations are current)."""
        head, _, body = entry.partition(b"\n")
        try:
            meta = json.loads(head)
            stored, read_at, computed_at = meta["g"], float(meta["r"]), float(meta["c"])
            expires = float(meta.get("e", 0.0))  # entries from before "e" are not reused in process
        except (ValueError, KeyError, TypeError):
            return None
        strict = 1 + len(deps.strict)
        now = time.time()
        if len(stored) != len(generations) or stored[:strict] != generations[:strict]:
            return None
        changed = stored[strict:] != generations[strict:]
        if changed and now >= read_at + self.staleness_s:
            return None
        # Valid only by the bound: reusable until refreshing ahead is due, so hits keep reaching Redis then.
        reusable = min(expires, read_at + REFRESH_AFTER * self.staleness_s) if changed else expires
        return Served(body, "hit", max(0.0, now - computed_at), reusable), read_at if changed else 0.0

    async def _read(
        self, entry_key: str, names: list[str], deps: Dependencies
    ) -> tuple[tuple[Served, float] | None, list[str]]:
        values = await self._call(self._redis.mget([entry_key, *names]))
        generations = [v.decode() if isinstance(v, bytes) else (v or "") for v in values[1:]]
        entry = values[0]
        return (self._valid(entry, generations, deps) if isinstance(entry, bytes) else None), generations

    async def fetch(
        self, route: str, key: str, deps: Dependencies, compute: Callable[[], Awaitable[Computed]]
    ) -> Served:
        """The body for ``key`` (a digest of the normalised request) of ``route``: from Redis when a
        valid entry is there, else from ``compute`` (stored for its ``ttl_s``)."""
        entry_key = f"{ENTRY_PREFIX}{route}:{key}"
        flight = self._flights.get(entry_key)
        if flight is not None and time.time() < flight.read_at + self.staleness_s:
            served = await asyncio.shield(flight.future)
            return Served(served.body, "coalesced", None)
        if not await self._usable():
            return await self._alone(entry_key, compute)
        names = [EPOCH_KEY, *(GEN_PREFIX + n for n in deps.strict), *(GEN_PREFIX + n for n in deps.events)]
        read_at = time.time()  # before the generations are read, so before the database is asked
        try:
            found, generations = await self._read(entry_key, names, deps)
        except REDIS_ERRORS as exc:
            log.debug("cache: read failed: %r", exc)
            self._failed()
            return Served((await compute()).body, "bypass", None)
        self.breaker.succeeded()
        if found is not None:
            served, graced_since = found
            if graced_since and read_at - graced_since > REFRESH_AFTER * self.staleness_s:
                self._refresh_ahead(route, key, entry_key, names, deps, compute, read_at, generations)
            return served
        # Identical requests that arrived together all read a miss; the first back leads, the rest
        # join its flight instead of each taking the Redis lock and waiting (or computing) alone.
        flight = self._flights.get(entry_key)
        if flight is not None and time.time() < flight.read_at + self.staleness_s:
            joined = await asyncio.shield(flight.future)
            return Served(joined.body, "coalesced", None)
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._flights[entry_key] = Flight(future, read_at)
        try:
            served = await self._lead(route, key, entry_key, names, deps, compute, read_at, generations)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" noise when nobody waited
            raise
        else:
            future.set_result(served)
            return served
        finally:
            if self._flights.get(entry_key) is not None and self._flights[entry_key].future is future:
                del self._flights[entry_key]

    async def _alone(self, entry_key: str, compute: Callable[[], Awaitable[Computed]]) -> Served:
        """Compute without Redis; identical requests arriving meanwhile on this node wait for it."""
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._flights[entry_key] = Flight(future, time.time())
        try:
            served = Served((await compute()).body, "bypass", None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            future.set_result(served)
            return served
        finally:
            if self._flights.get(entry_key) is not None and self._flights[entry_key].future is future:
                del self._flights[entry_key]

    async def _lead(
        self,
        route: str,
        key: str,
        entry_key: str,
        names: list[str],
        deps: Dependencies,
        compute: Callable[[], Awaitable[Computed]],
        read_at: float,
        generations: list[str],
    ) -> Served:
        lock_key = f"{LOCK_PREFIX}{route}:{key}"
        try:
            locked = await self._call(self._redis.set(lock_key, self._node, nx=True, px=self._lock_ms))
            if not locked:  # another node computes it: wait a little for its entry
                deadline = time.monotonic() + self._lock_wait_s
                while time.monotonic() < deadline:
                    await asyncio.sleep(LOCK_POLL_S)
                    found, _ = await self._read(entry_key, names, deps)
                    if found is not None:
                        return Served(found[0].body, "coalesced", found[0].age_s)
        except REDIS_ERRORS as exc:
            log.debug("cache: lock failed: %r", exc)
            self._failed()
            return Served((await compute()).body, "bypass", None)
        computed = await compute()
        expires = time.time() + computed.ttl_s if computed.ttl_s > 0 else 0.0
        if computed.ttl_s > 0:
            head = json.dumps(
                {"r": read_at, "c": time.time(), "g": generations, "e": expires}, separators=(",", ":")
            ).encode()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(entry_key, head + b"\n" + computed.body, px=max(1, int(computed.ttl_s * 1000)))
                    pipe.delete(lock_key)
                    await self._call(pipe.execute())
            except REDIS_ERRORS as exc:
                log.debug("cache: store failed: %r", exc)
                self._failed()
        return Served(computed.body, "miss", None, expires)

    def _refresh_ahead(
        self,
        route: str,
        key: str,
        entry_key: str,
        names: list[str],
        deps: Dependencies,
        compute: Callable[[], Awaitable[Computed]],
        read_at: float,
        generations: list[str],
    ) -> None:
        """Recompute a popular entry in the background while it is still valid (only by the bound),
        so that requests keep hitting; concurrent misses of the key wait for this computation."""
        if entry_key in self._flights:
            return
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._flights[entry_key] = Flight(future, read_at)

        async def refresh() -> None:
            try:
                served = await self._lead(route, key, entry_key, names, deps, compute, read_at, generations)
            except Exception as exc:
                future.set_exception(exc)
                future.exception()
                log.debug("cache: refresh of %s failed: %r", entry_key, exc)
            else:
                future.set_result(served)
                self.refreshes += 1
            finally:
                if self._flights.get(entry_key) is not None and self._flights[entry_key].future is future:
                    del self._flights[entry_key]

        task = asyncio.create_task(refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def aclose(self) -> None:
        """Cancel and await the refreshes in flight."""
        for task in list(self._refreshing):
            task.cancel()
        await asyncio.gather(*self._refreshing, return_exceptions=True)
