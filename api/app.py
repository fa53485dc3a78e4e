"""The Starlette application and its one lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from api.auth import Authenticator
from api.cache import HubCache
from api.errors import EXCEPTION_HANDLERS
from api.hotreads import HotReadMiddleware, HotReads
from api.nats_service import ScanService
from api.querymemo import QueryMemo
from api.ratelimit import RateLimiter
from api.requestid import RequestIdMiddleware
from api.routes import (
    admin,
    compat,
    dashboard,
    definitions,
    docs,
    health,
    ingest,
    metrics,
    patterns,
    recent_stats,
    sio,
    symbols,
    universes,
    user_filters,
    users,
    ws,
)
from api.routes.ingest import IngestGate, event_window
from api.securityheaders import SecurityHeaders, SecurityHeadersMiddleware
from api.settings import Settings
from api.state import HubState
from api.workerheader import WorkerHeaderMiddleware
from api.wsdirect import DirectWebSocket
from hub.advisories import AdvisoryWatcher
from hub.bridge import RedisBridge
from hub.broker import SlowConsumers, open_nats, redact
from hub.catalog import CatalogCache
from hub.cloudevent import CloudEvents
from hub.deadletters import DeadLetterer
from hub.fanout import FanOut
from hub.fanout_limits import FanOutLimits
from hub.jetstream import Topology, ensure_topology
from hub.maintenance import Maintenance
from hub.metrics import Metrics
from hub.metrics_files import MetricFiles
from hub.partitions import Partitions
from hub.writer import Writer
from store.cache_connection import open_redis
from store.cursor import CursorCodec, cursor_key
from store.pool import open_pool
from store.universe_resolver import MemoryResolver, SqlResolver

__all__ = ["ConfigurationError", "HubApp", "create_app", "open_bridge", "open_hub", "topology"]

log = logging.getLogger("tickstock.app")


class ConfigurationError(RuntimeError):
    """The app was asked to start without the URLs it needs."""


@asynccontextmanager
async def open_hub(
    settings: Settings, *, worker: int | None = None, metrics_dir: Path | None = None, serving: bool = True
) -> AsyncIterator[HubState]:
    """Open every resource in order and close them in reverse order.

    Needs all three server URLs (the ``run`` command starts embedded servers first and fills them in).
    Raises the resource's own error (``StoreError``, ``BrokerError``, ``CacheError``) with one clear
    line when a server cannot be reached within ``settings.connect_timeout_s``.

    ``worker`` is this process's index among a node's processes: the writer, the advisory watcher,
    the Redis bridge and the partition and view upkeep run in the primary (0, or None: the only process)
    only. A process that does not serve websockets (``serving`` False: the primary of several workers,
    :mod:`api.cli.serving`) has no fan-out. With ``metrics_dir`` the metrics are also written there for
    ``/metrics`` to sum over the node's processes (:mod:`hub.metrics_files`).
    """
    primary = worker is None or worker == 0
    database_url, nats_url, redis_url = settings.database_url, settings.nats_url, settings.redis_url
    if not (database_url and nats_url and redis_url):
        raise ConfigurationError(f"no URL for {', '.join(settings.embedded)}")
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(
                database_url,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                timeout_s=settings.pool_timeout_s,
                max_idle_s=settings.pool_max_idle_s,
                statement_timeout_ms=settings.statement_timeout_ms,
                connect_timeout_s=settings.connect_timeout_s,
            )
        )
        log.info("postgres pool open (%d-%d connections)", settings.pool_min_size, settings.pool_max_size)
        cursors = CursorCodec(await cursor_key(pool, secret=settings.cursor_secret))
        slow_consumers = SlowConsumers()  # the fan-out hears of live events NATS had to drop
        nc = await stack.enter_async_context(
            open_nats(nats_url, connect_timeout_s=settings.connect_timeout_s, slow_consumers=slow_consumers)
        )
        log.info("nats connected to %s", redact(nats_url))
        redis = await stack.enter_async_context(
            open_redis(redis_url, connect_timeout_s=settings.connect_timeout_s)
        )
        log.info("redis connected")
        catalog = CatalogCache()
        maintenance = await stack.enter_async_context(
            Maintenance(
                pool,
                interval_s=settings.maintenance_interval_s,
                ahead_days=settings.partitions_ahead_days,
                catalog=catalog,
                upkeep=primary,
            )
        )
        js = nc.jetstream()
        await ensure_topology(js, topology(settings))
        metrics = Metrics()
        files = None
        if metrics_dir is not None:  # entered early, so it leaves last: the final numbers are written
            files = await stack.enter_async_context(MetricFiles(metrics.registry, metrics_dir))
        window = event_window(settings)
        rules = settings.upstream_rules()
        dead_letters = DeadLetterer(pool=pool, js=js, metrics=metrics, window=window, rules=rules)
        cache = await stack.enter_async_context(
            HubCache(settings=settings, redis=redis, pool=pool, nats=nc, metrics=metrics, catalog=catalog)
        )
        # Exits run in reverse: the writer stops (finishing its batch) before NATS drains and the
        # pool closes.
        writer: Partitions | None = None
        if primary:
            await stack.enter_async_context(
                AdvisoryWatcher(js=js, dead_letters=dead_letters, metrics=metrics)
            )
            cloud_events = CloudEvents(source=settings.cloudevents_source)

            def make_writer(consumer: str, group: str | None) -> Writer:
                return Writer(
                    pool=pool,
                    nc=nc,
                    catalog=catalog,
                    dead_letters=dead_letters,
                    metrics=metrics,
                    batch=settings.writer_batch,
                    on_stored=cache.events_stored,
                    window=window,
                    partitions_per_batch=settings.partitions_per_batch,
                    cloud_events=cloud_events,
                    consumer=consumer,
                    group=group,
                )

            writer = await stack.enter_async_context(
                Partitions(nc=nc, partitions=settings.ingest_partitions, make_writer=make_writer)
            )
            log.info(
                "writer started (batch %d, %d partitions)", settings.writer_batch, settings.ingest_partitions
            )
            if settings.bridge_redis_url:
                await stack.enter_async_context(
                    open_bridge(settings, js=js, catalog=catalog, metrics=metrics)
                )
        else:
            log.info("worker %d: ingest, upkeep and the bridge are the primary's (worker 0)", worker)
        # Entered last, so it leaves first: sockets close with "going away" while NATS still runs.
        fanout = None
        if serving:
            fanout = await stack.enter_async_context(
                FanOut(
                    nc=nc,
                    js=js,
                    pool=pool,
                    catalog=catalog,
                    registry=metrics.registry,
                    limits=fanout_limits(settings),
                    slow_consumers=slow_consumers,
                    # Users' universes read fresh: the fan-out re-resolves on the very notice that drops
                    # the cached copy.
                    resolver=MemoryResolver(
                        cache.lookups.directory,
                        users=SqlResolver(pool).user_universe,
                        fallback=SqlResolver(pool),
                    ),
                )
            )
        yield HubState(
            settings=settings,
            pool=pool,
            nats=nc,
            js=js,
            redis=redis,
            maintenance=maintenance,
            metrics=metrics,
            catalog=catalog,
            dead_letters=dead_letters,
            writer=writer,
            cursors=cursors,
            fanout=fanout,
            cache=cache,
            upstream=rules,
            worker=worker,
            metric_files=files,
        )
        log.info("hub shutting down")


@asynccontextmanager
async def open_bridge(
    settings: Settings, *, js: JetStreamContext, catalog: CatalogCache, metrics: Metrics
) -> AsyncIterator[RedisBridge]:
    """The Redis bridge inside the hub (``TICKSTOCK_BRIDGE_REDIS_URL``): it validates with the hub's own
    catalog and rules and counts into its metrics. Redis need not be up: the bridge subscribes when it is."""
    client = aioredis.Redis.from_url(settings.bridge_redis_url or "")
    try:
        async with RedisBridge(
            client,
            js,
            channels=settings.bridge_channel_list,
            catalog=catalog,
            rules=settings.upstream_rules(),
            metrics=metrics,
        ) as bridge:
            log.info("redis bridge started on %s", ", ".join(bridge.channels))
            yield bridge
    finally:
        await client.aclose()


def topology(settings: Settings) -> Topology:
    """The JetStream limits the settings ask for."""
    return Topology(
        max_deliver=settings.ingest_max_deliver,
        ack_wait_s=settings.ingest_ack_wait_s,
        partitions=settings.ingest_partitions,
        pin_timeout_s=settings.ingest_pin_timeout_s,
        partition_ack_wait_s=settings.ingest_partition_ack_wait_s,
        partition_max_ack_pending=2 * settings.writer_batch,
        replicas=settings.nats_replicas,
    )


def fanout_limits(settings: Settings) -> FanOutLimits:
    return FanOutLimits(
        max_connections=settings.ws_max_connections,
        max_subscriptions=settings.ws_max_subscriptions,
        queue_messages=settings.ws_queue_messages,
        queue_bytes=settings.ws_queue_bytes,
        queue_age_s=settings.ws_queue_age_s,
        ping_interval_s=settings.ws_ping_interval_s,
        idle_timeout_s=settings.ws_idle_timeout_s,
        auth_timeout_s=settings.ws_auth_timeout_s,
        resume_max=settings.ws_resume_max,
        ring_size=settings.ws_ring_size,
        drain_s=settings.ws_drain_s,
        live_pending_messages=settings.ws_live_pending_messages,
        live_pending_bytes=settings.ws_live_pending_bytes,
        shed_after_s=settings.ws_shed_after_s,
        shed_lag_s=settings.ws_shed_lag_s,
    )


def security_headers(settings: Settings) -> SecurityHeaders | None:
    if not settings.security_headers:
        return None
    return SecurityHeaders(
        html_csp=settings.csp_html,
        other_csp=settings.csp_other,
        referrer_policy=settings.referrer_policy,
        hsts_max_age_s=settings.hsts_max_age_s,
    )


class HubApp(Starlette):
    """Starlette with the security headers outermost: outside its error handler too, so that even a
    500 carries them (a ``Middleware`` entry would sit inside it)."""

    def __init__(self, *, headers: SecurityHeaders | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.security_headers = headers

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.security_headers is None:
            return stack
        return SecurityHeadersMiddleware(stack, headers=self.security_headers)


def create_app(settings: Settings, *, hub: HubState | None = None) -> Starlette:
    """Build the ASGI app; nothing is opened until the lifespan runs.

    With ``hub`` the app serves resources its caller opened and will close (the CLI does this so
    that connection errors are reported before the server starts); without, the lifespan opens them.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if socketio_server is not None:
                stack.push_async_callback(socketio_server.shutdown)  # after the fan-out closed its sessions
            if hub is None:
                opened = await stack.enter_async_context(open_hub(settings))
                app.state.hub = opened
                app.state.rate_limiter.register(opened.metrics.registry)
                hot_reads.register(opened.metrics.registry)
            else:
                app.state.hub = hub
            if settings.nats_service:
                # Leaves before the hub closes: requests in hand are answered while NATS still runs.
                app.state.nats_service = await stack.enter_async_context(ScanService(app.state))
            yield

    hot_reads = HotReads()
    app = HubApp(
        headers=security_headers(settings),
        middleware=[
            Middleware(RequestIdMiddleware),
            *(
                [Middleware(WorkerHeaderMiddleware, worker=hub.worker)]
                if hub and hub.worker is not None
                else []
            ),
            Middleware(DirectWebSocket, path="/ws", endpoint=ws.feed),  # inside the rest: api/wsdirect.py
            Middleware(HotReadMiddleware, reads=hot_reads),  # innermost, likewise: see api/hotreads.py
        ],
        routes=[
            *health.routes,
            *metrics.routes,
            *ingest.routes,
            *definitions.routes,
            *patterns.routes,
            *recent_stats.routes,
            *symbols.routes,
            *universes.routes,
            *users.routes,
            *user_filters.routes,
            *admin.routes,
            *docs.routes,
            *ws.routes,
            *dashboard.routes,
            *(compat.routes(settings.compat_prefix) if settings.compat else []),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.auth = Authenticator(settings)
    app.state.hot_reads = hot_reads  # the routes teach it (api.hotreads.hot_response)
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    if hub is not None:
        app.state.hub = hub  # already open: usable even by a server that skips the lifespan
        app.state.rate_limiter.register(hub.metrics.registry)
        hot_reads.register(hub.metrics.registry)
    app.state.ingest_gate = IngestGate(settings.http_ingest_inflight)
    app.state.scan_queries = QueryMemo()  # validated scan queries by their raw text
    socketio_server = sio.mount(app, settings) if settings.socketio_enabled else None
    return app
