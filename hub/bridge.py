"""The Redis bridge: TickStock's pub/sub channels into the hub's ingest stream.

TickStock's producers publish on Redis (``tickstock.events.patterns`` and the two streaming channels;
``docs/upstream.md``). The bridge reads any number of channels, validates each message as the writer
will (:func:`hub.parsing.parse_event` with the catalog and rules it is handed), splits a
``patterns_batch`` into one message per detection, and forwards each valid event to
``tickstock.ingest.<timeframe>.<symbol>`` with ``Nats-Msg-Id`` = event id, waiting for JetStream's ack
before taking the next message. A message it rejects is forwarded as it came to
``tickstock.ingest.unparsed`` with a content hash as its id, so the writer dead-letters it with the
reason and it can be replayed: nothing that reaches the bridge is dropped silently. Every verdict is
counted in ``tickstock_bridge_messages_total{channel,verdict,reason}``.

Redis pub/sub is at-most-once: what is published while the bridge is not subscribed is lost. The bridge
resubscribes with a back-off after losing Redis and counts each loss
(``tickstock_bridge_reconnects_total``) and the time it was deaf (``tickstock_bridge_gap_seconds_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import psycopg
import redis.asyncio as aioredis
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from psycopg_pool import AsyncConnectionPool
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.broker import open_nats
from hub.catalog import CatalogCache
from hub.metrics import Metrics
from hub.model import EventError
from hub.outage import retry_delay
from hub.parsing import DEFAULT_MAX_EVENT_BYTES, loads_json, parse_event
from hub.producer import publish_to_ingest
from hub.subjects import UNPARSED_SUBJECT
from hub.upstream import DEFAULT_RULES, UpstreamRules, batch_items, is_batch
from store.pool import open_pool

__all__ = ["DEFAULT_CHANNEL", "DEFAULT_CHANNELS", "RedisBridge", "run"]

log = logging.getLogger("tickstock.bridge")

DEFAULT_CHANNEL = "tickstock.events.patterns"
DEFAULT_CHANNELS = (DEFAULT_CHANNEL, "tickstock:patterns:streaming", "tickstock:patterns:detected")
RETRY_DELAY_S = 1.0  # between publish attempts while NATS refuses
RECONNECT_BASE_S = 0.5  # the back-off after losing Redis: 0.5 s doubling ...
RECONNECT_MAX_S = 30.0  # ... up to 30 s
CLOSE_TIMEOUT_S = 5.0
HEARTBEAT_S = 15.0  # idle this long: ping Redis; no answer within as long again: reconnect
POLL_S = 0.5  # the longest Redis read: how soon the loop sees a stop
STOP_TIMEOUT_S = POLL_S + CLOSE_TIMEOUT_S + 1.0
PUBLISH_TIMEOUT_S = 5.0
OK = "ok"


class RedisBridge:
    """Subscribes on enter, forwards until exit; never raises out of its task for what Redis sends or
    for Redis or NATS being away. ``forwarded``, ``unparsed`` and ``errors`` count messages published to
    ingest, published to the unparsed subject, and failed publish attempts; ``metrics`` has the rest."""

    def __init__(
        self,
        redis_client: aioredis.Redis,
        js: JetStreamContext,
        *,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        catalog: CatalogCache | None = None,
        rules: UpstreamRules = DEFAULT_RULES,
        metrics: Metrics | None = None,
        channel: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._redis = redis_client
        self._js = js
        self.channels = (channel,) if channel is not None else tuple(dict.fromkeys(channels))
        if not self.channels:
            raise ValueError("the bridge needs at least one channel")
        self._catalog = catalog if catalog is not None else CatalogCache()
        self._rules = rules
        self._heartbeat_s = heartbeat_s
        self.metrics = metrics if metrics is not None else Metrics()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.forwarded = 0
        self.unparsed = 0
        self.errors = 0
        self.reconnects = 0

    @property
    def channel(self) -> str:
        """The first channel (the one a single-channel bridge reads)."""
        return self.channels[0]

    async def handle(self, channel: str, data: bytes) -> None:
        """Validate one Redis message and forward what it holds (each detection of a batch alone)."""
        batch = self._batch(data)
        if batch is None:
            await self.forward(data, channel=channel)
            return
        try:
            items = batch_items(batch)
        except EventError as exc:
            await self._publish_unparsed(data, channel, exc.reason)
            return
        for item in items:
            await self.forward(item, channel=channel)

    @staticmethod
    def _batch(data: bytes) -> dict[str, object] | None:
        if len(data) > DEFAULT_MAX_EVENT_BYTES * 8 or b"patterns_batch" not in data:
            return None  # not a batch, or one too large to read: parse_event gives the verdict
        try:
            obj = loads_json(data)
        except (ValueError, RecursionError, UnicodeDecodeError):
            return None
        return obj if isinstance(obj, dict) and is_batch(obj) else None

    async def forward(self, data: bytes, *, channel: str = DEFAULT_CHANNEL) -> None:
        """Publish one message to ingest (or, rejected, to the unparsed subject), retrying while NATS is
        unavailable. A message NATS or the ingest stream refuses as too large is logged as an error,
        counted as ``dropped`` and skipped (retrying cannot help)."""
        try:
            event = parse_event(data, catalog=self._catalog.current, rules=self._rules)
        except EventError as exc:
            await self._publish_unparsed(data, channel, exc.reason)
            return

        async def publish() -> None:
            await publish_to_ingest(self._js, event, timeout_s=PUBLISH_TIMEOUT_S)

        if await self._publish(publish, event.id, len(data), channel):
            self.forwarded += 1
            self.metrics.bridge_messages.inc(channel=channel, verdict="forwarded", reason=OK)

    async def _publish_unparsed(self, data: bytes, channel: str, reason: str) -> None:
        msg_id = "unparsed-" + hashlib.sha256(data).hexdigest()[:32]

        async def publish() -> None:
            await self._js.publish(
                UNPARSED_SUBJECT, data, headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT_S
            )

        if await self._publish(publish, msg_id, len(data), channel):
            self.unparsed += 1
            self.forwarded += 1
            self.metrics.bridge_messages.inc(channel=channel, verdict="rejected", reason=reason)

    async def _publish(
        self, publish: Callable[[], Awaitable[None]], msg_id: str, size: int, channel: str
    ) -> bool:
        while True:
            try:
                await publish()
                return True
            except (MaxPayloadError, BadRequestError) as exc:  # too large for NATS or the stream
                self.errors += 1
                self.metrics.bridge_messages.inc(channel=channel, verdict="dropped", reason="too_large")
                log.error("bridge: dropped a %d-byte message (%s) that NATS refuses: %s", size, msg_id, exc)
                return False
            except (NatsError, TimeoutError) as exc:
                self.errors += 1
                if self._stopping.is_set():
                    log.error("bridge: stopping; message %s not published (%s)", msg_id, exc)
                    return False
                log.warning("bridge: publish of %s failed (%s); retrying", msg_id, exc)
                await self._pause(RETRY_DELAY_S)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the bridge is asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _loop(self) -> None:
        failures = 0
        lost_at: float | None = None
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.channels)
                if lost_at is not None:
                    self.metrics.bridge_gap_seconds.inc(time.monotonic() - lost_at)
                    log.info("bridge: resubscribed after %.1f s without Redis", time.monotonic() - lost_at)
                failures, lost_at = 0, None
                self._subscribed.set()
                log.info("bridge: forwarding Redis channel(s) %s to NATS ingest", ", ".join(self.channels))
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                failures += 1
                self.reconnects += 1
                self.metrics.bridge_reconnects.inc()
                lost_at = lost_at if lost_at is not None else time.monotonic()
                delay = retry_delay(failures, base_s=RECONNECT_BASE_S, max_s=RECONNECT_MAX_S)
                log.warning("bridge: Redis subscription lost (%s); resubscribing in %.1f s", exc, delay)
                await self._pause(delay)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), CLOSE_TIMEOUT_S)

    async def _listen(self, pubsub: PubSub) -> None:
        """Handle messages until the bridge stops or the connection fails. Reads wait at most
        ``POLL_S``, so a stop never has to cancel a Redis read. After ``heartbeat_s`` without a message
        the bridge pings; no answer within another ``heartbeat_s`` means a dead connection (a peer gone
        without a reset would otherwise leave the bridge deaf for good): it raises ``ConnectionError``."""
        heard_at, pinged_at = time.monotonic(), None
        while not self._stopping.is_set():
            message = await pubsub.get_message(timeout=min(POLL_S, self._heartbeat_s))
            now = time.monotonic()
            if message is None:
                if pinged_at is not None and now - pinged_at > self._heartbeat_s:
                    raise RedisConnectionError(f"no answer to a ping within {self._heartbeat_s:g} s")
                if pinged_at is None and now - heard_at > self._heartbeat_s:
                    await pubsub.ping()
                    pinged_at = now
                continue
            heard_at, pinged_at = now, None  # any message, a pong too, shows the connection is alive
            data, channel = message.get("data"), message.get("channel")
            if message.get("type") != "message":
                continue
            if isinstance(channel, bytes):
                channel = channel.decode("utf-8", "replace")
            if isinstance(data, str):
                data = data.encode("utf-8", "surrogatepass")
            if isinstance(data, bytes):
                await self.handle(channel if isinstance(channel, str) else self.channel, data)

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def __aenter__(self) -> RedisBridge:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="tickstock-bridge")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Ask the loop to stop and wait for it (a read ends within ``POLL_S``, the close within
        ``CLOSE_TIMEOUT_S``); cancel it only if it has not stopped by then."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if not done:
            log.warning("bridge: did not stop within %.0f s; cancelling it", STOP_TIMEOUT_S)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _refresh_catalog(catalog: CatalogCache, pool: AsyncConnectionPool, interval_s: float) -> None:
    """Reload the catalog every ``interval_s``; a failed reload keeps the last one."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await catalog.refresh(pool)
        except (psycopg.Error, OSError, ValueError) as exc:
            log.warning("bridge: pattern catalog reload failed (%s); keeping the last one", exc)


