"""How one Socket.IO session takes what the fan-out sends: the :data:`hub.connection.Send` of that session.

The fan-out writes ``/ws`` frames to each :class:`hub.connection.Connection`; for a Socket.IO session this
adapter turns them into Engine.IO message packets (``42[name, body]``) and writes them:

* on a session that came by websocket, straight to that websocket with the server's own send, as ``/ws``
  does (no Engine.IO queue, no task switch per frame): a send that must wait makes the connection queue
  in its own bounded outbox, and a full outbox (or a frame waiting over ``TICKSTOCK_WS_QUEUE_AGE_S``)
  closes the session with 4409, exactly as on ``/ws``. Engine.IO's own packets (pings, the connect
  acknowledgement, disconnects) still go through its queue and writer task, a frame at a time, so the two
  never interleave within a frame;
* on a long-polling session (or one upgraded from polling), onto Engine.IO's queue of the session, which is
  bounded (``TICKSTOCK_SOCKETIO_QUEUE_PACKETS``, :mod:`api.sio_server`): when it is full the send waits and
  the outbox fills behind it, with the same 4409.

``{"op":"event",…}`` becomes a ``pattern_alert`` in upstream's shape, translated once per frame and shared
by every session that gets the same frame (:class:`AlertCodec`); every other frame offered to the
connection is already an Engine.IO message (the replies of :mod:`api.routes.sio`), so replies and alerts
keep one order. A close is a ``closing`` event ``{code, reason}``, a Socket.IO disconnect and an
Engine.IO close; a session that does not take them within :data:`ABORT_AFTER_S` has its websocket closed
with the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine, MutableMapping
from datetime import datetime
from typing import Any

from engineio import packet as eio_packet
from engineio.exceptions import EngineIOError

from hub.protocol import CLOSE_GOING_AWAY, CLOSE_NORMAL

__all__ = ["ABORT_AFTER_S", "CHANNEL", "AlertCodec", "SessionWire", "event_packet"]

log = logging.getLogger("tickstock.socketio")

ABORT_AFTER_S = 1.0  # within the fan-out's own close timeout (hub.connection.CLOSE_TIMEOUT_S)
CHANNEL = "tickstock.events.patterns"  # upstream's channel name, kept in the alert for its readers
CODEC_CACHE_FRAMES = 1_024
_EVENT_PREFIX = '{"op":"event",'


def event_packet(name: str, body: Any) -> str:
    """The Engine.IO message carrying the Socket.IO EVENT (default namespace) that emits ``name``
    with ``body``: ``42[name, body]``."""
    return "42" + json.dumps([name, body], separators=(",", ":"))


class AlertCodec:
    """``/ws`` event frames -> ``pattern_alert`` packets, each frame translated once (a bounded cache)."""

    def __init__(self, size: int = CODEC_CACHE_FRAMES) -> None:
        self._size = size
        self._packets: dict[str, str] = {}

    def packet(self, frame: str) -> str:
        found = self._packets.get(frame)  # the fan-out shares one frame object: its hash is computed once
        if found is None:
            if len(self._packets) >= self._size:
                self._packets.clear()
            found = self._packets[frame] = event_packet("pattern_alert", alert(json.loads(frame)))
        return found


def alert(frame: dict[str, Any]) -> dict[str, Any]:
    """Upstream's ``pattern_alert`` body for one ``/ws`` event frame (``docs/socketio.md``): the stored v1
    event in ``event.data`` (plus ``timestamp``, its ``detected_at``), ``event.timestamp`` in epoch
    seconds as upstream's ``TickStockEvent`` has it, and ``seq``/``subs`` for resuming."""
    event = frame["event"]
    detected = event["detected_at"]
    return {
        "type": "pattern_alert",
        "seq": frame["seq"],
        "subs": frame["subs"],
        "event": {
            "event_type": event["type"],
            "source": event.get("source", "unknown"),
            "timestamp": datetime.fromisoformat(detected).timestamp(),
            "channel": CHANNEL,
            "data": {**event, "timestamp": detected},
        },
    }


class SessionWire:
    """The ``Send`` of one Socket.IO session's :class:`~hub.connection.Connection`.

    ``disconnect`` ends the Socket.IO session (the server's ``disconnect(sid)``); ``raw_send`` is the
    ASGI send of its websocket, when it came by websocket, for closing a session that stopped reading.
    """

    __slots__ = ("_codec", "_disconnect", "_raw_send", "_socket")

    def __init__(
        self,
        *,
        socket: Any,  # engineio.async_socket.AsyncSocket (untyped)
        codec: AlertCodec,
        disconnect: Any,
        raw_send: Any = None,
    ) -> None:
        self._socket, self._codec, self._disconnect, self._raw_send = socket, codec, disconnect, raw_send

    def __call__(self, message: MutableMapping[str, Any]) -> Coroutine[Any, Any, None]:
        """The coroutine that writes ``message`` (the connection steps it itself: no wrapper frame on the
        direct path)."""
        if message["type"] != "websocket.send":
            return self.close(int(message.get("code", CLOSE_NORMAL)), str(message.get("reason", "")))
        text: str = message["text"]
        if text.startswith(_EVENT_PREFIX):
            text = self._codec.packet(text)
        if self._raw_send is not None:
            return self._raw_send({"type": "websocket.send", "text": text})  # type: ignore[no-any-return]
        return self._queued(text)

    async def sent(self) -> None:
        """Wait until Engine.IO's writer has taken everything queued so far (at most :data:`ABORT_AFTER_S`;
        a session that closed meanwhile is let go)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ABORT_AFTER_S):
                await self._socket.queue.join()

    async def _queued(self, text: str) -> None:
        try:
            await self._socket.send(eio_packet.Packet(eio_packet.MESSAGE, data=text[1:]))
        except EngineIOError as exc:  # the session is closed: the connection's writer stops
            raise ConnectionError(f"socket.io session closed: {exc!r}") from None

    async def close(self, code: int, reason: str) -> None:
        """Say ``closing {code, reason}``, disconnect, close Engine.IO, waiting at most
        :data:`ABORT_AFTER_S`. On an error code (or a session that did not take all that in time) what was
        still queued is dropped first and the websocket itself is then closed with the code, as ``/ws``
        closes."""
        socket = self._socket
        queue: asyncio.Queue[Any] = socket.queue
        error = code not in (CLOSE_NORMAL, CLOSE_GOING_AWAY)
        if error:
            _drop(queue)
        closing = event_packet("closing", {"code": code, "reason": reason})
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, data=closing[1:]))
        try:
            async with asyncio.timeout(ABORT_AFTER_S):
                await self._disconnect()
                await socket.close(wait=True)
        except TimeoutError:
            log.info("socket.io session %s did not take its close in time; closing its websocket", socket.sid)
            error = True
        except EngineIOError:
            pass  # already closed
        if error:  # as /ws: the websocket itself is closed with the code, whether or not the client reads
            await self.abort(code, reason)

    async def abort(self, code: int, reason: str) -> None:
        if self._raw_send is None:
            return  # long-polling: Engine.IO ends the session at its ping timeout
        with contextlib.suppress(OSError, RuntimeError):
            await self._raw_send({"type": "websocket.close", "code": code, "reason": reason})


def _drop(queue: asyncio.Queue[Any]) -> None:
    """Empty Engine.IO's queue of a session, keeping its end-of-stream marker (``None``) if it has one."""
    ended = False
    while not queue.empty():
        ended |= queue.get_nowait() is None
        queue.task_done()
    if ended:
        queue.put_nowait(None)
