"""``/ws``: the realtime feed (protocol: ``docs/websocket.md``; the fan-out itself: :mod:`hub.fanout`).

This module reads frames and answers ops; it never writes to the socket itself. Every frame it sends
goes through the connection's outbox, so replies and events keep one order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from api.auth import Authenticator, AuthError, Principal
from api.authlimit import client_address, limiter_for
from api.errors import problem_for
from api.jsonbound import MAX_DEPTH, JsonTooDeep, loads_bounded
from api.requestid import SERVER_SEND
from api.state import HubState
from api.wsraw import raw_writer
from hub.connection import Connection
from hub.errors import HubError
from hub.fanout import FanOut
from hub.protocol import (
    CLIENT_OPS,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    ERROR_BAD_FRAME,
    ERROR_FORBIDDEN,
    ERROR_INVALID,
    ERROR_INVALID_FILTER,
    ERROR_UNAUTHENTICATED,
    ERROR_UNKNOWN_OP,
    ERROR_UNKNOWN_SUBSCRIPTION,
)
from hub.subscriptions import Filter
from hub.text import escape

__all__ = ["MAX_FRAME_CHARS", "routes"]

log = logging.getLogger("tickstock.ws")

MAX_FRAME_CHARS = 64 * 1024
READ_SCOPE = "patterns:read"
# Close reasons and refusals never quote the token (its alg, kid, sub, claims): the detail goes to the log.
REASON_INVALID_TOKEN = "invalid token"
REASON_UNAVAILABLE = "authentication is unavailable; try again later"
REASON_TOO_MANY_FAILURES = "too many failed authentications from this address; retry later"

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
        where = ".".join(str(p)[:40] for p in err["loc"][:6]) or "frame"  # keys come from the client
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Session:
    """The ops of one connection, handled one at a time in arrival order."""

    __slots__ = ("auth", "charge", "conn", "fanout")

    def __init__(
        self,
        conn: Connection,
        fanout: FanOut,
        auth: Authenticator,
        charge: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.conn, self.fanout, self.auth = conn, fanout, auth
        self.charge = charge  # a failed authentication from this client's address; False: over its limit

    async def refused(self, exc: AuthError) -> bool:
        """Log a refused token (escaped) and charge the address; False when the address is over its
        limit of failed authentications (the connection is then closed with 4429)."""
        log.info("websocket token refused (%d): %s", exc.status, escape(exc.detail))
        if exc.status != 401 or self.charge is None or await self.charge():
            return True
        self.conn.close(CLOSE_TOO_MANY, REASON_TOO_MANY_FAILURES)
        return False

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
            if await self.refused(exc):
                if exc.status == 401:
                    self.conn.close(CLOSE_UNAUTHORIZED, REASON_INVALID_TOKEN)
                else:
                    self.conn.close(CLOSE_TRY_AGAIN, REASON_UNAVAILABLE)
            return False
        if not principal.has(READ_SCOPE):
            self.conn.close(CLOSE_FORBIDDEN, f"this needs the {READ_SCOPE!r} scope")
            return False
        self._grant(principal)
        self.conn.send_json(
            {
                "op": "welcome",
                "node": self.fanout.node,
                "head": self.fanout.head,
                "subject": principal.subject,
                "expires_at": principal.expires_at,
                "limits": self.fanout.limits.as_dict(),
            }
        )
        return True

    def _grant(self, principal: Principal) -> None:
        self.conn.subject = principal.subject
        self.conn.scopes = principal.scopes
        self.conn.expires_at = principal.expires_at

    async def handle(self, text: str) -> None:
        try:
            frame = loads_bounded(text, max_depth=MAX_DEPTH, unique_keys=True)
        except JsonTooDeep:
            raise OpError(ERROR_BAD_FRAME, f"JSON nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:
            raise OpError(ERROR_BAD_FRAME, f"not JSON: {str(exc)[:120]}") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
            raise OpError(ERROR_BAD_FRAME, "a frame must be a JSON object with a string 'op'")
        op_id = frame.get("id")
        try:
            await self._handle(frame)
        except OpError as exc:
            exc.op_id = op_id if isinstance(op_id, str) else None
            raise
        except HubError as exc:  # a domain error: the one table (api.errors) names its error frame
            found = problem_for(exc)
            code = found.ws_code if found is not None else None
            if code is None:
                raise
            error = OpError(code, str(exc))
            error.op_id = op_id if isinstance(op_id, str) else None
            raise error from None

    async def _handle(self, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op not in CLIENT_OPS:
            raise OpError(ERROR_UNKNOWN_OP, f"unknown op {op[:40]!r} (known: {', '.join(CLIENT_OPS)})")
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
            code = (
                ERROR_INVALID_FILTER
                if any(e["loc"][:1] == ("filter",) for e in exc.errors())
                else ERROR_INVALID
            )
            raise OpError(code, _brief(exc)) from None

    async def _refresh(self, token: str) -> None:
        try:
            principal = await self.auth.verify(token)
        except AuthError as exc:
            if not await self.refused(exc):
                return
            raise OpError(ERROR_UNAUTHENTICATED, "the new token is not valid") from None
        if principal.subject != self.conn.subject:
            raise OpError(ERROR_FORBIDDEN, "the new token is for another subject")
        if not principal.has(READ_SCOPE):
            raise OpError(ERROR_FORBIDDEN, f"the new token lacks the {READ_SCOPE!r} scope")
        self._grant(principal)
        self.conn.send_json({"op": "refreshed", "expires_at": principal.expires_at})

    async def _subscribe(self, op: SubscribeOp) -> None:
        reply = await self.fanout.subscribe(self.conn, op.id, op.filter, op.since)
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
    send = websocket.scope.get(SERVER_SEND, websocket.send)
    conn = fanout.connect(send, wire=raw_writer(send))
    state = websocket.app.state
    address = client_address(websocket)

    async def charge() -> bool:
        decision = await limiter_for(state).charge(hub.redis, address, transport="ws")
        return decision.allowed

    session = Session(conn, fanout, state.auth, charge)
    try:
        token = _token(websocket)
        if token is None and not await charge():  # an unauthenticated open costs as a failure does
            log.info("websocket from %s refused: too many unauthenticated opens", escape(address))
            conn.close(CLOSE_TOO_MANY, REASON_TOO_MANY_FAILURES)
            await conn.closed()
            return
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
