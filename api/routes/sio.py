"""``/socket.io/``: TickStock's Socket.IO events over the hub's fan-out (protocol: ``docs/socketio.md``).

Each Socket.IO session is one :class:`hub.connection.Connection` of the same :class:`hub.fanout.FanOut`
as ``/ws`` (its frames reach the session through :class:`api.sio_wire.SessionWire`), so filters, universe
resolution (``my`` too), resume, bounded outboxes and slow-consumer closes are the fan-out's own. This
module authenticates at connect and answers events; every reply goes through the connection's outbox, so
replies and alerts keep one order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import socketio
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from api.auth import AuthError
from api.authlimit import client_address, limiter_for
from api.errors import problem_for
from api.routes.ws import READ_SCOPE, REASON_INVALID_TOKEN, REASON_TOO_MANY_FAILURES, REASON_UNAVAILABLE
from api.settings import Settings
from api.sio_server import HubSocketServer, build_server, socketio_asgi
from api.sio_wire import AlertCodec, SessionWire, event_packet
from hub.connection import Connection
from hub.errors import HubError
from hub.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_TOO_MANY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    ERROR_BAD_FRAME,
    ERROR_INVALID,
    ERROR_INVALID_FILTER,
    ERROR_UNKNOWN_SUBSCRIPTION,
)
from hub.subscriptions import MAX_FILTER_PATTERNS, Filter
from hub.text import escape

__all__ = ["CLIENT_EVENTS", "ERROR_UNKNOWN_EVENT", "PATTERNS_SUBSCRIPTION", "mount"]

log = logging.getLogger("tickstock.socketio")

ERROR_UNKNOWN_EVENT = "unknown_event"
PATTERNS_SUBSCRIPTION = "patterns"  # the subscription id of upstream's subscribe_patterns
REASON_NO_TOKEN = "a token is required: connect with auth {token: ...}"

SubId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PatternsBody(_Body):
    patterns: Annotated[list[Text], Field(max_length=MAX_FILTER_PATTERNS)] = []


class SubscribeBody(_Body):
    id: SubId
    filter: Filter = Filter()
    since: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None


class UnsubscribeBody(_Body):
    id: SubId


class EventError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _parse(model: type[_Body], data: Any) -> Any:
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        errors = exc.errors()
        code = ERROR_INVALID_FILTER if any(e["loc"][:1] == ("filter",) for e in errors) else ERROR_INVALID
        brief = "; ".join(
            f"{'.'.join(str(p)[:40] for p in e['loc'][:6]) or 'data'}: {e['msg']}" for e in errors[:5]
        )
        raise EventError(code, brief) from None


def _send(conn: Connection, name: str, body: Any) -> None:
    conn.offer(event_packet(name, body))


class Refused(socketio.exceptions.ConnectionRefusedError):  # type: ignore[misc]
    """A refused connect: the client's ``connect_error`` has ``message`` and ``data: {code}``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason, {"code": code})


Handler = Callable[[Connection, Any], Awaitable[None]]


async def _confirm(conn: Connection, wire: SessionWire, body: dict[str, Any]) -> None:
    await wire.sent()
    _send(conn, "connection_confirmed", body)


