"""The hub's caches in one place: responses in Redis with hot copies in process, reference data and users'
universes in process.

:class:`HubCache` is opened by the lifespan after Redis and NATS and handed to the routes (through
``HubState.cache``) and to the writer (``events_stored``, called once a batch is committed). See
``docs/cache.md`` for the design and its staleness argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import psycopg
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from psycopg_pool import AsyncConnectionPool

from api.cache_metrics import ROUTES, Ratio, Window
from api.settings import Settings
from hub.catalog import CatalogCache
from hub.metrics import Counter, Gauge, Metrics
from hub.model import PatternEvent
from hub.subjects import CACHE_BUMPED_SUBJECT, CACHE_LOST_SUBJECT, UNIVERSE_CHANGED_SUBJECT
from store.breaker import Breaker
from store.cache import Computed, Dependencies, Outcome, ResponseCache, Served
from store.cache_entries import Source
from store.cache_local import Copy, LocalCopies
from store.lookups import Directory, Lookups, MyUniverse
from store.universe_resolver import MemoryResolver, SqlResolver

__all__ = [
    "REFERENCE_GENERATION",
    "ROUTES",
    "HubCache",
    "digest",
    "dumps",
    "event_generations",
    "serve",
]

log = logging.getLogger("tickstock.cache")

# Published by a node whose generation bump did not reach Redis: every node that hears it starts a
# new epoch (if it can reach Redis), so the entries that bump should have invalidated die at once.
REFERENCE_GENERATION = "ref"


def dumps(value: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` renders it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def digest(value: Any) -> str:
    """A short stable key for a normalised request (a JSON-able value)."""
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:40]


def event_generations(events: Iterable[PatternEvent]) -> set[str]:
    """The generations a stored event changes: its timeframe, and its timeframe and month."""
    names: set[str] = set()
    for e in events:
        names.add(e.timeframe)
        names.add(f"{e.timeframe}:{e.detected_at:%Y%m}")
    return names


class HubCache:
    """Opens the reference listener and the NATS subscriptions on enter, closes them on exit.

    With ``settings.cache_enabled`` false every read is computed (and counted as ``bypass``). When
    PostgreSQL announces a change to the pattern definitions, ``catalog`` is reloaded (one load at a
    time; a change heard during a load makes one more).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        redis: aioredis.Redis,
        pool: AsyncConnectionPool,
        nats: NATS,
        metrics: Metrics,
        catalog: CatalogCache | None = None,
    ) -> None:
        self.enabled = settings.cache_enabled
        self._catalog = catalog
        self._catalog_task: asyncio.Task[None] | None = None
        self._catalog_stale = False
        self.settings = settings
        self._nats = nats
        self._pool = pool
        self.responses = ResponseCache(
            redis,
            staleness_s=settings.cache_staleness_ms / 1000,
            timeout_s=settings.cache_timeout_ms / 1000,
            breaker=Breaker(
                failures=settings.cache_breaker_failures, reset_s=settings.cache_breaker_reset_ms / 1000
            ),
            on_lost=self._announce_lost,
        )
        # Hot answers in process, in front of Redis; dropped by the notices that bump their generations.
        self.local = LocalCopies(
            max_entries=settings.cache_local_entries, max_age_s=settings.cache_local_max_age_ms / 1000
        )
        self.lookups = Lookups(
            settings.database_url or "",
            pool,
            on_change=self._reference_changed,
            on_definitions=self._definitions_changed,
        )
        # The scans' resolver: the in-process directory and users' universes, PostgreSQL while the
        # directory cannot be trusted.
        self.resolver = MemoryResolver(
            self.lookups.directory, users=self.user_universe, fallback=SqlResolver(pool)
        )
        r = metrics.registry
        self.requests = r.add(
            Counter(
                "tickstock_cache_requests_total",
                "Cacheable requests by route and result (hit, miss, coalesced, bypass).",
            )
        )
        r.add(
            Ratio(
                "tickstock_cache_hit_ratio",
                "Hits / all cacheable requests per route since start (no sample before the first request).",
                self.requests,
            )
        )
        r.add(
            Gauge(
                "tickstock_cache_breaker_open",
                "1 while the Redis circuit breaker is open.",
                read=lambda: 0.0 if self.responses.breaker.state == "closed" else 1.0,
                multiprocess_mode="livemax",  # open in any worker
            )
        )
        self.lost = r.add(
            Counter(
                "tickstock_cache_lost_bumps_total",
                "Generation bumps that did not reach Redis (each starts a new epoch).",
            )
        )
        self._windows = {route: Window() for route in ROUTES}
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnects = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    async def __aenter__(self) -> HubCache:
        await self.lookups.__aenter__()
        try:
            self._subscriptions = [
                await self._nats.subscribe(UNIVERSE_CHANGED_SUBJECT, cb=self._user_changed),
                await self._nats.subscribe(CACHE_LOST_SUBJECT, cb=self._lost_elsewhere),
                await self._nats.subscribe(CACHE_BUMPED_SUBJECT, cb=self._bumped_elsewhere),
            ]
            self._reconnects = self._nats.stats.get("reconnects", 0)
            # Whatever Redis holds may predate events stored while no hub ran (or a restore).
            if self.enabled:
                await self.responses.new_epoch()
        except BaseException:
            await self.lookups.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sub in self._subscriptions:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.responses.aclose()
        await self.lookups.__aexit__(exc_type, exc, tb)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- invalidation -------------------------------------------------------------------------------
    async def events_stored(self, events: Sequence[PatternEvent]) -> None:
        """The writer's hook, after a batch commits: bump the generations the events touch. Waits at
        most ``cache_timeout_ms``; never raises."""
        if self.enabled and events:
            names = sorted(event_generations(events))
            if await self.responses.bump(names):
                self.local.changed(names)  # after the bump: a copy taken before it is dropped
                await self._announce(CACHE_BUMPED_SUBJECT, names)  # (a lost bump is announced as lost)

    async def reference_changed(self) -> None:
        """Reference data changed here (the caller committed it): drop the in-process copy and the
        responses built on it before answering, so the caller reads its own write on any node.
        (Other nodes hear of it from PostgreSQL within milliseconds.)"""
        self.lookups.forget_directory()
        if self.enabled:
            await self.responses.bump([REFERENCE_GENERATION])
            self.local.changed([REFERENCE_GENERATION])

    def _reference_changed(self) -> None:
        """PostgreSQL's notice (or the listener's reconnection): every node hears it and bumps the reference
        generation itself, so it is also the notice that drops the in-process copies built on it."""
        self.local.changed([REFERENCE_GENERATION])
        if self.enabled:
            self._spawn(self._bump_reference())

    async def _bump_reference(self) -> None:
        await self.responses.bump([REFERENCE_GENERATION])
        self.local.changed([REFERENCE_GENERATION])  # copies read from Redis while the bump was on its way

    def _definitions_changed(self) -> None:
        if self._catalog is None:
            return
        self._catalog_stale = True
        if self._catalog_task is None or self._catalog_task.done():
            self._catalog_task = asyncio.ensure_future(self._reload_catalog(self._catalog))
            self._tasks.add(self._catalog_task)
            self._catalog_task.add_done_callback(self._tasks.discard)

    async def _reload_catalog(self, catalog: CatalogCache) -> None:
        while self._catalog_stale:
            self._catalog_stale = False
            try:
                await catalog.refresh(self._pool)
            except (psycopg.Error, OSError) as exc:  # the maintenance round loads it again
                log.warning("pattern catalog not reloaded after a change: %s", exc)

    def _announce_lost(self, names: list[str]) -> None:
        self.lost.inc()
        self.local.changed(names)  # here at once: the announcement itself may not get through
        self._spawn(self._announce(CACHE_LOST_SUBJECT, names))

    async def _announce(self, subject: str, names: list[str]) -> None:
        try:
            await self._nats.publish(subject, json.dumps({"generations": names}).encode())
        except (NatsError, OSError) as exc:
            log.warning("generation bump not announced on %s: %r", subject, exc)

    async def _bumped_elsewhere(self, msg: Msg) -> None:
        """Another node (or this one) bumped these generations: drop the copies built on them."""
        try:
            self.local.changed([str(n) for n in json.loads(msg.data)["generations"]])
        except (ValueError, KeyError, TypeError):
            self.local.clear()

    async def _lost_elsewhere(self, msg: Msg) -> None:
        """Another node (or this one) could not bump these generations: bump them from here. If
        this node cannot either, it bypasses the cache until it can (no re-announcement)."""
        if not self.enabled:
            return
        try:
            names = [str(n) for n in json.loads(msg.data)["generations"]]
        except (ValueError, KeyError, TypeError):
            self.local.clear()
            await self.responses.new_epoch()
            return
        self.local.changed(names)
        await self.responses.bump(names, announce=False)
        self.local.changed(names)

    async def _user_changed(self, msg: Msg) -> None:
        try:
            subject = json.loads(msg.data)["subject"]
        except (ValueError, KeyError, TypeError):
            self.lookups.forget_users()
            return
        self.lookups.forget_user(str(subject))

    # -- reads --------------------------------------------------------------------------------------
    async def directory(self) -> Directory | None:
        return await self.lookups.directory()

    def _heard_everything(self) -> None:
        reconnects = self._nats.stats.get("reconnects", 0)
        if reconnects != self._reconnects:  # notices may have been missed while NATS was away
            self._reconnects = reconnects
            self.lookups.forget_users()
            self.local.clear()

    async def user_universe(self, subject: str) -> MyUniverse:
        self._heard_everything()
        return await self.lookups.user_universe(subject)

    def _trusted(self, deps: Dependencies) -> bool:
        """Whether changes to what ``deps`` names can be heard (reference data: while PostgreSQL listens)."""
        return REFERENCE_GENERATION not in deps.strict or self.lookups.listening

    def local_copy(self, route: str, key: str, deps: Dependencies) -> Copy | None:
        """This process's copy of ``key`` of ``route`` while it may be served (see :mod:`store.cache_local`),
        else ``None``. No I/O, and not counted: the caller records the hit when it serves the copy."""
        if not (self.enabled and self.local.enabled and self._trusted(deps)):
            return None
        self._heard_everything()
        return self.local.get(f"{route}:{key}", deps.events + deps.strict) if self.responses.healthy else None

    async def fetch(
        self, route: str, key: str, deps: Dependencies, compute: Callable[[], Awaitable[Computed]]
    ) -> Served:
        """The response body for ``key`` of ``route``: this process's copy while it may be served (see
        :meth:`local_copy`), else :meth:`ResponseCache.fetch` (whose answer becomes the copy). A
        response that depends on reference data is not cached while changes to it cannot be heard. An
        answer this process keeps a copy of names it in ``source`` (:mod:`api.hotreads` serves it)."""
        if not self.enabled or not self._trusted(deps):
            served = Served((await compute()).body, "bypass", None)
            self.record(route, served.outcome)
            return served
        local, names, source = self.local, deps.events + deps.strict, Source(route, key, deps)
        copy = self.local_copy(route, key, deps)
        if copy is not None:
            self.record(route, "hit")
            return Served(
                copy.body, "hit", max(0.0, time.time() - copy.computed_at), tag=copy.tag, source=source
            )
        versions = local.snapshot(names)  # before Redis is asked: a notice meanwhile voids the copy
        served = await self.responses.fetch(route, key, deps, compute)
        if served.reusable_until and served.outcome in ("hit", "miss") and self.responses.healthy:
            computed_at = time.time() - (served.age_s or 0.0)
            copy = local.put(
                f"{route}:{key}",
                served.body,
                versions=versions,
                until=served.reusable_until,
                computed_at=computed_at,
            )
            if copy is not None:
                served = dataclasses.replace(served, tag=copy.tag, source=source)
        self.record(route, served.outcome)
        return served

    def record(self, route: str, outcome: Outcome) -> None:
        self.requests.inc(route=route, result=outcome)
        self._windows[route].add(outcome == "hit")

    # -- reporting ----------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        if not self.enabled:
            return "disabled"
        return "up" if self.responses.healthy else "degraded"

    def summary(self) -> dict[str, Any]:
        """What ``/health/ready`` shows: state, breaker, and the hit ratio per route (null: no data)."""
        routes: dict[str, Any] = {}
        for route in ROUTES:
            counts = {
                r: int(self.requests.value(route=route, result=r))
                for r in ("hit", "miss", "coalesced", "bypass")
            }
            total = sum(counts.values())
            recent, recent_total = self._windows[route].ratio()
            routes[route] = {
                **counts,
                "hit_ratio": round(counts["hit"] / total, 4) if total else None,
                "hit_ratio_1m": recent,
                "requests_1m": recent_total,
            }
        return {
            "status": self.status,
            "breaker": self.responses.breaker.state,
            "breaker_trips": self.responses.breaker.trips,
            "lost_bumps": int(self.lost.total()),
            "refreshes": self.responses.refreshes,
            "reference_listener": "up" if self.lookups.listening else "down",
            "local_copies": len(self.local),
            "local_hits": self.local.hits,
            "staleness_ms": self.settings.cache_staleness_ms,
            "routes": routes,
        }


async def serve(
    cache: HubCache | None,
    route: str,
    key: Any,
    deps: Dependencies,
    compute: Callable[[], Awaitable[Computed]],
) -> Served:
    """:meth:`HubCache.fetch` with ``key`` digested, or ``compute`` when the hub has no cache."""
    if cache is None:
        return Served((await compute()).body, "bypass", None)
    return await cache.fetch(route, digest(key), deps, compute)
