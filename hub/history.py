"""The clean stream's past, for resumes: a ring of recent events in memory, JetStream beyond it.

The fan-out appends every live event to the ring (``ring_size`` events). A resume asks for the entries
``start..target``: from the ring when it still holds ``start`` (no round trip), otherwise from
``TICKSTOCK_PATTERNS`` with a short-lived ordered consumer. Reading the stream gives up after
:data:`REPLAY_IDLE_S` without a message and reports whether the whole range was there.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from hub.jetstream import PATTERNS_STREAM
from hub.subjects import CLEAN_WILDCARD
from hub.subscriptions import Entry

__all__ = ["REPLAY_IDLE_S", "Replay", "StreamHistory", "stream_position"]

log = logging.getLogger("tickstock.fanout")

REPLAY_IDLE_S = 5.0  # a replay from JetStream that waits this long for the next message stops there


def stream_position(reply: str) -> tuple[int, float]:
    """Stream sequence and stored time (epoch s) from a JetStream delivery's reply subject.

    Raises :class:`ValueError` or :class:`IndexError` for a reply that is not a JetStream ack subject.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[7]) / 1e9
    # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[7]), int(tokens[9]) / 1e9


class Replay:
    """The entries of one resume, in order; after iterating, ``recovered`` says whether none was missing
    (the stream had already discarded some, or went quiet before ``target``)."""

    def __init__(self, entries: Callable[[Replay], AsyncIterator[Entry]], *, recovered: bool) -> None:
        self.recovered = recovered
        self._entries = entries(self)  # an async generator: nothing runs before the first step

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self._entries


class StreamHistory:
    """The recent window of the clean stream plus JetStream for older entries. No I/O until asked."""

    def __init__(self, js: JetStreamContext, *, ring_size: int) -> None:
        self._js = js
        self._ring: deque[Entry] = deque(maxlen=ring_size)

    def append(self, entry: Entry) -> None:
        """Remember a live entry (the oldest falls out of the ring)."""
        self._ring.append(entry)

    async def last_seq(self) -> int:
        """The clean stream's last sequence, asked of JetStream."""
        return int((await self._js.stream_info(PATTERNS_STREAM)).state.last_seq)

    def replay(self, start: int, target: int, *, recovered: bool = True) -> Replay:
        """The entries with ``start <= seq <= target``, from the ring if it reaches back to ``start``."""
        recent = self._from_ring(start, target)
        if recent is not None:
            return Replay(lambda _: _aiter(recent), recovered=recovered)
        return Replay(lambda state: self._from_stream(start, target, state), recovered=recovered)

    def _from_ring(self, start: int, target: int) -> list[Entry] | None:
        ring = self._ring
        if not ring or ring[0].seq > start:
            return None
        at = bisect.bisect_left(ring, start, key=_seq)
        return [e for e in itertools.islice(ring, at, None) if e.seq <= target]

    async def _from_stream(self, start: int, target: int, state: Replay) -> AsyncIterator[Entry]:
        first = (await self._js.stream_info(PATTERNS_STREAM)).state.first_seq
        if first > start:
            state.recovered = False
            start = first
        if start > target:
            return
        psub = await self._js.subscribe(
            CLEAN_WILDCARD,
            stream=PATTERNS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
        )
        try:
            while True:
                try:
                    msg = await psub.next_msg(timeout=REPLAY_IDLE_S)
                except NatsTimeoutError:
                    state.recovered = False
                    return
                seq, stored_at = stream_position(msg.reply)
                if seq > target:
                    return
                try:
                    yield Entry.from_json(seq, msg.data, stored_at)
                except (ValueError, KeyError, TypeError):
                    log.error("clean-stream message %d is not a stored event; not replayed", seq)
                if seq == target:
                    return
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()


def _seq(entry: Entry) -> int:
    return entry.seq


async def _aiter(entries: list[Entry]) -> AsyncIterator[Entry]:
    for entry in entries:
        yield entry
