"""uvicorn's server, with the hub's own goodbye to websocket clients."""

from __future__ import annotations

import socket

import uvicorn

__all__ = ["HubServer"]


class HubServer(uvicorn.Server):
    """On shutdown, first lets the fan-out drain and close every websocket with 1001 ("going away",
    resume elsewhere), then shuts down as uvicorn does (which would otherwise close them with 1012)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        hub = getattr(state, "hub", None)
        fanout = getattr(hub, "fanout", None)
        if fanout is not None:
            await fanout.go_away()
        await super().shutdown(sockets)
