"""``tickstock bridge-redis``: TickStock's Redis pub/sub channel into the hub's ingest stream.

Existing TickStock producers publish JSON (schema v1 or the legacy envelope) to the Redis channel
``tickstock.events.patterns``. The bridge forwards each message to
``tickstock.ingest.<timeframe>.<symbol>`` with ``Nats-Msg-Id`` = event id, waiting for JetStream's
ack before taking the next message. A message it cannot read is still forwarded, to
``tickstock.ingest.unparsed`` with a content hash as its id, so the writer dead-letters it with the
reason: nothing that reaches the bridge is dropped silently. Redis pub/sub itself is at-most-once:
what is published while the bridge is not subscribed is lost, which is why new producers should
publish to JetStream directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from types import TracebackType

import redis.asyncio as aioredis
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from redis.exceptions import RedisError

from hub.broker import open_nats
from hub.catalog import PatternCatalog
from hub.model import EventError, PatternEvent
from hub.parsing import parse_event
from hub.producer import publish_to_ingest
from hub.subjects import UNPARSED_SUBJECT

__all__ = ["DEFAULT_CHANNEL", "RedisBridge", "run"]

log = logging.getLogger("tickstock.bridge")

DEFAULT_CHANNEL = "tickstock.events.patterns"
RETRY_DELAY_S = 1.0
CLOSE_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 5.0


class RedisBridge:
    """Subscribes on enter, forwards until exit. Counters: ``forwarded``, ``unparsed``, ``errors``."""

    def __init__(
        self, redis_client: aioredis.Redis, js: JetStreamContext, *, channel: str = DEFAULT_CHANNEL
    ) -> None:
        self._redis = redis_client
        self._js = js
        self.channel = channel
        self._catalog = PatternCatalog.permissive()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.forwarded = 0
        self.unparsed = 0
        self.errors = 0

    async def forward(self, data: bytes) -> None:
        """Publish one message to ingest, retrying while NATS is unavailable. A message NATS or the
        ingest stream refuses as too large is logged as an error and skipped (retrying cannot help)."""
        event: PatternEvent | None
        try:
            event = parse_event(data, catalog=self._catalog)
        except EventError:
            event, payload, msg_id = None, data, "unparsed-" + hashlib.sha256(data).hexdigest()[:32]
            self.unparsed += 1
        else:
            payload, msg_id = event.to_json_bytes(), event.id
        while True:
            try:
                if event is None:
                    await self._js.publish(
                        UNPARSED_SUBJECT, payload, headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT_S
                    )
                else:
                    await publish_to_ingest(self._js, event, timeout_s=PUBLISH_TIMEOUT_S)
                break
            except (MaxPayloadError, BadRequestError) as exc:  # too large for NATS or the stream
                self.errors += 1
                log.error(
                    "bridge: dropped a %d-byte message (%s) that NATS refuses: %s", len(payload), msg_id, exc
                )
                return
            except (NatsError, TimeoutError) as exc:
                self.errors += 1
                log.warning("bridge: publish of %s failed (%s); retrying", msg_id, exc)
                await asyncio.sleep(RETRY_DELAY_S)
        self.forwarded += 1

    async def _loop(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                log.info("bridge: forwarding Redis channel %r to NATS ingest", self.channel)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes | str):
                        await self.forward(data if isinstance(data, bytes) else data.encode())
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("bridge: Redis subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(RETRY_DELAY_S)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), CLOSE_TIMEOUT_S)  # never hangs a shutdown

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def __aenter__(self) -> RedisBridge:
        self._task = asyncio.create_task(self._loop(), name="tickstock-bridge")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def run(
    redis_url: str, nats_url: str, *, channel: str = DEFAULT_CHANNEL, duration_s: float | None = None
) -> int:
    """Bridge until cancelled (or for ``duration_s``); returns how many messages were forwarded."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise RedisError(f"cannot connect to Redis at {redis_url}: {exc}") from exc
    try:
        async with (
            open_nats(nats_url, name="tickstock-bridge") as nc,
            RedisBridge(client, nc.jetstream(), channel=channel) as bridge,
        ):
            if duration_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(duration_s or 0)
            return bridge.forwarded
    finally:
        await client.aclose()
