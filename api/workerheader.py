"""``X-TickStock-Worker: <index> (pid <pid>)`` on every response and websocket handshake of one of a node's
``--workers`` processes: which worker answered (the port is shared)."""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["WORKER_HEADER", "WorkerHeaderMiddleware"]

WORKER_HEADER = "X-TickStock-Worker"


class WorkerHeaderMiddleware:
    """Adds the header to ``http.response.start`` and ``websocket.accept``."""

    def __init__(self, app: ASGIApp, *, worker: int) -> None:
        self.app = app
        self.header = (WORKER_HEADER.lower().encode(), f"{worker} (pid {os.getpid()})".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, sending)
