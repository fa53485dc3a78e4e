"""A cheap websocket load client: many raw connections per process, one process per core.

Used by ``ops/bench`` (fan-out and memory), ``ops/soak.py`` and ``tests/test_leak.py``; on its own:

    python ops/wsload.py --mode plain --url ws://127.0.0.1:9001/ws --connections 1000 --seconds 20

Each worker process (``multiprocessing``, fork) runs a uvloop event loop holding its share of the
connections as bare ``asyncio.Protocol`` objects driving websockets' sans-I/O ``ClientProtocol``: no
task, queue or future per message. A text frame is never JSON-decoded when it is a measured message:
two regular expressions pull out ``bench_i`` (the message index) and ``bench_t0`` (epoch seconds at
publish), which every server under test puts into each message (the hub: in the event's ``data``).

Engines (``Load(engine=...)``, ``--engine``): ``python`` is the above; ``c`` runs ``ops/wsload.c``
instead, one epoll loop per process built with the machine's C compiler (``ops/wsload_c.py``), which
answers the driver exactly as a Python worker does. It does the same per mode and per frame, for a
fraction of the CPU, so a run leaves more of the machine to the server it measures; it cannot read a
compressed session (a server that takes the deflate offer fails its connections, saying so).

Modes:

- ``plain``: a websocket that just receives (the bare Starlette loop);
- ``hub``: our ``/ws``: token in the URL, waits for ``welcome``, sends its ``subscribe`` frames, is
  ready at ``subscribed``; answers the hub's ``ping`` op and sends a ``ping`` op every 20 s so an idle
  timeout never closes a connection that is only receiving;
- ``socketio``: a thin Engine.IO v4 / Socket.IO v4 client (``?EIO=4&transport=websocket``): answers
  ``2`` (ping) with ``3``, sends ``40`` to join the default namespace, reads ``42[...]`` events.
- ``hubsio``: the same on the hub's ``/socket.io/``: joins with its first ``hello`` frame
  (``40{"token": …}``), sends the others (``42["subscribe", …]``) at ``connection_confirmed``, is ready
  at ``subscribed``, reads ``pattern_alert`` events.

A connection made with ``Conn(deflate=True)`` offers permessage-deflate exactly as a browser does
(``Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits``) and inflates what comes
compressed; ``negotiated`` counts the connections whose server accepted the offer.

Per connection it keeps a bitmap of the measured indices it received, so it counts deliveries,
duplicates and order inversions. Latency = receive wall time − ``bench_t0``, client and server sharing
this machine's clock (and its cores: the client takes CPU from the server it measures).

Connections the server closes: each keeps the code of the server's close (the close frame's code;
on ``hubsio`` the ``closing`` event's; ``abnormal`` when the socket went without a close frame) and is
never reopened. ``closes`` counts the connections by that code (4409: shed as a slow consumer, 4408:
idle, 1001: going away, ...). A connection that was ready and is still open when the run stops is
*kept*; one that was ready and then closed by the server is *closed*. ``lost`` is what the kept
connections' filters (``KINDS``) should have received minus what they did; what the closed ones
missed after their close is ``missed_closed``, not a loss (a real client resumes from its last
``seq``). ``latency_ms`` covers every delivery, ``latency_ms_kept`` the kept connections' only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["KINDS", "Conn", "Load", "LoadResult", "expected_counts", "raise_fd_limit"]

MODES = ("plain", "hub", "socketio", "hubsio")
ENGINES = ("python", "c")  # who reads the frames: see the module docstring
RE_I = re.compile(rb'"bench_i":\s*(\d+)')
RE_T0 = re.compile(rb'"bench_t0":\s*([0-9.]+)')
RE_OP = re.compile(rb'"op":\s*"(\w+)"')
CLIENT_PING_S = 20.0
CONNECT_TIMEOUT_S = 60.0
DEFAULT_CONCURRENCY = 100

# What a connection should receive, by the event index ``i`` (see ops/bench_fanout.py for the events
# and the hub filters that select them): each filter but "all" matches exactly half of the events.
KINDS: dict[str, Callable[[int], bool]] = {
    "all": lambda i: True,
    "sym_even": lambda i: i % 2 == 0,
    "tf_fast": lambda i: i % 4 < 2,
    "conf_high": lambda i: i % 50 >= 25,
}


@dataclass(frozen=True)
class Conn:
    """One connection: where to, which events it should get (a ``KINDS`` key), frames to send once open."""

    url: str
    kind: str = "all"
    hello: tuple[bytes, ...] = ()
    deflate: bool = False  # offer permessage-deflate as a browser does


def expected_counts(kind: str, first: int, count: int) -> int:
    pred = KINDS[kind]
    return sum(1 for i in range(first, first + count) if pred(i))


def raise_fd_limit(want: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it); root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    if hard != resource.RLIM_INFINITY and target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# -- the worker side -----------------------------------------------------------------------------------


class _Worker:
    def __init__(self, mode: str, first: int, count: int) -> None:
        self.mode = mode
        self.first = first
        self.count = count
        self.got: Counter[str] = Counter()
        self.ready: Counter[str] = Counter()
        self.duplicates = 0
        self.inversions = 0
        self.failed = 0
        self.negotiated = 0
        self.errors: Counter[str] = Counter()
        self.frames = 0
        self.bytes = 0
        self.clients: list[_Client] = []
        self.stopping = False
        # What a connection of each kind should receive of the measured indices.
        self.expected = {kind: expected_counts(kind, first, count) for kind in KINDS}

    def kept(self) -> list[_Client]:
        """The connections that were ready and that the server has not closed."""
        return [c for c in self.clients if c.is_ready and c.close_code is None]

    def closed_ready(self) -> list[_Client]:
        """The connections that were ready and that the server closed since."""
        return [c for c in self.clients if c.is_ready and c.close_code is not None]

    def missing(self) -> int:
        """Measured messages the kept connections have yet to receive."""
        return sum(self.expected[c.kind] - c.got for c in self.kept())


class _Client(asyncio.Protocol):
    def __init__(self, worker: _Worker, conn: Conn, ready: asyncio.Future[None]) -> None:
        self.w = worker
        self.conn = conn
        self.kind = conn.kind
        self.ready = ready
        # A browser's offer: "permessage-deflate; client_max_window_bits".
        offer = [ClientPerMessageDeflateFactory(client_max_window_bits=True)] if conn.deflate else None
        self.proto = ClientProtocol(parse_uri(conn.url), extensions=offer, max_size=1 << 22)
        self.transport: asyncio.Transport | None = None
        self.seen = bytearray(worker.count)
        self.last = -1
        self.is_ready = False
        self.closed = False
        self.got = 0  # measured messages received (duplicates not counted)
        self.latency_ms = array("d")
        self.head = bytearray()  # the HTTP response so far
        self.framing: bytearray | None = None  # frames not yet read, while this client reads them itself
        self.index = array("l")  # the measured message each latency is of (a timeline over the run)
        # Why the server closed this connection ("4409", "1001", "abnormal", ...); None: it did not.
        self.close_code: str | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.w.bytes += len(data)
        if self.framing is None and self.proto.state is State.CONNECTING:
            data = self._handshake(data, now)
        if self.framing is not None and data:
            self.framing += data
            data = self._own_frames(now)
        if data:
            self._feed(data, now)
        self._flush()

    def _handshake(self, data: bytes, now: float) -> bytes:
        """Feed the HTTP response to websockets; what comes after it is returned. With no extension
        negotiated, this client then reads frames itself (:meth:`_own_frames`)."""
        before = len(self.head)
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            self._feed(data, now)
            return b""
        cut = end + 4 - before
        self.head = bytearray()
        self._feed(data[:cut], now)
        if self.proto.state is State.OPEN and not self.proto.extensions:
            self.framing = bytearray()
        return data[cut:]

    def _own_frames(self, now: float) -> bytes:
        """Read the complete frames in ``framing``: unfragmented text frames and pings, which is all a
        server sends while events stream, the same way as websockets would but at a fraction of its
        CPU (the load generator shares the machine with the servers it measures). At anything else
        (close, binary, a fragment, a reserved bit) websockets' own parser takes over from that frame
        on: returned are the bytes to give it."""
        buf, pos = self.framing, 0
        assert buf is not None
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0xF0 != 0x80 or b1 & 0x80 or b0 & 0x0F not in (0x1, 0x9):
                self.framing = None
                return bytes(buf[pos:])
            length, head = b1 & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            payload = bytes(buf[pos + head : end])
            if b0 & 0x0F == 0x1:
                self._text(payload, now)
            else:
                self.proto.send_pong(payload)
            pos = end
        del buf[:pos]
        return b""

    def _feed(self, data: bytes, now: float) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self._text(bytes(event.data), now)
                elif event.opcode is Opcode.CLOSE and not self.w.stopping:
                    # proto.close_code stays None until the closing handshake ends; the frame has the code.
                    rcvd = self.proto.close_rcvd
                    self._closed_by_server(str(rcvd.code if rcvd is not None else None))
            elif isinstance(event, Response):
                if self.proto.handshake_exc is not None:
                    self._fail(f"handshake: {self.proto.handshake_exc}")
                    continue
                if self.proto.extensions:
                    self.w.negotiated += 1
                if self.mode_ready_on_open():
                    self._set_ready()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.is_ready:
            self._fail(f"connection lost before ready: {exc or 'closed'}")
        elif self.proto.close_rcvd is None and not self.w.stopping:
            self._closed_by_server("abnormal")

    def _closed_by_server(self, code: str) -> None:
        """The first reason given wins (hubsio: the ``closing`` event, then the close frame)."""
        if self.close_code is None:
            self.close_code = code

    # helpers
    def mode_ready_on_open(self) -> bool:
        return self.w.mode == "plain"

    def _flush(self) -> None:
        if self.transport is None:
            return
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)
            else:
                self.transport.close()

    def _set_ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.w.ready[self.kind] += 1
            if not self.ready.done():
                self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    def send(self, text: bytes) -> None:
        if self.closed or self.transport is None or self.proto.state is not State.OPEN:
            return  # a closing connection answers nothing more
        self.proto.send_text(text)
        self._flush()

    def _text(self, data: bytes, now: float) -> None:
        self.w.frames += 1
        mode = self.w.mode
        if mode == "hubsio":
            self._hub_socketio(data, now)
            return
        if mode == "socketio":
            head = data[:2]
            if head == b"42":
                self._event(data, now)
            elif data == b"2":
                self.send(b"3")
            elif head == b"40":
                self._set_ready()
            elif data[:1] == b"0":
                self.send(b"40")
            elif head == b"44":
                self._fail(f"namespace refused: {data[:200]!r}")
            return
        match = RE_I.search(data)
        if match is not None:
            self._event(data, now, match)
            return
        if mode != "hub":
            return
        op = RE_OP.search(data)
        name = op.group(1) if op else b""
        if name == b"welcome":
            for frame in self.conn.hello:
                self.send(frame)
            if not self.conn.hello:
                self._set_ready()
        elif name == b"subscribed":
            self._set_ready()
        elif name == b"ping":
            self.send(b'{"op":"pong"}')
        elif name == b"error":
            self.w.errors[json.loads(data).get("code", "?")] += 1
            if not self.is_ready:
                self._fail(f"error frame: {data[:200]!r}")

    def _hub_socketio(self, data: bytes, now: float) -> None:
        if data.startswith(b'42["pattern_alert"'):
            self._event(data, now)
        elif data == b"2":
            self.send(b"3")
        elif data.startswith(b'42["connection_confirmed"'):
            for frame in self.conn.hello[1:]:
                self.send(frame)
            if len(self.conn.hello) < 2:
                self._set_ready()
        elif data.startswith(b'42["subscribed"'):
            self._set_ready()
        elif data.startswith(b'42["error"'):
            self.w.errors[json.loads(data[2:])[1].get("code", "?")] += 1
            if not self.is_ready:
                self._fail(f"error event: {data[:200]!r}")
        elif data.startswith(b'42["closing"'):
            if not self.w.stopping:
                self._closed_by_server(str(json.loads(data[2:])[1].get("code", "?")))
        elif data[:1] == b"0":
            self.send(self.conn.hello[0] if self.conn.hello else b"40")
        elif data[:2] == b"44":
            self._fail(f"namespace refused: {data[:200]!r}")

    def _event(self, data: bytes, now: float, match: re.Match[bytes] | None = None) -> None:
        if match is None:
            match = RE_I.search(data)
            if match is None:
                return
        i = int(match.group(1)) - self.w.first
        if i < 0 or i >= self.w.count:
            return
        if self.seen[i]:
            self.w.duplicates += 1
            return
        self.seen[i] = 1
        if i < self.last:
            self.w.inversions += 1
        self.last = i
        self.got += 1
        self.w.got[self.kind] += 1
        t0 = RE_T0.search(data, match.end())
        if t0 is None:
            t0 = RE_T0.search(data)
        if t0 is not None:
            self.latency_ms.append((now - float(t0.group(1))) * 1000.0)
            self.index.append(i)


async def _worker_main(
    mode: str, conns: list[Conn], first: int, count: int, concurrency: int, pipe: Connection
) -> None:
    loop = asyncio.get_running_loop()
    w = _Worker(mode, first, count)
    gate = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()

    async def open_one(conn: Conn) -> None:
        parts = urlsplit(conn.url)
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            client: _Client | None = None
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(lambda: _Client(w, conn, ready), parts.hostname, parts.port),
                    CONNECT_TIMEOUT_S,
                )
                w.clients.append(client)
                await asyncio.wait_for(ready, CONNECT_TIMEOUT_S)
            except (OSError, ConnectionError, TimeoutError) as exc:
                w.failed += 1
                w.errors[type(exc).__name__ + ": " + str(exc)[:120]] += 1
                if client is not None and client.transport is not None:
                    client.transport.abort()

    async def keepalive() -> None:
        # Spread the pings over the interval instead of sending them all at once.
        while not stop.is_set():
            clients = [c for c in w.clients if c.is_ready and not c.closed]
            step = CLIENT_PING_S / max(1, len(clients))
            for c in clients:
                c.send(b'{"op":"ping","ts":0}')
                await asyncio.sleep(step)
            await asyncio.sleep(0.1 if clients else 1.0)

    def status() -> dict[str, Any]:
        return {
            "ready": sum(w.ready.values()),
            "failed": w.failed,
            "got": sum(w.got.values()),
            "closed": sum(1 for c in w.clients if c.closed),
            "closed_by_server": sum(1 for c in w.clients if c.close_code is not None),
            "missing": w.missing(),
        }

    def on_command() -> None:
        command = pipe.recv()
        if command == "status":
            pipe.send(status())
        elif command == "stop":
            stop.set()

    loop.add_reader(pipe.fileno(), on_command)
    opening = asyncio.gather(*(open_one(c) for c in conns))
    pinger = asyncio.create_task(keepalive()) if mode == "hub" else None
    await stop.wait()
    loop.remove_reader(pipe.fileno())
    os.set_blocking(pipe.fileno(), True)  # the loop made it non-blocking; the last reply is large
    w.stopping = True
    opening.cancel()
    if pinger is not None:
        pinger.cancel()
    for c in w.clients:
        if not c.closed and c.transport is not None:
            try:
                c.proto.send_close(1000)
                c._flush()
            except Exception:
                pass
    await asyncio.sleep(0.3)
    for c in w.clients:
        if c.transport is not None:
            c.transport.abort()
    kept, closed = w.kept(), w.closed_ready()
    pipe.send(
        {
            **status(),
            "kept": len(kept),
            "closed_ready": len(closed),
            "expected_kept": sum(w.expected[c.kind] for c in kept),
            "delivered_kept": sum(c.got for c in kept),
            "expected_closed": sum(w.expected[c.kind] for c in closed),
            "delivered_closed": sum(c.got for c in closed),
            "got_by_kind": dict(w.got),
            "ready_by_kind": dict(w.ready),
            "duplicates": w.duplicates,
            "inversions": w.inversions,
            "negotiated": w.negotiated,
            "errors": dict(w.errors.most_common(5)),
            "closes": dict(Counter(c.close_code for c in w.clients if c.close_code is not None)),
            "frames": w.frames,
            "bytes": w.bytes,
            "latency_kept": b"".join(c.latency_ms.tobytes() for c in kept),
            "index_kept": b"".join(c.index.tobytes() for c in kept),
            "latency_other": b"".join(
                c.latency_ms.tobytes() for c in w.clients if not (c.is_ready and c.close_code is None)
            ),
            "cpu_s": sum(os.times()[:2]),
        }
    )


def _worker(mode: str, conns: list[Conn], first: int, count: int, concurrency: int, pipe: Connection) -> None:
    raise_fd_limit()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - comes with uvicorn[standard]
        runner = asyncio.Runner()
    with runner:
        runner.run(_worker_main(mode, conns, first, count, concurrency, pipe))


# -- the driver side -----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """``expected``/``delivered``/``latency_ms``: every ready connection; the ``*_kept`` figures: the
    connections still open at the end (see the module docstring); ``closes``: connections by the code
    the server closed them with."""

    connections: int
    ready: int
    failed: int
    expected: int
    delivered: int
    duplicates: int
    inversions: int
    latency_ms: dict[str, float]
    closes: dict[str, int]
    errors: dict[str, int]
    client_cpu_s: float
    frames: int
    bytes: int
    negotiated: int = 0
    latencies: Any = field(default=None, repr=False)
    kept: int = 0
    closed: int = 0  # ready connections the server closed
    expected_kept: int = 0
    delivered_kept: int = 0
    expected_closed: int = 0
    delivered_closed: int = 0
    latency_ms_kept: dict[str, float] = field(default_factory=dict)
    # The kept connections' p99 (ms) over each tenth of the measured messages, in publish order:
    # where in the run a kept p99 comes from (a start that sheds too slowly, or a spike later).
    p99_ms_kept_by_tenth: list[float | None] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Measured messages the kept connections did not get."""
        return max(0, self.expected_kept - self.delivered_kept)

    @property
    def missed_closed(self) -> int:
        """Measured messages the connections the server closed did not get (they would resume)."""
        return max(0, self.expected_closed - self.delivered_closed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "ready": self.ready,
            "failed": self.failed,
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "lost_pct": round(100 * self.lost / self.expected_kept, 2) if self.expected_kept else 0.0,
            "duplicates": self.duplicates,
            "inversions": self.inversions,
            "latency_ms": self.latency_ms,
            "kept": self.kept,
            "closed": self.closed,
            "expected_kept": self.expected_kept,
            "delivered_kept": self.delivered_kept,
            "latency_ms_kept": self.latency_ms_kept,
            "p99_ms_kept_by_tenth": self.p99_ms_kept_by_tenth,
            "expected_closed": self.expected_closed,
            "delivered_closed": self.delivered_closed,
            "missed_closed": self.missed_closed,
            "closes": self.closes,
            "errors": self.errors,
            "client_cpu_s": round(self.client_cpu_s, 2),
            "frames": self.frames,
            "bytes": self.bytes,
            "negotiated": self.negotiated,
        }


