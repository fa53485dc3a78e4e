"""Several hub processes on one listening socket (``tickstock serve --workers N``): the supervisor.

The caller binds the socket once; each process is a multiprocessing *spawn* process (nothing of the
parent's event loop, connections or threads is inherited). Process 0 is the primary: what must run once
per node (the writer, the advisory watcher, the Redis bridge, the upkeep, the demo feed) runs there
only (:func:`api.app.open_hub`), and it serves no socket (:func:`api.cli.serving.serve_primary`); the
workers, 1 to N, serve the socket with a whole hub each: REST and websockets. The supervisor:

- starts every worker and waits until each is ready (serving, its dependencies answering); one that
  exits first fails the start with its one-line reason (:class:`WorkerFailed`);
- with a :class:`~api.cli.balancer.Balancer`, accepts every connection and hands it to the ready worker
  holding the fewest, and none to a worker it is about to ask to stop;
- restarts a worker that exits while it should serve, under the same index (a dead primary comes back
  as the primary; JetStream keeps the ingest messages meanwhile), after a back-off that doubles from
  :data:`RESTART_MIN_S` to :data:`RESTART_MAX_S` and starts over once a worker served :data:`STABLE_S`;
- on SIGINT or SIGTERM asks every worker to stop (SIGTERM: each drains as one process does, within
  ``grace_s``), waits, and kills what is left after :data:`STOP_MARGIN_S` more; a second signal kills
  at once;
- on SIGHUP restarts the workers one at a time. A secondary's replacement starts and is ready before
  the old one is asked to stop. The primary stops first and its replacement starts after: two writers
  at once would interleave a symbol's batches. The other workers serve throughout.

Every worker exit is passed to prometheus-client's ``mark_process_dead`` for the metrics folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from api.app import ConfigurationError
from api.cli.balancer import Balancer, Route

__all__ = [
    "PRIMARY",
    "READY_TIMEOUT_S",
    "RESTART_MAX_S",
    "RESTART_MIN_S",
    "STABLE_S",
    "STOP_MARGIN_S",
    "Supervisor",
    "WorkerFailed",
    "die_with_parent",
]

log = logging.getLogger("tickstock.supervisor")

PRIMARY = 0
RESTART_MIN_S = 0.5  # the first restart of a worker that died
RESTART_MAX_S = 30.0  # the back-off doubles up to this
STABLE_S = 30.0  # a worker that served this long starts the back-off over when it dies
READY_TIMEOUT_S = 60.0  # a rolling restart's replacement must be ready within this
STOP_MARGIN_S = 10.0  # past the drain: the hub's resources close; then SIGKILL
_PR_SET_PDEATHSIG = 1


class WorkerFailed(ConfigurationError):
    """A worker exited before it was ready when the hub started."""


@dataclass(eq=False)
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection  # what the worker says: ("ready", pid) or ("failed", reason)
    ready: asyncio.Future[None]
    exited: asyncio.Future[int | None]
    started: float = field(default_factory=time.monotonic)
    failure: str | None = None
    retiring: bool = False  # asked to stop: its exit is no failure
    route: Route | None = None  # how the balancer hands it connections

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Supervisor:
    """Runs ``workers`` processes of ``target(*args(index), conn)`` (see the module's contract). With a
    ``balancer`` the workers after the primary are handed connections through it, and the target is
    called as ``target(*args(index), inlet, conn)``: the worker's :class:`~api.cli.balancer.Inlet`,
    None for the primary."""

    def __init__(
        self,
        *,
        workers: int,
        target: Callable[..., None],
        args: Callable[[int], tuple[Any, ...]],
        metrics_dir: Path,
        grace_s: float,
        balancer: Balancer | None = None,
    ) -> None:
        self.count = workers
        self.metrics_dir = metrics_dir
        self.restarts = 0  # workers restarted after they died
        self._target = target
        self._args = args
        self._grace_s = grace_s
        self._context = multiprocessing.get_context("spawn")
        self.balancer = balancer
        self._serving: dict[int, _Worker] = {}
        self._alive: set[_Worker] = set()
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, asyncio.TimerHandle] = {}
        self._stop = asyncio.Event()
        self._started = False
        self._signals = 0
        self._rolling: asyncio.Task[None] | None = None

    @property
    def pids(self) -> dict[int, int]:
        """The serving worker's pid by index."""
        return {index: worker.pid for index, worker in sorted(self._serving.items())}

    async def run(self, *, ready: Callable[[], None] | None = None) -> None:
        """Start the workers, call ``ready`` once all are, and supervise them until SIGINT/SIGTERM (or
        :meth:`stop`); return when every worker has exited. Raises :class:`WorkerFailed` when one exits
        before it was ready at the start."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        handled = self._handle_signals()
        try:
            starting = [self._spawn(index) for index in range(self.count)]
            self._serving = {worker.index: worker for worker in starting}
            for worker in starting:
                if not await self._until_ready(worker, timeout_s=None):
                    if self._stop.is_set():
                        return
                    reason = worker.failure or _status(await worker.exited)
                    raise WorkerFailed(f"worker {worker.index} did not start: {reason}")
            self._started = True
            log.info(
                "the primary and %d workers ready (pids %s)",
                self.count - 1,
                " ".join(map(str, self.pids.values())),
            )
            if ready is not None:
                ready()
            await self._stop.wait()
        finally:
            await self._shutdown()
            if handled:
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    asyncio.get_running_loop().remove_signal_handler(signum)

    def stop(self) -> None:
        """Stop every worker gracefully (what SIGINT and SIGTERM do)."""
        self._stop.set()

    def roll(self) -> asyncio.Task[None] | None:
        """Restart the workers one at a time (what SIGHUP does); None while one is under way."""
        if self._rolling is not None and not self._rolling.done():
            log.info("a rolling restart is under way already")
            return None
        self._rolling = asyncio.create_task(self._roll(), name="tickstock-rolling-restart")
        return self._rolling

    # -- processes ----------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Worker:
        loop = asyncio.get_running_loop()
        reader, writer = self._context.Pipe(duplex=False)
        route = self.balancer.route() if self.balancer is not None and index != PRIMARY else None
        inlet = () if self.balancer is None else (route.inlet if route is not None else None,)
        process = self._context.Process(
            target=self._target, args=(*self._args(index), *inlet, writer), name=f"tickstock-worker-{index}"
        )
        process.start()
        writer.close()
        if route is not None:
            route.started()
        worker = _Worker(index, process, reader, ready=loop.create_future(), exited=loop.create_future())
        worker.route = route
        self._alive.add(worker)
        loop.add_reader(reader.fileno(), self._hear, worker)
        loop.add_reader(process.sentinel, self._reap, worker)
        log.info("worker %d started (pid %d)", index, worker.pid)
        return worker

    def _hear(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                kind, value = worker.conn.recv()
                if kind == "ready" and not worker.ready.done():
                    worker.ready.set_result(None)
                    if self.balancer is not None and worker.route is not None and not worker.retiring:
                        self.balancer.admit(worker.route)
                    log.info("worker %d ready (pid %d)", worker.index, worker.pid)
                elif kind == "failed":
                    worker.failure = str(value)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())

    def _reap(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        if not worker.conn.closed:
            self._hear(worker)  # a last word ("failed") before the exit
            loop.remove_reader(worker.conn.fileno())
            worker.conn.close()
        worker.process.join()
        self._unroute(worker)
        code = worker.process.exitcode
        self._alive.discard(worker)
        mark_process_dead(worker.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        worker.exited.set_result(code)
        serving = self._serving.get(worker.index) is worker
        if worker.retiring or self._stop.is_set() or not self._started or not serving:
            log.info("worker %d (pid %d) exited (%s)", worker.index, worker.pid, _status(code))
            return
        lived = time.monotonic() - worker.started
        failures = 0 if lived >= STABLE_S else self._failures.get(worker.index, 0)
        self._failures[worker.index] = failures + 1
        delay = min(RESTART_MAX_S, RESTART_MIN_S * 2**failures)
        log.warning(
            "worker %d (pid %d) exited (%s) after %.1f s; restarting it in %.1f s",
            worker.index,
            worker.pid,
            _status(code),
            lived,
            delay,
        )
        self._restarts[worker.index] = loop.call_later(delay, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stop.is_set():
            return
        self._serving[index] = self._spawn(index)
        self.restarts += 1

    async def _until_ready(self, worker: _Worker, *, timeout_s: float | None) -> bool:
        """Wait until ``worker`` is ready; False when it exited first, the hub stops, or time ran out."""
        stopping = asyncio.ensure_future(self._stop.wait())
        waited: set[asyncio.Future[Any]] = {worker.ready, worker.exited, stopping}
        try:
            await asyncio.wait(waited, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        return worker.ready.done() and not worker.exited.done() and not self._stop.is_set()

    async def _retire(self, worker: _Worker) -> None:
        """Ask ``worker`` to stop (SIGTERM: it drains) and wait; SIGKILL after the grace and margin. It is
        handed no more connections first."""
        worker.retiring = True
        self._unroute(worker)
        if worker.exited.done():
            return
        worker.process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), self._grace_s + STOP_MARGIN_S)
        except TimeoutError:
            log.warning("worker %d (pid %d) did not stop in time: killed", worker.index, worker.pid)
            worker.process.kill()
            await worker.exited

    def _unroute(self, worker: _Worker) -> None:
        if self.balancer is not None and worker.route is not None:
            self.balancer.drop(worker.route)
            worker.route = None

    async def _roll(self) -> None:
        log.info("rolling restart of %d workers", self.count)
        for index in range(self.count):
            old = self._serving.get(index)
            if index == PRIMARY:  # never two primaries: the old one drains before the new one starts
                if old is not None:
                    await self._retire(old)
                if self._stop.is_set():
                    return
                self._serving[index] = new = self._spawn(index)
                if not await self._until_ready(new, timeout_s=READY_TIMEOUT_S):
                    log.error("rolling restart stopped: the new worker %d is not ready", index)
                    return
                continue
            new = self._spawn(index)
            if not await self._until_ready(new, timeout_s=READY_TIMEOUT_S):
                log.error(
                    "rolling restart stopped: the new worker %d is not ready; the old one serves on", index
                )
                await self._retire(new)
                return
            self._serving[index] = new
            if old is not None:
                await self._retire(old)
        log.info("rolling restart done (pids %s)", " ".join(map(str, self.pids.values())))

    async def _shutdown(self) -> None:
        self._stop.set()
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()
        if self._rolling is not None:
            self._rolling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rolling
        if self._alive:
            log.info("stopping %d workers", len(self._alive))
        await asyncio.gather(*(self._retire(worker) for worker in list(self._alive)))
        if self.balancer is not None:
            self.balancer.close()

    # -- signals ------------------------------------------------------------------------------------
    def _handle_signals(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_stop)
            loop.add_signal_handler(signal.SIGTERM, self._on_stop)
            loop.add_signal_handler(signal.SIGHUP, self.roll)
        except (ValueError, RuntimeError):  # not the main thread
            return False
        return True

    def _on_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop()
            return
        log.warning("second signal: killing %d workers", len(self._alive))
        for worker in self._alive:
            worker.process.kill()


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def die_with_parent() -> None:
    """In a worker: have Linux send it SIGTERM when its supervisor dies, however that dies (a worker
    never outlives the node it belongs to)."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - Linux only
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
