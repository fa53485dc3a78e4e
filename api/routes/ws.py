"""``/ws``: the realtime feed (protocol: ``docs/websocket.md``; the fan-out itself: :mod:`hub.fanout`).

This module reads frames and answers ops; it never writes to the socket itself. Every frame it sends
goes through the connection's outbox, so replies and events keep one order.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from api.auth import Authenticator, AuthError, Principal
from api.requestid import SERVER_SEND
from api.state import HubState
from hub.connection import Connection
from hub.fanout import FanOut, FilterError
from hub.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    ERROR_BAD_FRAME,
    ERROR_FORBIDDEN,
    ERROR_INVALID,
    ERROR_INVALID_FILTER,
    ERROR_TOO_MANY_SUBSCRIPTIONS,
    ERROR_UNAUTHENTICATED,
    ERROR_UNKNOWN_OP,
    ERROR_UNKNOWN_SUBSCRIPTION,
)
from hub.subscriptions import Filter

__all__ = ["MAX_FRAME_CHARS", "routes"]

log = logging.getLogger("tickstock.ws")

MAX_FRAME_CHARS = 64 * 1024
READ_SCOPE = "patterns:read"
OPS = ("auth", "refresh", "subscribe", "unsubscribe", "ping", "pong")

SubId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AuthOp(_Op):
    op: Literal["auth", "refresh"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class SubscribeOp(_Op):
    op: Literal["subscribe"]
    id: SubId
    filter: Filter = Filter()
    since: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None


class UnsubscribeOp(_Op):
    op: Literal["unsubscribe"]
    id: SubId


class PingOp(_Op):
    op: Literal["ping", "pong"]
    ts: Any = None


class OpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.op_id: str | None = None  # the failing op's id, when the frame had a string one


def _brief(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "frame"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Session:
    """The ops of one connection, handled one at a time in arrival order."""

    __slots__ = ("auth", "conn", "fanout")

    def __init__(self, conn: Connection, fanout: FanOut, auth: Authenticator) -> None:
        self.conn, self.fanout, self.auth = conn, fanout, auth

    def error(self, code: str, message: str, op_id: str | None = None) -> None:
        frame: dict[str, Any] = {"op": "error", "code": code, "message": message}
        if op_id is not None:
            frame["id"] = op_id
        self.conn.send_json(frame)

    async def authenticate(self, token: str) -> bool:
        """Verify the first token; a bad one closes the connection (4401/4403)."""
        try:
            principal = await self.auth.verify(token)
        except AuthError as exc:
            self.conn.close(CLOSE_UNAUTHORIZED, str(exc.detail))
            return False
        if not principal.has(READ_SCOPE):
            self.conn.close(CLOSE_FORBIDDEN, f"this needs the {READ_SCOPE!r} scope")
            return False
        self._grant(principal)
        self.conn.send_json({"op": "welcome", "node": self.fanout.node, "head": self.fanout.head,
                             "subject": principal.subject, "expires_at": principal.expires_at,
                             "limits": self.fanout.limits.as_dict()})
        return True

    def _grant(self, principal: Principal) -> None:
        self.conn.subject = principal.subject
        self.conn.scopes = principal.scopes
        self.conn.expires_at = principal.expires_at

    async def handle(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError as exc:
            raise OpError(ERROR_BAD_FRAME, f"not JSON: {exc}") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
            raise OpError(ERROR_BAD_FRAME, "a frame must be a JSON object with a string 'op'")
        try:
            await self._handle(frame)
        except OpError as exc:
            op_id = frame.get("id")
            exc.op_id = op_id if isinstance(op_id, str) else None
            raise

    async def _handle(self, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op not in OPS:
            raise OpError(ERROR_UNKNOWN_OP, f"unknown op {op[:40]!r} (known: {', '.join(OPS)})")
        if op in ("ping", "pong"):
            ping = self._parse(PingOp, frame)
            if op == "ping":
                self.conn.send_json({"op": "pong", "ts": ping.ts, "head": self.fanout.head})
            return
        if op == "auth":
            token = self._parse(AuthOp, frame).token
            if self.conn.authenticated:
                raise OpError(ERROR_INVALID, "already authenticated; use 'refresh' to replace the token")
            await self.authenticate(token)
            return
        if not self.conn.authenticated:
            raise OpError(ERROR_UNAUTHENTICATED, "send {'op': 'auth', 'token': …} first")
        if op == "refresh":
            await self._refresh(self._parse(AuthOp, frame).token)
        elif op == "subscribe":
            await self._subscribe(self._parse(SubscribeOp, frame))
        else:
            sub_id = self._parse(UnsubscribeOp, frame).id
            if not self.fanout.unsubscribe(self.conn, sub_id):
                raise OpError(ERROR_UNKNOWN_SUBSCRIPTION, f"no subscription {sub_id!r} on this connection")
            self.conn.send_json({"op": "unsubscribed", "id": sub_id})

    @staticmethod
    def _parse(model: type[_Op], frame: dict[str, Any]) -> Any:
        try:
            return model.model_validate(frame)
        except ValidationError as exc:
            code = ERROR_INVALID_FILTER if any(e["loc"][:1] == ("filter",) for e in exc.errors()) else ERROR_INVALID
            raise OpError(code, _brief(exc)) from None

    async def _refresh(self, token: str) -> None:
        try:
            principal = await self.auth.verify(token)
        except AuthError as exc:
            raise OpError(ERROR_UNAUTHENTICATED, f"the new token is not valid: {exc.detail}") from None
        if principal.subject != self.conn.subject:
            raise OpError(ERROR_FORBIDDEN, "the new token is for another subject")
        if not principal.has(READ_SCOPE):
            raise OpError(ERROR_FORBIDDEN, f"the new token lacks the {READ_SCOPE!r} scope")
        self._grant(principal)
        self.conn.send_json({"op": "refreshed", "expires_at": principal.expires_at})

    async def _subscribe(self, op: SubscribeOp) -> None:
        try:
            reply = await self.fanout.subscribe(self.conn, op.id, op.filter, op.since)
        except FilterError as exc:
            raise OpError(ERROR_INVALID_FILTER, str(exc)) from None
        except OverflowError as exc:
            raise OpError(ERROR_TOO_MANY_SUBSCRIPTIONS, str(exc)) from None
        self.conn.send_json(reply)


def _token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return websocket.query_params.get("token") or None


async def feed(websocket: WebSocket) -> None:
    hub: HubState = websocket.app.state.hub
    fanout = hub.fanout
    await websocket.accept()
    if fanout is None or not fanout.accepting:
        await websocket.close(CLOSE_GOING_AWAY, "this hub node is not serving websockets")
        return
    if fanout.full:
        await websocket.close(CLOSE_TOO_MANY, "too many connections on this node; try another")
        return
    conn = fanout.connect(websocket.scope.get(SERVER_SEND, websocket.send))
    session = Session(conn, fanout, websocket.app.state.auth)
    try:
        token = _token(websocket)
        if token is not None and not await session.authenticate(token):
            await conn.closed()
            return
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            conn.last_received = time.monotonic()
            if conn.close_code is not None:
                continue  # closing: wait for the client's close
            text = message.get("text")
            if text is None:
                session.error(ERROR_BAD_FRAME, "binary frames are not part of the protocol; send JSON text")
                continue
            if len(text) > MAX_FRAME_CHARS:
                conn.close(CLOSE_TOO_BIG, f"frames are limited to {MAX_FRAME_CHARS} characters")
                continue
            conn.busy = True
            try:
                await session.handle(text)
            except OpError as exc:
                session.error(exc.code, exc.message, exc.op_id)
            finally:
                conn.busy = False
                conn.last_received = time.monotonic()
    except Exception:
        log.exception("websocket session failed")
        conn.close(CLOSE_INTERNAL, "internal error")
        await conn.closed()
    finally:
        fanout.disconnect(conn)


routes = [WebSocketRoute("/ws", feed)]
