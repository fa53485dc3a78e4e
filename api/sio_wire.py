"""How one Socket.IO session takes what the fan-out sends: the :data:`hub.connection.Send` of that session.

The fan-out writes ``/ws`` frames to each :class:`hub.connection.Connection`; for a Socket.IO session this
adapter turns them into Socket.IO packets and puts them on Engine.IO's queue of the session. That queue is
bounded (``TICKSTOCK_SOCKETIO_QUEUE_PACKETS``, :mod:`api.sio_server`): when it is full the send waits, the
connection's own outbox fills behind it, and a full outbox (or a frame waiting over
``TICKSTOCK_WS_QUEUE_AGE_S``) closes the session with 4409, exactly as on ``/ws``.

* ``{"op":"event",…}`` becomes a ``pattern_alert`` packet in upstream's shape; it is translated once per
  frame and shared by every session that gets the same frame (:class:`AlertCodec`);
* every other frame offered to the connection is already an encoded Socket.IO packet (the replies of
  :mod:`api.routes.sio`), so replies and events keep one order;
* a close is a ``closing`` event ``{code, reason}``, a Socket.IO disconnect and an Engine.IO close; a
  session that does not take them within :data:`ABORT_AFTER_S` has its websocket closed with the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import MutableMapping
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
_PING_PREFIX = '{"op":"ping",'


def event_packet(name: str, body: Any) -> str:
    """The Socket.IO EVENT packet (default namespace) that emits ``name`` with ``body``."""
    return "2" + json.dumps([name, body], separators=(",", ":"))


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

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "websocket.send":
            text: str = message["text"]
            if text.startswith(_EVENT_PREFIX):
                text = self._codec.packet(text)
            elif text.startswith(_PING_PREFIX):
                return  # Engine.IO pings the session itself (the fan-out does not ping these)
            try:
                await self._socket.send(eio_packet.Packet(eio_packet.MESSAGE, data=text))
            except EngineIOError as exc:  # the session is closed: the connection's writer stops
                raise ConnectionError(f"socket.io session closed: {exc!r}") from None
            return
        await self.close(int(message.get("code", CLOSE_NORMAL)), str(message.get("reason", "")))

    async def close(self, code: int, reason: str) -> None:
        """Say ``closing {code, reason}``, disconnect, close Engine.IO; on an error code what is still
        queued is dropped first (as ``/ws`` drops its outbox). Waits at most :data:`ABORT_AFTER_S`,
        then closes the websocket itself."""
        socket = self._socket
        queue: asyncio.Queue[Any] = socket.queue
        if code not in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
            _drop(queue)
        closing = event_packet("closing", {"code": code, "reason": reason})
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, data=closing))
        try:
            async with asyncio.timeout(ABORT_AFTER_S):
                await self._disconnect()
                await socket.close(wait=True)
        except TimeoutError:
            log.info("socket.io session %s did not take its close in time; closing its websocket", socket.sid)
            await self.abort(code, reason)
        except EngineIOError:
            pass  # already closed

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
