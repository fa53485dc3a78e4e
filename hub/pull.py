"""A pull-consumer fetch bounded in bytes as well as in messages.

nats-py's ``fetch`` bounds a batch by count only: a batch of large messages can exceed what the
server buffers for one client and get the connection cut as a slow consumer. :class:`Puller` sends
JetStream's own pull request (``$JS.API.CONSUMER.MSG.NEXT``) with ``max_bytes`` and reads the replies
from one long-lived inbox, so a message that arrives after a fetch gave up is returned by the next
fetch instead of being dropped.

With a priority ``group`` (the partition consumers, pinned-client policy, ADR-42) each request names
the group and, once this puller is pinned, the pin id the server sent in ``Nats-Pin-Id``; a 423 reply
means the pin went to another node (this one did not pull within the consumer's priority timeout, or
it was unpinned), and the next request asks afresh. When a puller *becomes* pinned, the node pinned
before may have left deliveries unacknowledged (it died, or it is finishing its last batch), and the
server hands the new node newer messages at once while those older ones come back only after their
ack wait. So a fresh pin is *fenced*: what arrives is held (``in_progress``) and pulling goes on until
the consumer has no outstanding delivery but the ones held here, which are then returned in stream
order. Order per partition holds across a takeover.

The same holds when the pin stays but a delivery never arrived: the connection to the server died with
an answer in flight (a NATS server or stream leader killed), or a new consumer leader counts as
delivered what the old one sent into the void. The server goes on with newer messages; the lost ones
come back after their ack wait. Every delivery of a consumer has the next *consumer* sequence, and a
pinned puller receives all of them, so a sequence it skipped is a delivery it lost: that fetch is
fenced too.

The count alone can be fooled: the node that lost the pin may finish a batch whose ack wait ran out,
and its late acknowledgements take messages out of the consumer's pending count that are already held
here again (redelivered), so the count matches while that node still holds other deliveries. With
``settled`` (what a redelivery's work already is: published by the other node), a fence acknowledges
and drops those messages before it counts, and the count is exact again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from types import TracebackType

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

__all__ = ["PIN_HEADER", "Puller", "Settled", "in_progress", "nak"]

_STATUS = "Status"
_HEARTBEAT = "100"
_NO_RESPONDERS = "503"
_PIN_MISMATCH = "423"
PIN_HEADER = "Nats-Pin-Id"
# Of the given redelivered messages, the stream sequences whose work is already done elsewhere.
Settled = Callable[[Sequence[Msg]], Awaitable[Collection[int]]]


class Puller:
    """Fetches from a durable pull consumer. Use as an async context manager."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        consumer: str,
        max_bytes: int,
        group: str | None = None,
        settled: Settled | None = None,
    ) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._info = f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"
        self._group = group
        self._settled = settled
        self.pin: str | None = None  # the pin id this puller holds (None: not pinned, or lost)
        self.fences = 0  # fresh pins (and lost deliveries) fenced
        self._refence = False
        self._delivered: int | None = None  # the last consumer sequence this puller saw (with a group)
        self._max_bytes = max_bytes
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = ""
        self._sub: Subscription | None = None

    async def _on_msg(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)  # bounded by what was requested: one batch at a time

    async def __aenter__(self) -> Puller:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, batch: int, *, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages and about ``max_bytes`` (at least one message), waiting up to
        ``timeout`` seconds for the first. Returns an empty list when there is nothing; raises
        :class:`nats.errors.NoRespondersError` when no consumer answers the request. With a group,
        what a fresh pin (or a fetch after a lost delivery) brings is fenced first (more than ``batch``
        messages may come back then)."""
        pin = self.pin
        msgs: list[Msg] = []
        # Messages for an earlier request that gave up waiting; status replies (no reply subject) are
        # answers to earlier requests and mean nothing now.
        while not self._queue.empty() and len(msgs) < batch:
            msg = self._queue.get_nowait()
            if msg.reply:
                msgs.append(msg)
            elif msg.headers and msg.headers.get(_STATUS) == _PIN_MISMATCH:
                self.pin = None
        if not msgs:
            msgs = await self._pull(batch, timeout)
        if self._group is not None and msgs:
            self.pin = _pin_of(msgs) or self.pin
            skipped = self._skipped(msgs)
            if self.pin != pin or self._refence or skipped:
                self.fences += 1
                self._refence = True  # until the fence is done: what it held is dropped if it fails
                msgs = await self._fence(msgs, batch, timeout)
                self._refence = False
                self._skipped(msgs)
        return msgs

    def _skipped(self, msgs: Sequence[Msg]) -> bool:
        """Whether ``msgs`` skip a consumer sequence after the last one seen (a delivery lost on its way
        here); notes the last one. A sequence lower than seen (a new consumer leader delivering again
        from its replicated state) is not a gap."""
        skipped = False
        for msg in msgs:
            seq = msg.metadata.sequence.consumer
            if self._delivered is not None and seq > self._delivered + 1:
                skipped = True
            self._delivered = seq if self._delivered is None else max(self._delivered, seq)
        return skipped

    def refence(self) -> None:
        """Fence the next fetch that brings messages (with a group): after handing messages back with a
        delay, newer ones (for a request the server received late, e.g. buffered across a reconnect)
        must not be handled before those come back."""
        self._refence = True

    async def _pull(self, batch: int, timeout: float) -> list[Msg]:
        # no_wait with expires: the server waits up to expires for the first message, then sends what
        # is available and ends the request (404) instead of holding it until the batch is full.
        request: dict[str, object] = {
            "batch": batch,
            "max_bytes": self._max_bytes,
            "expires": int(timeout * 1e9),
            "no_wait": True,
        }
        if self._group is not None:
            request["group"] = self._group
            if self.pin is not None:
                request["id"] = self.pin
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        deadline = time.monotonic() + timeout + 0.25
        msgs: list[Msg] = []
        size = 0
        while len(msgs) < batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            if not msg.reply:  # a status reply: 100 heartbeat, 404 no messages, 408 expired, 409 limits
                status = msg.headers.get(_STATUS) if msg.headers else None
                if status == _HEARTBEAT:
                    continue
                if status == _NO_RESPONDERS:
                    # No consumer answers (deleted, or JetStream unavailable): an error, not "nothing
                    # yet", or a caller's fetch loop would spin on instant empty replies.
                    raise NoRespondersError
                if status == _PIN_MISMATCH:
                    self.pin = None  # another node holds the pin now; the next request asks afresh
                break
            msgs.append(msg)
            size += len(msg.data)
            if size >= self._max_bytes:
                break
        return msgs

    async def _ack_pending(self) -> int:
        reply = await self._nc.request(self._info, b"", timeout=5)
        return int(json.loads(reply.data).get("num_ack_pending", 0))

    async def _fence(self, msgs: list[Msg], batch: int, timeout: float) -> list[Msg]:
        """Hold ``msgs`` (just pinned) and pull on until every outstanding delivery of the consumer is
        held here; then all of them in stream order. The pin lost meanwhile: all handed back, none
        returned."""
        held = {m.metadata.sequence.stream: m for m in msgs}
        while True:
            pending = await self._ack_pending()
            await self._drop_settled(held)  # after the count: an ack it saw was for a message done then
            if pending <= len(held):
                break
            await in_progress(list(held.values()))
            for msg in await self._pull(batch, timeout):
                held[msg.metadata.sequence.stream] = msg  # a redelivery replaces the copy held
            if self.pin is None:
                await nak(list(held.values()))
                return []
        return [held[seq] for seq in sorted(held)]

    async def _drop_settled(self, held: dict[int, Msg]) -> None:
        """Acknowledge and drop the held redeliveries whose work is done elsewhere (see the module)."""
        again = [m for m in held.values() if m.metadata.num_delivered > 1]
        if self._settled is None or not again:
            return
        for seq in await self._settled(again):
            msg = held.pop(seq, None)
            if msg is not None:
                with contextlib.suppress(NatsError):
                    await msg.ack()


def _pin_of(msgs: Sequence[Msg]) -> str | None:
    for msg in reversed(msgs):
        if msg.headers and PIN_HEADER in msg.headers:
            return msg.headers[PIN_HEADER]
    return None


async def nak(msgs: Sequence[Msg], *, delay: float | None = None) -> None:
    """Hand ``msgs`` back to JetStream (after ``delay`` seconds); a lost connection is ignored (the
    messages are redelivered after the ack wait anyway)."""
    for msg in msgs:
        with contextlib.suppress(NatsError):
            await msg.nak(delay=delay)


async def in_progress(msgs: Sequence[Msg]) -> None:
    """Tell JetStream the messages are still being worked on: restarts their ack wait without counting
    a delivery (while a batch is isolated, and for messages carried to the next batch)."""
    for msg in msgs:
        with contextlib.suppress(NatsError):
            await msg.in_progress()
