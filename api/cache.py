"""The hub's caches in one place: responses in Redis, reference data and users' universes in process.

:class:`HubCache` is opened by the lifespan after Redis and NATS and handed to the routes (through
``HubState.cache``) and to the writer (``events_stored``, called once a batch is committed). See
``docs/cache.md`` for the design and its staleness argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections import deque
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

from api.settings import Settings
from hub.catalog import CatalogCache
from hub.metrics import Counter, Gauge, Metrics
from hub.model import PatternEvent
from hub.subjects import CACHE_LOST_SUBJECT, UNIVERSE_CHANGED_SUBJECT
from store.breaker import Breaker
from store.cache import Computed, Dependencies, Outcome, ResponseCache, Served
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
    "ttl_until",
]

log = logging.getLogger("tickstock.cache")

# Published by a node whose generation bump did not reach Redis: every node that hears it starts a
# new epoch (if it can reach Redis), so the entries that bump should have invalidated die at once.
REFERENCE_GENERATION = "ref"
ROUTES = ("scan", "symbol", "symbols", "universe", "universes", "stats")
RATIO_WINDOW_S = 60


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


class _Ratio(Gauge):
    """hits / (hits + misses + coalesced + bypassed) per route since start; no sample without data."""

    def __init__(self, name: str, help_text: str, requests: Counter) -> None:
        super().__init__(name, help_text)
        self._requests = requests

    def points(self) -> Iterable[tuple[dict[str, str], float]]:
        for route in ROUTES:
            total = sum(
                self._requests.value(route=route, result=r) for r in ("hit", "miss", "coalesced", "bypass")
            )
            if total:
                yield {"route": route}, self._requests.value(route=route, result="hit") / total


class _Window:
    """Hits and requests per second over the last minute, for a recent ratio."""

    def __init__(self) -> None:
        self._seconds: deque[list[int]] = deque()

    def add(self, hit: bool) -> None:
        now = int(time.monotonic())
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append([now, 0, 0])
            while self._seconds[0][0] <= now - RATIO_WINDOW_S:
                self._seconds.popleft()
        self._seconds[-1][1] += int(hit)
        self._seconds[-1][2] += 1

    def ratio(self) -> tuple[float | None, int]:
        now = int(time.monotonic())
        recent = [s for s in self._seconds if s[0] > now - RATIO_WINDOW_S]
        total = sum(s[2] for s in recent)
        return (round(sum(s[1] for s in recent) / total, 4) if total else None), total


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
            _Ratio(
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
            )
        )
        self.lost = r.add(
            Counter(
                "tickstock_cache_lost_bumps_total",
                "Generation bumps that did not reach Redis (each starts a new epoch).",
            )
        )
        self._windows = {route: _Window() for route in ROUTES}
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
            await self.responses.bump(event_generations(events))

    async def reference_changed(self) -> None:
        """Reference data changed here (the caller committed it): drop the in-process copy and the
        responses built on it before answering, so the caller reads its own write on any node.
        (Other nodes hear of it from PostgreSQL within milliseconds.)"""
        self.lookups.forget_directory()
        if self.enabled:
            await self.responses.bump([REFERENCE_GENERATION])

    def _reference_changed(self) -> None:
        if self.enabled:
            self._spawn(self.responses.bump([REFERENCE_GENERATION]))

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
        self._spawn(self._publish_lost(names))

    async def _publish_lost(self, names: list[str]) -> None:
        try:
            await self._nats.publish(CACHE_LOST_SUBJECT, json.dumps({"generations": names}).encode())
        except (NatsError, OSError) as exc:
            log.warning("lost generation bump not announced on %s: %r", CACHE_LOST_SUBJECT, exc)

    async def _lost_elsewhere(self, msg: Msg) -> None:
        """Another node (or this one) could not bump these generations: bump them from here. If
        this node cannot either, it bypasses the cache until it can (no re-announcement)."""
        if not self.enabled:
            return
        try:
            names = [str(n) for n in json.loads(msg.data)["generations"]]
        except (ValueError, KeyError, TypeError):
            await self.responses.new_epoch()
            return
        await self.responses.bump(names, announce=False)

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

    async def user_universe(self, subject: str) -> MyUniverse:
        reconnects = self._nats.stats.get("reconnects", 0)
        if reconnects != self._reconnects:  # notices may have been missed while NATS was away
            self._reconnects = reconnects
            self.lookups.forget_users()
        return await self.lookups.user_universe(subject)

    async def fetch(
        self, route: str, key: str, deps: Dependencies, compute: Callable[[], Awaitable[Computed]]
    ) -> Served:
        """The response body for ``key`` of ``route`` (see :meth:`ResponseCache.fetch`). A response that
        depends on reference data is not cached while changes to it cannot be heard."""
        trusted = REFERENCE_GENERATION not in deps.strict or self.lookups.listening
        if not self.enabled or not trusted:
            served = Served((await compute()).body, "bypass", None)
        else:
            served = await self.responses.fetch(route, key, deps, compute)
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
            "staleness_ms": self.settings.cache_staleness_ms,
            "routes": routes,
        }


def ttl_until(expires: Iterable[Any], ttl_s: float) -> float:
    """``ttl_s``, shortened so that an entry dies when the first of ``expires`` (datetimes) passes."""
    now = time.time()
    for value in expires:
        if value is not None:
            ttl_s = min(ttl_s, value.timestamp() - now)
    return ttl_s if ttl_s > 0 and math.isfinite(ttl_s) else 0.0


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