def mount(app: Starlette, settings: Settings) -> HubSocketServer:
    """Serve Socket.IO at ``/socket.io/`` on ``app``'s fan-out; returns the server (its owner calls
    ``shutdown()`` when the app stops)."""
    server = build_server(settings)
    codec = AlertCodec()
    sessions: dict[str, Connection] = {}
    confirming: set[asyncio.Task[None]] = set()

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        state = app.state
        fanout = state.hub.fanout
        if fanout is None or not fanout.accepting:
            raise Refused(CLOSE_GOING_AWAY, "this hub node is not serving websockets")
        if fanout.full:
            raise Refused(CLOSE_TOO_MANY, "too many connections on this node; try another")
        scope = environ["asgi.scope"]
        address = client_address(HTTPConnection(scope))

        async def charge() -> bool:
            decision = await limiter_for(state).charge(state.hub.redis, address, transport="ws")
            return decision.allowed

        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not 0 < len(token) <= 8192:
            if not await charge():
                raise Refused(CLOSE_TOO_MANY, REASON_TOO_MANY_FAILURES)
            raise Refused(CLOSE_UNAUTHORIZED, REASON_NO_TOKEN)
        try:
            principal = await state.auth.verify(token)
        except AuthError as exc:
            log.info("socket.io token refused (%d): %s", exc.status, escape(exc.detail))
            if exc.status != 401:
                raise Refused(CLOSE_TRY_AGAIN, REASON_UNAVAILABLE) from None
            if not await charge():
                raise Refused(CLOSE_TOO_MANY, REASON_TOO_MANY_FAILURES) from None
            raise Refused(CLOSE_UNAUTHORIZED, REASON_INVALID_TOKEN) from None
        if not principal.has(READ_SCOPE):
            raise Refused(CLOSE_FORBIDDEN, f"this needs the {READ_SCOPE!r} scope")
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        wire = SessionWire(
            socket=server.eio.sockets[eio_sid],
            codec=codec,
            disconnect=lambda: server.disconnect(sid),
            raw_send=environ["asgi.send"] if scope["type"] == "websocket" else None,
        )
        conn = fanout.connect(wire, heartbeat=False)
        conn.subject, conn.scopes, conn.expires_at = principal.subject, principal.scopes, principal.expires_at
        sessions[sid] = conn
        confirmed = {
            "user_id": principal.subject,
            "session_id": sid,
            "server_time": time.time(),
            "status": "connected",
            "node": fanout.node,
            "head": fanout.head,
            "expires_at": principal.expires_at,
            "limits": fanout.limits.as_dict(),
        }
        # python-socketio acknowledges the connect (through Engine.IO's queue) after this handler returns;
        # say hello once its writer has taken that acknowledgement, since alerts may go straight out.
        task = asyncio.create_task(_confirm(conn, wire, confirmed), name="socketio-confirm")
        confirming.add(task)
        task.add_done_callback(confirming.discard)

    async def disconnect(sid: str, reason: Any = None) -> None:
        conn = sessions.pop(sid, None)
        if conn is not None and app.state.hub.fanout is not None:
            app.state.hub.fanout.disconnect(conn)

    async def subscribe_patterns(conn: Connection, data: Any) -> None:
        body: PatternsBody = _parse(PatternsBody, data)
        reply = await app.state.hub.fanout.subscribe(
            conn, PATTERNS_SUBSCRIPTION, Filter(patterns=body.patterns), None
        )
        _send(
            conn,
            "subscription_confirmed",
            {
                "patterns": body.patterns,
                "count": len(body.patterns),
                "timestamp": time.time(),
                "id": PATTERNS_SUBSCRIPTION,
                "head": reply["head"],
            },
        )

    async def subscribe(conn: Connection, data: Any) -> None:
        body: SubscribeBody = _parse(SubscribeBody, data)
        reply = await app.state.hub.fanout.subscribe(conn, body.id, body.filter, body.since)
        del reply["op"]
        _send(conn, "subscribed", reply)

    async def unsubscribe(conn: Connection, data: Any) -> None:
        sub_id = _parse(UnsubscribeBody, data).id
        if not app.state.hub.fanout.unsubscribe(conn, sub_id):
            raise EventError(ERROR_UNKNOWN_SUBSCRIPTION, f"no subscription {sub_id!r} on this connection")
        _send(conn, "unsubscribed", {"id": sub_id})

    async def heartbeat(conn: Connection, data: Any) -> None:
        _send(conn, "heartbeat_ack", {"timestamp": time.time()})

    handlers: dict[str, Handler] = {
        "subscribe_patterns": subscribe_patterns,
        "subscribe": subscribe,
        "unsubscribe": unsubscribe,
        "heartbeat": heartbeat,
    }

    def error(conn: Connection, code: str, message: str, sub_id: Any = None) -> None:
        body: dict[str, Any] = {"code": code, "message": message}
        if isinstance(sub_id, str):
            body["id"] = sub_id
        _send(conn, "error", body)

    async def any_event(event: Any, sid: str, *args: Any) -> None:
        conn = sessions.get(sid)
        if conn is None or conn.close_code is not None:
            return
        handler = handlers.get(event) if isinstance(event, str) else None
        if handler is None:
            name = str(event)[:40]
            error(conn, ERROR_UNKNOWN_EVENT, f"unknown event {name!r} (known: {', '.join(CLIENT_EVENTS)})")
            return
        data = args[0] if args else None
        sub_id = data.get("id") if isinstance(data, dict) else None
        if len(args) > 1:
            error(conn, ERROR_INVALID, "an event carries one argument: an object", sub_id)
            return
        conn.last_received = time.monotonic()
        try:
            await handler(conn, data)
        except EventError as exc:
            error(conn, exc.code, exc.message, sub_id)
        except HubError as exc:
            found = problem_for(exc)
            if found is None or found.ws_code is None:
                log.exception("socket.io event %s failed", event)
                conn.close(CLOSE_INTERNAL, "internal error")
                return
            error(conn, found.ws_code, str(exc), sub_id)
        except Exception:
            log.exception("socket.io event %s failed", event)
            conn.close(CLOSE_INTERNAL, "internal error")

    async def bad_packet(eio_sid: str, message: str) -> None:
        sid = server.manager.sid_from_eio_sid(eio_sid, "/")
        conn = sessions.get(sid) if sid is not None else None
        if conn is not None:
            error(conn, ERROR_BAD_FRAME, message)

    server.on("connect", connect)
    server.on("disconnect", disconnect)
    server.on("*", any_event)
    server.on_bad_packet = bad_packet
    app.router.routes.insert(0, Mount("/socket.io", app=socketio_asgi(server)))
    return server


CLIENT_EVENTS = ("subscribe_patterns", "subscribe", "unsubscribe", "heartbeat")
