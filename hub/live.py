"""The fan-out's live read of the clean stream: one ordered push consumer with a bounded pending buffer.

nats-py holds what NATS pushed and the fan-out has not handled yet in the subscription's pending
buffer, bounded here (``TICKSTOCK_WS_LIVE_PENDING_MESSAGES`` / ``_BYTES``). When it is full, nats-py
drops the message and reports a slow consumer (:class:`hub.broker.SlowConsumers`). Nothing is lost for
that: the feed hands on nothing after the hole (order and once-only hold) and reads the stream again
from the last sequence handled. Only a hole the stream itself has (events deleted before this node
fanned them out: its retention ran past a node that far behind) cannot be filled; ``on_hole`` is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hub.broker import SlowConsumers
from hub.fanout_limits import FanOutLimits
from hub.fanout_metrics import FanOutMetrics
from hub.history import stream_position
from hub.jetstream import PATTERNS_STREAM
from hub.subjects import CLEAN_WILDCARD

__all__ = ["RESTART_RETRY_S", "LiveFeed"]

log = logging.getLogger("tickstock.fanout")

RESTART_RETRY_S = 1.0  # between attempts to subscribe again while NATS is unreachable
RESTART_PAUSE_S = 0.2  # before reading again: at most a few restarts a second, whatever NATS drops

Handle = Callable[[Msg, int, float], Awaitable[None]]


class LiveFeed:
    """Reads the clean stream from ``head() + 1`` on and calls ``handle(msg, seq, stored_at)`` for each
    event in stream order, once. ``head()`` is the last sequence handled (the fan-out's)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        limits: FanOutLimits,
        metrics: FanOutMetrics,
        head: Callable[[], int],
        handle: Handle,
        on_hole: Callable[[int], None],
        slow_consumers: SlowConsumers | None = None,
    ) -> None:
        self._js, self._limits, self._metrics = js, limits, metrics
        self._head, self._handle, self._on_hole = head, handle, on_hole
        self._slow_consumers = slow_consumers
        self._sub: JetStreamContext.PushSubscription | None = None
        self._started_at = -1  # the head this subscription started after
        self._generation = 0  # of the subscription whose messages are handled; older ones are ignored
        self._restart: asyncio.Task[None] | None = None
        self._dropped_some = False  # NATS dropped from this subscription: read again once drained

    @property
    def backlog(self) -> int:
        """Events NATS delivered that are not handled yet."""
        return self._sub.pending_msgs if self._sub is not None else 0

    async def start(self) -> None:
        self._started_at = self._head()
        self._dropped_some = False
        dropped = self._slow_consumers.dropped if self._slow_consumers is not None else 0
        self._generation += 1
        self._sub = await self._js.subscribe(
            CLEAN_WILDCARD,
            stream=PATTERNS_STREAM,
            cb=functools.partial(self._on_message, self._generation),
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._started_at + 1
            ),
            pending_msgs_limit=self._limits.live_pending_messages,
            pending_bytes_limit=self._limits.live_pending_bytes,
        )
        if self._slow_consumers is not None:
            self._slow_consumers.watch(self._sub, self._dropped)
            if self._slow_consumers.dropped != dropped:  # some before it was watched: maybe its own
                self._drained_or_read_again()

    async def stop(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        if self._slow_consumers is not None:
            self._slow_consumers.forget(sub)
        with contextlib.suppress(Exception):
            name = (await sub.consumer_info()).name  # gone at once: restarts leave no consumers behind
            await sub.unsubscribe()
            await self._js.delete_consumer(PATTERNS_STREAM, name)

    async def _on_message(self, generation: int, msg: Msg) -> None:
        if generation != self._generation:
            return  # a replaced subscription's: the current one delivers it again
        try:
            seq, stored_at = stream_position(msg.reply)
        except (ValueError, IndexError):
            log.error("clean-stream message without a JetStream reply subject: %r", msg.reply)
            return
        head = self._head()
        if seq <= head:
            return  # seen already (an ordered consumer's reset)
        if seq > head + 1:
            if head != self._started_at or await self._stored(head + 1):
                self._read_again("gap")  # NATS dropped head+1 .. seq-1 from the full buffer
                return
            if generation != self._generation:
                return
            self._on_hole(head)  # read again from head+1, and not in the stream: gone
        await self._handle(msg, seq, stored_at)
        if self._dropped_some and self.backlog == 0 and generation == self._generation:
            self._read_again("slow_consumer")  # what NATS dropped came last: nothing shows the hole

    async def _stored(self, seq: int) -> bool:
        """Whether the clean stream still holds ``seq`` (when JetStream cannot say: assume it does)."""
        try:
            await self._js.get_msg(PATTERNS_STREAM, seq)
        except NotFoundError:
            return False
        except (NatsError, TimeoutError):
            return True
        return True

    def _dropped(self) -> None:
        """nats-py dropped a message: what is queued before it is still handed on, in order; the
        first gap after it (or an empty buffer) reads the stream again."""
        self._metrics.live_dropped += 1
        self._drained_or_read_again()

    def _drained_or_read_again(self) -> None:
        self._dropped_some = True
        if self.backlog == 0:  # nothing queued to hand on first
            self._read_again("slow_consumer")

    def _read_again(self, cause: str) -> None:
        if self._restart is None:
            self._generation += 1  # what the current subscription still delivers is ignored
            self._restart = asyncio.create_task(self._resubscribe(cause), name="ws-live-restart")

    async def _resubscribe(self, cause: str) -> None:
        await self._unsubscribe()
        await asyncio.sleep(RESTART_PAUSE_S)
        while True:
            try:
                await self.start()
                break
            except (NatsError, TimeoutError) as exc:
                log.warning("fan-out: cannot read the clean stream again yet (%s)", exc)
                await asyncio.sleep(RESTART_RETRY_S)
        self._restart = None
        self._metrics.live_restarts.inc(cause=cause)
        log.warning(
            "fan-out fell behind NATS (%s): reading the clean stream again from seq %d",
            cause,
            self._started_at + 1,
        )