def by_tenth(latencies: Any, indices: Any, count: int) -> list[float | None]:
    """p99 (ms) of ``latencies`` over each tenth of the ``count`` measured messages, by their ``indices``
    (None for a tenth with none)."""
    import numpy as np

    if count <= 0 or len(latencies) == 0:
        return []
    tenth = np.minimum(np.asarray(indices) * 10 // count, 9)
    return [
        round(float(np.percentile(latencies[tenth == k], 99)), 1) if np.any(tenth == k) else None
        for k in range(10)
    ]


def percentiles(values: Any) -> dict[str, float]:
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return {"n": 0}
    p50, p95, p99, p999 = np.percentile(data, [50, 95, 99, 99.9])
    return {
        "n": int(data.size),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "p99.9": round(float(p999), 2),
        "max": round(float(data.max()), 2),
        "mean": round(float(data.mean()), 2),
    }


class Load:
    """``processes`` workers holding ``conns`` between them (round-robin); measured messages are the
    indices ``first`` .. ``first + count - 1``.

    ``with Load(...) as load``: starts the workers (they connect at once); ``wait_ready()`` waits for
    every connection to be ready or failed; ``delivered()`` is the running total; ``stop()`` closes
    every connection and returns the :class:`LoadResult`. Leaving the block stops the workers.
    ``start_method`` "spawn" suits a caller with threads (a test process); "fork" starts faster.
    """

    def __init__(
        self,
        mode: str,
        conns: list[Conn],
        *,
        first: int = 0,
        count: int = 0,
        processes: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        start_method: str = "fork",
        engine: str = "python",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        self.engine = engine
        self.mode = mode
        self.conns = conns
        self.first = first
        self.count = count
        self.processes = max(1, min(processes or os.cpu_count() or 1, len(conns) or 1))
        self.concurrency = concurrency
        self.start_method = start_method
        self._procs: list[Any] = []
        self._pipes: list[Connection] = []
        self.result: LoadResult | None = None

    def __enter__(self) -> Load:
        raise_fd_limit()
        if self.engine == "c":
            from wsload_c import CWorker

            expected = {kind: expected_counts(kind, self.first, self.count) for kind in KINDS}
            for n in range(self.processes):
                worker = CWorker(
                    self.mode,
                    self.conns[n :: self.processes],
                    first=self.first,
                    count=self.count,
                    concurrency=self.concurrency,
                    expected=expected,
                )
                self._procs.append(worker)
                self._pipes.append(worker)  # type: ignore[arg-type]
            return self
        ctx = mp.get_context(self.start_method)
        for n in range(self.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(
                    self.mode,
                    self.conns[n :: self.processes],
                    self.first,
                    self.count,
                    self.concurrency,
                    child,
                ),
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._pipes.append(parent)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.result is None:
            with contextlib.suppress(Exception):
                self.stop()
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            if self.engine == "c":
                proc.close()  # its pipes

    def status(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for pipe in self._pipes:
            pipe.send("status")
        for pipe in self._pipes:
            total.update(pipe.recv())
        return dict(total)

    def delivered(self) -> int:
        return self.status().get("got", 0)

    def wait_ready(self, timeout_s: float = 300.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if (
                status.get("ready", 0) + status.get("failed", 0) >= len(self.conns)
                or time.monotonic() > deadline
            ):
                return status
            time.sleep(0.2)

    def drain(self, expected: int | None = None, *, stall_s: float = 3.0, timeout_s: float = 60.0) -> float:
        """Wait until every kept connection (ready, not closed by the server) has all its measured
        messages, ``expected`` measured deliveries arrived in all, nothing arrived for ``stall_s`` or
        ``timeout_s`` passed; returns the monotonic time of the last increase seen."""
        last, last_change = -1, time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            got = status.get("got", 0)
            now = time.monotonic()
            if got != last:
                last, last_change = got, now
            if (
                status.get("missing", 1) <= 0
                or (expected is not None and got >= expected)
                or now - last_change > stall_s
            ):
                break
            time.sleep(0.1)
        return last_change

    def stop(self) -> LoadResult:
        import numpy as np

        for pipe in self._pipes:
            pipe.send("stop")
        parts = [pipe.recv() for pipe in self._pipes]
        kept_latencies = (
            np.concatenate([np.frombuffer(p["latency_kept"], dtype=np.float64) for p in parts])
            if parts
            else np.zeros(0)
        )
        latencies = (
            np.concatenate(
                [kept_latencies, *(np.frombuffer(p["latency_other"], dtype=np.float64) for p in parts)]
            )
            if parts
            else np.zeros(0)
        )
        ready_by_kind: Counter[str] = Counter()
        for p in parts:
            ready_by_kind.update(p["ready_by_kind"])
        expected = sum(n * expected_counts(kind, self.first, self.count) for kind, n in ready_by_kind.items())
        closes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for p in parts:
            closes.update(p["closes"])
            errors.update(p["errors"])
        self.result = LoadResult(
            connections=len(self.conns),
            ready=sum(p["ready"] for p in parts),
            failed=sum(p["failed"] for p in parts),
            expected=expected,
            delivered=sum(p["got"] for p in parts),
            duplicates=sum(p["duplicates"] for p in parts),
            inversions=sum(p["inversions"] for p in parts),
            latency_ms=percentiles(latencies),
            closes=dict(closes),
            errors=dict(errors.most_common(5)),
            client_cpu_s=sum(p["cpu_s"] for p in parts),
            frames=sum(p["frames"] for p in parts),
            bytes=sum(p["bytes"] for p in parts),
            negotiated=sum(p["negotiated"] for p in parts),
            latencies=latencies,
            kept=sum(p["kept"] for p in parts),
            closed=sum(p["closed_ready"] for p in parts),
            expected_kept=sum(p["expected_kept"] for p in parts),
            delivered_kept=sum(p["delivered_kept"] for p in parts),
            expected_closed=sum(p["expected_closed"] for p in parts),
            delivered_closed=sum(p["delivered_closed"] for p in parts),
            latency_ms_kept=percentiles(kept_latencies),
            p99_ms_kept_by_tenth=by_tenth(
                kept_latencies,
                np.concatenate(
                    [np.frombuffer(p["index_kept"], dtype=f"i{array('l').itemsize}") for p in parts]
                )
                if parts
                else np.zeros(0, dtype=np.int64),
                self.count,
            ),
        )
        return self.result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=MODES, default="plain")
    parser.add_argument(
        "--url",
        required=True,
        help="e.g. ws://127.0.0.1:9001/ws, ws://127.0.0.1:9000/socket.io/?EIO=4&transport=websocket",
    )
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to receive once connected")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate as a browser does")
    parser.add_argument("--engine", choices=ENGINES, default="python", help="who reads the frames")
    args = parser.parse_args()
    conns = [Conn(args.url, deflate=args.deflate)] * args.connections
    # Indices 0..99,999 are counted (one bit-byte each per connection).
    with Load(args.mode, conns, first=0, count=100_000, processes=args.processes, engine=args.engine) as load:
        status = load.wait_ready()
        print(f"ready {status.get('ready', 0)}, failed {status.get('failed', 0)}; receiving {args.seconds} s")
        time.sleep(args.seconds)
        result = load.stop()
    out = result.as_dict()
    for key in ("expected", "lost", "lost_pct", "expected_kept", "expected_closed", "missed_closed"):
        out.pop(key)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