async def run(
    redis_url: str,
    nats_url: str,
    *,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    channel: str | None = None,
    database_url: str | None = None,
    refresh_s: float = 60.0,
    rules: UpstreamRules = DEFAULT_RULES,
    duration_s: float | None = None,
) -> int:
    """Bridge until cancelled (or for ``duration_s``); returns how many messages were forwarded.

    With ``database_url`` the bridge validates pattern names against ``pattern_definitions`` (loaded at
    start, reloaded every ``refresh_s``); without, any name passes and the writer decides. Raises
    :class:`RedisError` in one line when Redis cannot be reached at start (later losses are retried).
    """
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise RedisError(f"cannot connect to Redis at {redis_url}: {exc}") from exc
    catalog = CatalogCache()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if database_url:
                pool = await stack.enter_async_context(open_pool(database_url, min_size=1, max_size=1))
                await catalog.refresh(pool)
                refresher = asyncio.create_task(_refresh_catalog(catalog, pool, refresh_s))
                stack.push_async_callback(_cancel, refresher)
            nc = await stack.enter_async_context(open_nats(nats_url, name="tickstock-bridge"))
            bridge = await stack.enter_async_context(
                RedisBridge(
                    client, nc.jetstream(), channels=channels, channel=channel, catalog=catalog, rules=rules
                )
            )
            if duration_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(duration_s or 0)
            return bridge.forwarded
    finally:
        await client.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
