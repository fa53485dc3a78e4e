"""Serving the hub: the open hub's app under uvicorn on a socket bound before anything starts, in one
process or in ``--workers`` processes to which the supervisor hands the connections it accepts on it
(:mod:`api.cli.supervisor`, :mod:`api.cli.balancer`).

With several workers the node's once-only duties (ingest, upkeep, the bridge, the advisories, the demo
feed of ``run``) run in a process of their own, the primary, which serves no socket: a worker's event
loop is busy for milliseconds at a time writing an event to thousands of sockets, and the writer's
every step (fetch, insert, commit, publish, ack) waited for such a turn. Measured at 5,000 connections
on two cores, an event took 66-80 ms (p50) from its publish to the clean stream with the writer in a
serving worker, 6-8 ms in a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvicorn

from api import readiness
from api.app import create_app, open_hub
from api.cli.balancer import Balancer, Inlet
from api.cli.console import EXIT_ERROR, one_line, say
from api.cli.runtime import USER_ERRORS, configure_logging, loop_factory
from api.cli.supervisor import PRIMARY, Supervisor, die_with_parent
from api.redaction import redact_tokens
from api.server import HubServer
from api.settings import Settings
from api.state import HubState
from api.wsdeflate import FrameMemo, register_metrics, shared_deflate_protocol
from api.wsproto import LeanProtocol
from hub.metrics import Registry

__all__ = [
    "SHUTDOWN_GRACE_S",
    "Extras",
    "serve",
    "serve_primary",
    "serve_socket",
    "server_config",
    "worker_main",
]

log = logging.getLogger("tickstock.serve")

SHUTDOWN_GRACE_S = 10
READY_POLL_S = 0.1  # a worker's start-up: how often it looks whether it serves and its dependencies answer

# Entered with the open hub before serving and left after (the demo feed in `run`, the primary's only).
Extras = Callable[[HubState], contextlib.AbstractAsyncContextManager[Any]]
GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython default: 700)


class _Server(HubServer):
    """uvicorn, minus re-raising the captured signal after shutdown: the CLI still has resources to
    close in order (hub, then embedded servers) when ``serve()`` returns. ``accepting`` is set once it
    accepts connections. With an ``inlet`` it serves the connections the supervisor hands it
    (:mod:`api.cli.balancer`) instead of a listening socket."""

    def __init__(self, config: uvicorn.Config, *, inlet: Inlet | None = None) -> None:
        super().__init__(config)
        self.accepting = asyncio.Event()
        self._inlet = inlet
        if inlet is not None:
            self.server_state.connections = inlet.connections()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            if self._inlet is not None:
                self._inlet.open(self._handed)
            self.accepting.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._inlet is not None:
            self._inlet.close()
        await super().shutdown(sockets)

    def _handed(self, sock: socket.socket) -> None:
        asyncio.get_running_loop().create_task(self._connect(sock))

    def _protocol(self) -> asyncio.Protocol:
        """What uvicorn's own ``create_protocol`` makes for a connection it accepted."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _connect(self, sock: socket.socket) -> None:
        """Serve one handed connection as uvicorn serves one it accepted."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._protocol, sock)
        except OSError as exc:  # the client went away meanwhile
            log.debug("a handed connection could not be served: %s", exc)
            sock.close()

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
    shared compressor, whose counters go into ``registry`` when given. Either way the protocol is
    uvicorn's sans-I/O one with less memory per connection (:mod:`api.wsproto`)."""
    ws: Any = LeanProtocol
    if settings.ws_compression == "shared":
        memo = FrameMemo()
        ws = shared_deflate_protocol(memo)
        if registry is not None:
            register_metrics(memo, registry)
    config = uvicorn.Config(
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
    redact_tokens()  # after the Config: it sets up uvicorn's loggers
    return config


async def serve(
    settings: Settings,
    *,
    extras: Extras | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Open the hub's resources, then serve HTTP and websockets until SIGINT/SIGTERM. ``extras`` is
    entered with the open hub before serving and left after (the demo feed in ``run``).

    With ``settings.workers`` above one, a :class:`~api.cli.supervisor.Supervisor` serves the socket
    with that many processes instead, numbered from 1, beside the primary, process 0, which serves none
    (``extras`` run there; they must be picklable), and ``ready`` is called once every process is
    ready."""
    sock = _bind(settings.host, settings.port)
    try:
        if settings.workers == 1:
            await serve_socket(settings, sock, extras=extras, ready=ready)
            return
        if settings.socketio_enabled and "polling" in settings.socketio_transports:
            log.warning(
                "Socket.IO long-polling with %d workers: a poll that reaches another worker than its "
                "session's is refused and the client reconnects (no sticky sessions on one port); "
                "TICKSTOCK_SOCKETIO_TRANSPORTS=websocket for clients that connect with websockets only",
                settings.workers,
            )
        metrics = metrics_dir(settings)
        supervisor = Supervisor(
            workers=settings.workers + 1,  # and the primary
            target=worker_main,
            args=lambda index: (settings, index, metrics, extras if index == PRIMARY else None),
            balancer=Balancer(sock),
            metrics_dir=metrics,
            grace_s=SHUTDOWN_GRACE_S,
        )
        say(
            f"serving on http://{settings.host}:{settings.port} with {settings.workers} workers and a "
            "primary for ingest  (Ctrl-C to stop, SIGHUP restarts them one at a time)"
        )
        await supervisor.run(ready=ready)
        say("workers stopped; closing ...")
    finally:
        sock.close()


async def serve_socket(
    settings: Settings,
    sock: socket.socket | Inlet,
    *,
    extras: Extras | None = None,
    ready: Callable[[], None] | None = None,
    worker: int | None = None,
    metrics: Path | None = None,
) -> None:
    """Serve on the listening ``sock`` until SIGINT/SIGTERM: the one process, or ``worker`` of several,
    which serves what the supervisor hands it through its :class:`~api.cli.balancer.Inlet` and calls
    ``ready`` once it serves and its dependencies answer, as ``/health/ready``."""
    async with (
        open_hub(settings, worker=worker, metrics_dir=metrics) as hub,
        extras(hub) if extras else contextlib.nullcontext(),
    ):
        app = create_app(settings, hub=hub)
        config = server_config(app, settings, registry=hub.metrics.registry)
        server = _Server(config, inlet=sock if isinstance(sock, Inlet) else None)
        sockets = [sock] if isinstance(sock, socket.socket) else []
        if worker is None:  # the one process, as before workers
            say(f"serving on http://{settings.host}:{settings.port}  (Ctrl-C to stop)")
            if ready is not None:
                ready()
            _tune_gc()
            await server.serve(sockets=sockets)
            say("http server stopped; closing the hub ...")
            return
        _tune_gc()
        serving = asyncio.ensure_future(server.serve(sockets=sockets))
        if ready is not None:
            await _until_ready(server, serving, hub)
            if not serving.done():
                ready()
        await serving


async def serve_primary(
    settings: Settings,
    *,
    extras: Extras | None = None,
    ready: Callable[[], None] | None = None,
    metrics: Path | None = None,
) -> None:
    """The primary of several workers until SIGTERM: the open hub's once-only duties and ``extras``, no
    socket and no fan-out; ``ready`` is called once the dependencies answer (as ``/health/ready``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with (
            open_hub(settings, worker=PRIMARY, metrics_dir=metrics, serving=False) as hub,
            extras(hub) if extras else contextlib.nullcontext(),
        ):
            while not stop.is_set() and (await readiness.check(hub)).status == "down":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), READY_POLL_S)
            if ready is not None and not stop.is_set():
                ready()
            await stop.wait()
            log.info("primary stopping: ingest finishes its batch")
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _until_ready(server: _Server, serving: asyncio.Future[None], hub: HubState) -> None:
    """Wait until ``server`` accepts connections and the dependencies answer (or it stops first)."""
    accepting = asyncio.ensure_future(server.accepting.wait())
    waited: set[asyncio.Future[Any]] = {accepting, serving}
    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    accepting.cancel()
    while not serving.done():
        if (await readiness.check(hub)).status != "down":
            return
        await asyncio.sleep(READY_POLL_S)


def metrics_dir(settings: Settings) -> Path:
    """Where the workers keep their metrics (``PROMETHEUS_MULTIPROC_DIR``): under the data folder, one
    per port; a fresh temporary folder when the data folder cannot be written."""
    path = settings.data_dir.resolve() / f"metrics-{settings.port}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        path = Path(tempfile.mkdtemp(prefix="tickstock-metrics-"))
        log.warning("metrics of the workers in %s (%s)", path, exc)
    return path


def worker_main(
    settings: Settings,
    index: int,
    metrics: Path,
    extras: Extras | None,
    inlet: Inlet | None,
    conn: Connection,
) -> None:
    """One process's life (the supervisor's spawn target): serve what comes through ``inlet`` as worker
    ``index``, or be the primary (``inlet`` None); say ``ready`` (or ``failed`` and why) on ``conn``."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until uvicorn handles it; the supervisor asks with SIGTERM
    configure_logging(settings.log_level, process=f"worker {index}")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)  # prometheus-client's convention, for any library
    try:
        ready = functools.partial(conn.send, ("ready", os.getpid()))
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(
                serve_primary(settings, extras=extras, ready=ready, metrics=metrics)
                if inlet is None
                else serve_socket(settings, inlet, ready=ready, worker=index, metrics=metrics)
            )
    except USER_ERRORS as exc:
        conn.send(("failed", one_line(exc)))
        sys.exit(EXIT_ERROR)


def _tune_gc() -> None:
    """What start-up built lives as long as the process: move it out of the collector's sight, and
    collect the young generation less often. A full collection over every connection's objects
    otherwise pauses the event loop for tens of milliseconds, the websocket tail latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 50)
