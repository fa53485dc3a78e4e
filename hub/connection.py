"""One websocket connection of the fan-out: its subscriptions, its bounded outbox, the task that writes it.

The fan-out only ever calls :meth:`Connection.offer`, which never waits: a full outbox closes the
connection with 4409 ("slow consumer") instead of holding the fan-out back or dropping frames silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

from hub.fanout_limits import FanOutLimits
from hub.fanout_metrics import FanOutMetrics
from hub.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_SLOW,
)
from hub.subscriptions import Subscription

__all__ = ["CLOSE_TIMEOUT_S", "MAX_CLOSE_REASON_BYTES", "Connection", "Send", "WireWrite"]

log = logging.getLogger("tickstock.ws")

CLOSE_TIMEOUT_S = 2.0
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code

Send = Callable[[MutableMapping[str, Any]], Coroutine[Any, Any, None]]


class _NoFrames(deque[tuple[str, float, float]]):
    """The shared empty outbox of connections that never queued: queueing in it is a bug, not a loss."""

    def append(self, item: tuple[str, float, float]) -> None:
        raise RuntimeError("a frame queued in the shared empty outbox")


_NO_FRAMES = _NoFrames()
# Writes one prepared frame (the bytes :func:`hub.wsframe.text_frame` made) to the socket as it is, or
# answers False when the server cannot take it that way now (then the frame goes through ``Send``).
WireWrite = Callable[[bytes], bool]


class Connection:
    """One websocket: its subscriptions, its bounded outbox, and how frames reach the socket.

    A frame offered to an idle connection is written at once, within :meth:`offer`: uvicorn's send only
    waits when the socket's buffer is full, so a healthy client costs no task switch per frame. When a
    send must wait, a task (``_flusher``) finishes it and then writes what queued up meanwhile, in
    order; it ends when the outbox is empty. Only backed-up connections have such a task.
    """

    __slots__ = (
        "_bytes",
        "_close_due",
        "_closer",
        "_flusher",
        "_frames",
        "_limits",
        "_metrics",
        "_room",
        "_send",
        "_wire",
        "busy",
        "close_code",
        "close_reason",
        "connected_at",
        "expires_at",
        "gone",
        "heartbeat",
        "last_pinged",
        "last_received",
        "raw",
        "scopes",
        "subject",
        "subs",
    )

    def __init__(
        self,
        send: Send,
        limits: FanOutLimits,
        metrics: FanOutMetrics,
        *,
        heartbeat: bool = True,
        wire: WireWrite | None = None,
    ) -> None:
        self._send = send
        self._wire = wire
        # Whether prepared frame bytes may be offered (the server can take them as they are).
        self.raw = wire is not None
        self._limits = limits
        self._metrics = metrics
        # frame, stored at, queued at (monotonic); the shared empty one until a send first waits (an empty
        # deque costs 600+ bytes, and most connections never queue a frame)
        self._frames: deque[tuple[str, float, float]] = _NO_FRAMES
        self._bytes = 0
        self._room: asyncio.Event | None = None  # made when something waits for room (most never do)
        self._flusher: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._close_due = False  # closed with later=True: the close frame waits for send_close()
        self.subs: dict[str, Subscription] = {}
        self.subject: str | None = None
        self.scopes: frozenset[str] = frozenset()
        self.expires_at = 0.0
        now = time.monotonic()
        self.connected_at = self.last_received = self.last_pinged = now
        self.close_code: int | None = None
        self.close_reason = ""
        self.busy = False  # handling an op (a long replay is not idleness)
        self.gone = False
        # False: the transport keeps the socket alive itself (Engine.IO's ping/pong), so the fan-out
        # neither pings it nor closes it as idle.
        self.heartbeat = heartbeat

    @property
    def authenticated(self) -> bool:
        return self.subject is not None

    @property
    def queued(self) -> int:
        return len(self._frames)

    def lag_s(self, now: float) -> float:
        """How long the oldest queued frame has waited (0 when nothing waits)."""
        return now - self._frames[0][2] if self._frames else 0.0

    def write_prepared(self, wire: bytes) -> bool:
        """Write a prepared frame now if nothing waits before it and the server takes it as it is; False
        otherwise (then :meth:`offer` it). Counting it is the caller's (:meth:`FanOutMetrics.prepared_sent`
        once for all the sockets an event was written to)."""
        return (
            self.close_code is None and self._flusher is None and self._wire is not None and self._wire(wire)
        )

    def send_json(self, message: dict[str, Any]) -> bool:
        return self.offer(json.dumps(message, separators=(",", ":")))

    def offer(self, frame: str, stored_at: float = 0.0) -> bool:
        """Write or queue a frame without waiting. A full outbox closes the connection (4409) and
        returns False."""
        if self.close_code is not None:
            return False
        if self._flusher is None:
            self._write_now(frame, stored_at)
            return not self.gone
        frames = self._frames
        if len(frames) >= self._limits.queue_messages or self._bytes + len(frame) > self._limits.queue_bytes:
            self.close(CLOSE_SLOW, "slow consumer: the outbox is full; resume with since")
            return False
        frames.append((frame, stored_at, time.monotonic()))
        self._bytes += len(frame)
        self._metrics.queued(len(frames))
        return True

    async def offer_paced(self, frame: str, stored_at: float = 0.0) -> bool:
        """Offer a frame of a replay, first waiting while the outbox is more than half full."""
        while (
            len(self._frames) >= self._limits.queue_messages // 2
            or self._bytes >= self._limits.queue_bytes // 2
        ):
            if self.close_code is not None:
                return False
            await self._wait_room()
        return self.offer(frame, stored_at)

    def close(self, code: int, reason: str = "", *, later: bool = False) -> None:
        """Close with ``code``: at once for errors (what is queued is dropped), after the outbox is
        written for a normal close or going away. Nothing more is sent to it either way. ``later``: the
        close frame waits for :meth:`send_close` (a shed step closes many connections at once and sends
        their close frames a slice at a time, see :mod:`hub.overload`)."""
        if self.close_code is not None:
            return
        # Cut to the protocol's limit on a character boundary (a longer reason makes the server drop the
        # TCP connection without a close frame); "ignore" also drops lone surrogates, which cannot be sent.
        cut = reason.encode("utf-8", "ignore")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
        self.close_code, self.close_reason = code, cut
        self._metrics.closes.inc(code=str(code))
        if code not in (CLOSE_NORMAL, CLOSE_GOING_AWAY) and self._flusher is not None:
            self._frames.clear()
            self._bytes = 0
            self._flusher.cancel()  # it may be stuck writing to a client that stopped reading
            self._flusher = None
        if self._flusher is None:  # otherwise the flusher sends the close after the outbox
            self._close_due = True
            if not later:
                self.send_close()
        self._wake()

    def send_close(self) -> None:
        """Send the close frame :meth:`close` left for later (nothing when there is none to send)."""
        if self._close_due:
            self._close_due = False
            if not self.gone:
                self._closer = asyncio.create_task(self._send_close(), name="ws-close")

    async def closed(self) -> None:
        """Wait until the close frame is written (or the socket is gone)."""
        self.send_close()  # one left for later goes now
        for task in (self._flusher, self._closer):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)

    async def drained(self) -> None:
        while self._frames and self.close_code is None:
            await self._wait_room()

    def abandon(self) -> None:
        """The socket is gone: stop writing."""
        self.gone = True
        if self.close_code is None:
            self.close_code = CLOSE_NORMAL
        self._frames.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._wake()

    async def _wait_room(self) -> None:
        """Wait until :meth:`_wake` (the outbox shrank, or the connection closed)."""
        if self._room is None:
            self._room = asyncio.Event()
        self._room.clear()
        await self._room.wait()

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()

    def _sent(self, frame: str, stored_at: float) -> None:
        metrics = self._metrics
        metrics.messages += 1
        metrics.bytes += len(frame) if frame.isascii() else len(frame.encode())  # UTF-8 bytes on the wire
        if stored_at:
            metrics.events += 1
            metrics.latency.observe(time.time() - stored_at)

    def _write_now(self, frame: str, stored_at: float) -> None:
        """Drive the send until it would wait; if it must, hand the rest to a flusher task."""
        send = self._send({"type": "websocket.send", "text": frame})
        try:
            waiting = send.send(None)
        except StopIteration:
            self._sent(frame, stored_at)
            return
        except (OSError, RuntimeError) as exc:  # the client went away (uvicorn: ClientDisconnected)
            log.debug("websocket write ended: %r", exc)
            self.abandon()
            return
        if self._frames is _NO_FRAMES:
            self._frames = deque()
        self._flusher = asyncio.create_task(self._flush(send, waiting, frame, stored_at), name="ws-flush")

    async def _flush(
        self, send: Coroutine[Any, Any, None], waiting: Any, frame: str, stored_at: float
    ) -> None:
        frames = self._frames
        low = self._limits.queue_messages // 4
        try:
            await _finish(send, waiting)
            self._sent(frame, stored_at)
            while frames:
                frame, stored_at, _ = frames.popleft()
                self._bytes -= len(frame)
                await self._send({"type": "websocket.send", "text": frame})
                self._sent(frame, stored_at)
                if len(frames) <= low:
                    self._wake()
            self._wake()
        except (OSError, RuntimeError) as exc:
            log.debug("websocket write ended: %r", exc)
            self.gone = True
            return
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None
        if self.close_code is not None and not self.gone:
            await self._send_close()

    async def _send_close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._send(
                    {"type": "websocket.close", "code": self.close_code, "reason": self.close_reason}
                )


async def _finish(send: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run a send coroutine that has already been stepped once (and yielded ``waiting``) to its end,
    as a task would: wait for what it waits on, then step it again."""
    try:
        while True:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])
            waiting = send.send(None)
    except StopIteration:
        return
    except asyncio.CancelledError:
        send.close()
        raise
