"""Request ids: one per HTTP request or websocket, in the ``X-Request-ID`` response header, in every
problem document (``request_id``) and in every log line written while the request is handled.

A caller's own ``X-Request-ID`` is kept when it is a sane token (1-128 visible ASCII characters), so
an id can follow a request across services; otherwise the hub makes one.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HEADER", "SERVER_SEND", "RequestIdLogFilter", "RequestIdMiddleware", "current_request_id"]

HEADER = "x-request-id"
_VALID = re.compile(r"[!-~]{1,128}")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("tickstock_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _current.get()


SERVER_SEND = "tickstock.server_send"


class RequestIdMiddleware:
    """Pure ASGI middleware (no body buffering, works for websockets too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), "")
        request_id = incoming if _VALID.fullmatch(incoming) else secrets.token_hex(8)
        token = _current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                headers.append((HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if scope["type"] == "websocket":
            # The websocket fan-out writes frames through the server's own send once the socket is
            # accepted (only the accept carries the header): one call less per frame.
            scope[SERVER_SEND] = send  # in place: a copy of the scope per idle socket costs memory
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
            # The server's send is its protocol's bound method, and the protocol holds the scope:
            # left in place, the pair would wait for the cyclic garbage collector.
            scope.pop(SERVER_SEND, None)


class RequestIdLogFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) for log formats that show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or "-"
        return True
