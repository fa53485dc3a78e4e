"""Serving the hub: the open hub's app under uvicorn on a socket bound before anything starts."""

from __future__ import annotations

import contextlib
import gc
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from api.app import create_app, open_hub
from api.cli.console import say
from api.server import HubServer
from api.settings import Settings
from api.state import HubState
from api.wsdeflate import FrameMemo, register_metrics, shared_deflate_protocol
from hub.metrics import Registry

__all__ = ["SHUTDOWN_GRACE_S", "serve", "server_config"]

SHUTDOWN_GRACE_S = 10
GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython default: 700)


class _Server(HubServer):
    """uvicorn, minus re-raising the captured signal after shutdown: the CLI still has resources to
    close in order (hub, then embedded servers) when ``serve()`` returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)  # connections queue from now on, before uvicorn starts accepting
    sock.set_inheritable(True)
    return sock


def server_config(app: Any, settings: Settings, *, registry: Registry | None = None) -> uvicorn.Config:
    """uvicorn's configuration for serving ``app``. Forwarded headers (``X-Forwarded-Proto``/``-For``)
    are believed from ``settings.forwarded_allow_ips`` only (uvicorn's default when None).

    Websocket compression follows ``settings.ws_compression`` (:mod:`api.wsdeflate`): uvicorn's own
    permessage-deflate (one compressor per connection) is never offered; ``shared`` installs the
    shared compressor, whose counters go into ``registry`` when given."""
    ws: Any = "auto"
    if settings.ws_compression == "shared":
        memo = FrameMemo()
        ws = shared_deflate_protocol(memo)
        if registry is not None:
            register_metrics(memo, registry)
    return uvicorn.Config(
        app,
        ws=ws,
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ws_max_size=1 << 20,
        server_header=False,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


async def serve(
    settings: Settings,
    *,
    extras: Callable[[HubState], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Open the hub's resources, then serve HTTP and websockets until SIGINT/SIGTERM. ``extras`` is
    entered with the open hub before serving and left after (the demo feed in ``run``)."""
    sock = _bind(settings.host, settings.port)
    try:
        async with open_hub(settings) as hub, extras(hub) if extras else contextlib.nullcontext():
            app = create_app(settings, hub=hub)
            server = _Server(server_config(app, settings, registry=hub.metrics.registry))
            say(f"serving on http://{settings.host}:{settings.port}  (Ctrl-C to stop)")
            if ready is not None:
                ready()
            _tune_gc()
            await server.serve(sockets=[sock])
            say("http server stopped; closing the hub ...")
    finally:
        sock.close()


def _tune_gc() -> None:
    """What start-up built lives as long as the process: move it out of the collector's sight, and
    collect the young generation less often. A full collection over every connection's objects
    otherwise pauses the event loop for tens of milliseconds, the websocket tail latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 50)
