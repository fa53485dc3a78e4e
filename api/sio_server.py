"""The Socket.IO server at ``/socket.io/``: python-socketio's ASGI server with the hub's bounds.

What python-socketio and Engine.IO leave open is closed here, once:

* Engine.IO's per-session send queue is bounded (``TICKSTOCK_SOCKETIO_QUEUE_PACKETS``), so a session
  that stops reading backs up into the fan-out's bounded outbox (:mod:`api.sio_wire`) instead of memory;
* a message or polling POST over ``TICKSTOCK_SOCKETIO_MAX_PACKET_BYTES`` ends the session (Engine.IO);
* JSON in packets is parsed with a nesting bound (:func:`api.jsonbound.loads_bounded`), so deep nesting
  is a malformed packet, not a ``RecursionError``;
* a websocket message that is not an Engine.IO packet ends the session (the ASGI wrapper), and a
  malformed Socket.IO packet or a binary one (attachments are not part of this protocol) gets an
  ``error`` event with ``bad_frame``, as ``/ws`` answers a bad frame: never a traceback;
* events are handled one at a time per session, in arrival order (``async_handlers=False``): a flood
  waits for its own session, not for others;
* Engine.IO sessions (also those that never connect to the namespace) are capped at
  ``TICKSTOCK_WS_MAX_CONNECTIONS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
import socketio
from starlette.types import ASGIApp, Receive, Scope, Send

from api.jsonbound import MAX_DEPTH, loads_bounded
from api.requestid import SERVER_SEND
from api.settings import Settings

__all__ = ["BoundedJson", "HubSocketServer", "socketio_asgi"]

log = logging.getLogger("tickstock.socketio")

_ENGINEIO_PACKET_TYPES = frozenset("0123456")
_BINARY_PACKET_TYPES = ("5", "6")  # Socket.IO BINARY_EVENT, BINARY_ACK
_NOT_A_PACKET = "not a Socket.IO packet with a JSON array of [event, data]"


class BoundedJson:
    """The ``json`` module python-socketio and Engine.IO are given: loads with a nesting bound."""

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return loads_bounded(text, max_depth=MAX_DEPTH)

    @staticmethod
    def dumps(value: Any, **kwargs: Any) -> str:
        return json.dumps(value, **kwargs)


class _BoundedEngineIO(engineio.AsyncServer):  # type: ignore[misc]
    """Engine.IO with a bounded send queue per session."""

    queue_packets = 64

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return asyncio.Queue(maxsize=self.queue_packets)

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "disconnect" and args[1:2] == (self.reason.CLIENT_DISCONNECT,):
            # The client's CLOSE packet ends the session without an answer to its pending long-poll
            # GET, which then waited out ping_interval + ping_timeout (or the client's own read timeout)
            # before the client's disconnect returned: answer it now (empty; a websocket's writer stops).
            socket = self.sockets.get(args[0])
            if socket is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    socket.queue.put_nowait(None)
        return await super()._trigger_event(event, *args, **kwargs)


BadPacket = Callable[[str, str], Awaitable[None]]


class HubSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """``socketio.AsyncServer`` with the bounds above. ``on_bad_packet(eio_sid, message)`` answers a
    malformed or binary packet (set by :mod:`api.routes.sio`)."""

    def __init__(self, *, queue_packets: int, max_sessions: int, **kwargs: Any) -> None:
        self._queue_packets = queue_packets
        super().__init__(**kwargs)
        self.max_sessions = max_sessions
        self.on_bad_packet: BadPacket | None = None

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        queue_packets = self._queue_packets

        class Bounded(_BoundedEngineIO):
            pass

        Bounded.queue_packets = queue_packets
        return Bounded

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> bool | None:
        if len(self.eio.sockets) > self.max_sessions:
            log.info("socket.io session refused: %d sessions on this node", len(self.eio.sockets) - 1)
            return False
        await super()._handle_eio_connect(eio_sid, environ)
        return None

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, bytes) or (isinstance(data, str) and data.startswith(_BINARY_PACKET_TYPES)):
            self._binary_packet.pop(eio_sid, None)
            await self._bad_packet(eio_sid, "binary packets are not part of the protocol; send JSON")
            return
        if not isinstance(data, str):  # Engine.IO decoded a message that is JSON, not a Socket.IO packet
            await self._bad_packet(eio_sid, _NOT_A_PACKET)
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            log.info("malformed socket.io packet from %s: %s", eio_sid, str(exc)[:120])
            await self._bad_packet(eio_sid, _NOT_A_PACKET)

    async def _bad_packet(self, eio_sid: str, message: str) -> None:
        if self.on_bad_packet is not None:
            await self.on_bad_packet(eio_sid, message)


def _origins(value: str) -> str | list[str] | None:
    """``TICKSTOCK_SOCKETIO_CORS_ORIGINS`` as python-socketio takes it: ``None`` is same-origin."""
    items = [o.strip() for o in value.split(",") if o.strip()]
    if not items:
        return None
    return "*" if "*" in items else items


def build_server(settings: Settings) -> HubSocketServer:
    return HubSocketServer(
        queue_packets=settings.socketio_queue_packets,
        max_sessions=settings.ws_max_connections,
        async_mode="asgi",
        async_handlers=False,
        json=BoundedJson,
        transports=[t.strip() for t in settings.socketio_transports.split(",")],
        cors_allowed_origins=_origins(settings.socketio_cors_origins),
        ping_interval=settings.socketio_ping_interval_s,
        ping_timeout=settings.socketio_ping_timeout_s,
        max_http_buffer_size=settings.socketio_max_packet_bytes,
        logger=False,
        engineio_logger=False,
    )


def socketio_asgi(server: HubSocketServer) -> ASGIApp:
    """The ASGI app to mount at ``/socket.io``. On a websocket it writes with the server's own send (as
    ``/ws`` does: no middleware per frame) and ends a session whose message is not an Engine.IO packet."""
    inner = socketio.ASGIApp(server, socketio_path=None)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await inner(scope, receive, send)
            return

        async def checked() -> dict[str, Any]:
            message: dict[str, Any] = dict(await receive())
            text = message.get("text")
            if (
                message["type"] == "websocket.receive"
                and text is not None
                and text[:1] not in _ENGINEIO_PACKET_TYPES
            ):
                log.info("socket.io websocket sent a message that is not an Engine.IO packet; closing it")
                return {"type": "websocket.disconnect", "code": 1003}
            return message

        await inner(scope, checked, scope.get(SERVER_SEND, send))

    return app
