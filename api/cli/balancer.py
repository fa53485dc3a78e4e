"""A node's connections spread over its workers: the supervisor accepts each one and hands it to the
worker that holds the fewest (:class:`Balancer`); a worker serves what it is handed (:class:`Inlet`).

When the workers shared the listening socket, the kernel woke them all and whichever accepted first
took what was queued: at 5,000 and 10,000 connections one worker held up to 1.3 times the other's, fell
behind first and shed first. Handed over by the supervisor (``SCM_RIGHTS`` on a Unix socket pair per
worker, as Node's cluster module does), each connection goes to the worker with the fewest open: a
worker that shed or restarted fills up again first. Nothing is reset when a worker stops: the
supervisor stops handing it connections before it asks it to stop, and what waits in the listening
socket's queue goes to the others.

A worker's load is what it holds plus what is on its way to it. It counts both in shared memory (its
open connections, HTTP and websockets, as uvicorn tracks them, and the connections it was handed); the
supervisor counts what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from multiprocessing.sharedctypes import RawArray
from typing import Any

__all__ = ["ACCEPT_BURST", "ACCEPT_PAUSE_S", "Balancer", "Inlet", "Route"]

log = logging.getLogger("tickstock.supervisor")

ACCEPT_BURST = 128  # connections accepted in one turn of the supervisor's loop, at most
ACCEPT_PAUSE_S = 1.0  # no accepting for this long when accept fails or no worker can take one
_OPEN, _RECEIVED = 0, 1  # a worker's counters


class Inlet:
    """A worker's end: the Unix socket its connections come through and its counters (shared memory).
    Picklable for a *spawn* process while the supervisor starts it."""

    def __init__(self, channel: socket.socket, counts: Any) -> None:
        self.channel = channel
        self.counts = counts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serve: Callable[[socket.socket], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"channel": self.channel, "counts": self.counts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["channel"], state["counts"])  # type: ignore[misc]

    def connections(self) -> set[Any]:
        """A set for uvicorn's open connections that keeps this worker's count of them."""
        return _CountingSet(self.counts)

    def open(self, serve: Callable[[socket.socket], None]) -> None:
        """Call ``serve(sock)`` for each connection handed to this worker, from now on."""
        self._loop, self._serve = asyncio.get_running_loop(), serve
        self.channel.setblocking(False)
        self._loop.add_reader(self.channel.fileno(), self._receive)

    def close(self) -> None:
        """Take no more connections (the supervisor stopped handing them already)."""
        if self._loop is not None and self.channel.fileno() >= 0:
            self._loop.remove_reader(self.channel.fileno())
        self.channel.close()

    def _receive(self) -> None:
        assert self._serve is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 64, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("the supervisor's hand-over socket failed: %s", exc)
                self.close()
                return
            if not data and not fds:  # no more: the worker is stopping, or the supervisor is gone
                self.close()
                return
            for fd in fds:
                self.counts[_RECEIVED] += 1
                self._serve(socket.socket(fileno=fd))


class _CountingSet(set[Any]):
    """uvicorn's ``server_state.connections``: adds and removes keep the count in ``counts``."""

    def __init__(self, counts: Any) -> None:
        super().__init__()
        self._counts = counts
        counts[_OPEN] = 0

    def add(self, item: Any) -> None:
        super().add(item)
        self._counts[_OPEN] = len(self)

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._counts[_OPEN] = len(self)

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._counts[_OPEN] = len(self)


class Route:
    """The supervisor's end of one worker's hand-over: its socket, its counters, what was sent."""

    def __init__(self, channel: socket.socket, counts: Any, inlet: Inlet) -> None:
        self.channel = channel
        self.counts = counts
        self.inlet = inlet  # for the worker: pickled into it when it starts
        self.sent = 0

    @property
    def load(self) -> int:
        """Connections the worker holds, and those on their way to it."""
        return int(self.counts[_OPEN]) + self.sent - int(self.counts[_RECEIVED])

    def started(self) -> None:
        """The worker started with its own copy of its end: the supervisor's goes, so that a send to a
        worker that exited fails instead of filling a socket nobody reads."""
        self.inlet.channel.close()

    def close(self) -> None:
        self.channel.close()
        self.inlet.channel.close()


class Balancer:
    """Accepts on the listening ``sock`` and hands each connection to the admitted route with the least
    load. With no route admitted it does not accept: connections wait in the socket's queue. When
    accepting fails (out of descriptors) or no worker can take a connection (it is closed), it accepts
    nothing for :data:`ACCEPT_PAUSE_S` rather than spin, or close every connection that comes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._routes: list[Route] = []
        self._reading = False
        self._turn = 0
        self._resume: asyncio.TimerHandle | None = None  # accepting paused until then
        self.handed = 0  # connections handed to a worker
        self.refused = 0  # connections closed because no worker could take them

    def route(self) -> Route:
        """A new worker's hand-over (not admitted yet): give ``route.inlet`` to the worker."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent.setblocking(False)
        counts = RawArray("q", 2)
        return Route(parent, counts, Inlet(child, counts))

    @property
    def routes(self) -> Iterable[Route]:
        return tuple(self._routes)

    def admit(self, route: Route) -> None:
        """The worker is ready: hand it connections from now on."""
        self._routes.append(route)
        self._read(True)

    def drop(self, route: Route) -> None:
        """Hand the worker no more connections (it is asked to stop, or it exited)."""
        with contextlib.suppress(ValueError):
            self._routes.remove(route)
        route.close()
        if not self._routes:
            self._read(False)

    def close(self) -> None:
        for route in list(self._routes):
            self.drop(route)
        if self._resume is not None:
            self._resume.cancel()

    def _read(self, on: bool) -> None:
        if on == self._reading or (on and self._resume is not None):
            return
        loop = asyncio.get_running_loop()
        if on:
            self._sock.setblocking(False)
            loop.add_reader(self._sock.fileno(), self._accept)
        else:
            loop.remove_reader(self._sock.fileno())
        self._reading = on

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            if not self._routes:
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up before it was accepted
                continue
            except OSError as exc:  # out of descriptors, or the like: not again at once (it would spin)
                self._pause(f"cannot accept connections ({exc})")
                return
            with conn:
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self._hand(conn):
                    self._pause("no worker could take a connection")
                    return

    def _pause(self, why: str) -> None:
        """Accept nothing for :data:`ACCEPT_PAUSE_S`: connections wait in the listening queue."""
        log.error("%s: accepting again in %g s", why, ACCEPT_PAUSE_S)
        self._read(False)
        self._resume = asyncio.get_running_loop().call_later(ACCEPT_PAUSE_S, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        if self._routes:
            self._read(True)

    def _hand(self, conn: socket.socket) -> bool:
        """Whether a worker took ``conn`` (the least loaded that could)."""
        # The least loaded; among equals, each in turn (short requests leave every worker at 0).
        turn = self._turn = (self._turn + 1) % len(self._routes)
        for route in sorted(self._routes[turn:] + self._routes[:turn], key=lambda r: r.load):
            try:
                socket.send_fds(route.channel, [b"c"], [conn.fileno()])
            except (BlockingIOError, InterruptedError):
                continue  # its socket is full: the next least loaded
            except OSError as exc:  # the worker is gone: its exit drops the route too
                log.warning("cannot hand a connection to a worker (%s)", exc)
                self.drop(route)
                continue
            route.sent += 1
            self.handed += 1
            return True
        self.refused += 1
        return False
