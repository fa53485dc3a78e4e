"""Test helpers that are not fixtures: a live hub, URL helpers and a TCP proxy that can cut links."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC
from types import TracebackType
from typing import IO, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette

from api.app import create_app, open_hub
from api.cli.serving import server_config
from api.server import HubServer
from api.settings import Settings
from api.state import HubState
from hub.embedded import free_port  # ports to listen on, drawn below the ephemeral range

__all__ = [
    "DEFAULT_POLL_S",
    "DEFAULT_WAIT_S",
    "LiveHub",
    "RawNats",
    "TcpProxy",
    "admin_url_for",
    "database_url_for",
    "free_port",
    "lines_until",
    "serve_started",
    "wait_for",
    "wait_for_sync",
    "within",
]

T = TypeVar("T")

DEFAULT_WAIT_S = 30.0  # a condition that has not come true after this long will not
DEFAULT_POLL_S = 0.05
SERVER_START_S = 30.0  # uvicorn binds in milliseconds; this bounds a start-up that hangs


def database_url_for(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def admin_url_for(url: str) -> str:
    return database_url_for(url, "postgres")


class _QuietServer(HubServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_started(server: uvicorn.Server, *, timeout: float = SERVER_START_S) -> asyncio.Task[None]:
    """Start ``server.serve()`` in a task and return the task once the server listens.

    Raises the server's own error if it exits during start-up (a ``SystemExit`` when it cannot bind
    becomes ``RuntimeError``), and ``AssertionError`` if it is not listening after ``timeout`` s
    (the task is cancelled and awaited first).
    """
    task = asyncio.create_task(server.serve())

    async def up() -> bool:
        if task.done():
            try:
                await task
            except SystemExit as exc:
                raise RuntimeError(f"uvicorn exited during start-up ({exc})") from exc
            raise RuntimeError("uvicorn exited during start-up")
        return bool(server.started)

    try:
        await wait_for(up, timeout=timeout, interval=0.01, what="uvicorn to listen")
    except AssertionError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await task
        raise
    return task


class LiveHub:
    """The hub (``open_hub`` + ``create_app``) served by uvicorn on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.state: HubState | None = None
        self.app: Starlette | None = None
        self._stack = contextlib.AsyncExitStack()
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def hub(self) -> HubState:
        if self.state is None:
            raise RuntimeError("the hub is not running")
        return self.state

    async def __aenter__(self) -> LiveHub:
        self.state = await self._stack.enter_async_context(open_hub(self.settings))
        self.app = create_app(self.settings, hub=self.state)
        # The production server's configuration (no per-connection compression, frame bounds, grace).
        config = server_config(self.app, dataclasses.replace(self.settings, log_level="WARNING"))
        config.host, config.port = "127.0.0.1", self.port
        self._server = _QuietServer(config)
        self._task = await serve_started(self._server)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        await self._stack.aclose()
        self.state = None


class TcpProxy:
    """A loopback TCP proxy to ``target`` that a test can cut (``cut()``) and restore (``restore()``).

    While cut, existing connections are closed and new ones are refused, as in a network outage. While
    stalled (``stall()`` until ``resume()``), connections stay open but no byte moves either way, as with
    a server that has stopped answering: from the moment ``stall()`` returns, nothing gets through.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def __aenter__(self) -> TcpProxy:
        await self.restore()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        """Hold every byte read from either side until ``resume()``."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what was held, and let bytes flow again."""
        self._flowing.set()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.close()
        self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.discard(writer)
        self._links.discard(up_writer)


def make_event(
    i: int,
    *,
    symbol: str = "AAPL",
    timeframe: str = "daily",
    pattern: str = "hammer",
    prefix: str = "ev",
    confidence: float | None = None,
    **extra: object,
) -> dict[str, object]:
    """A valid schema v1 event as a dict; ``i`` makes the id and the details vary."""
    from datetime import datetime, timedelta

    base = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    event: dict[str, object] = {
        "id": f"{prefix}-{i}",
        "type": "pattern_detected",
        "symbol": symbol,
        "pattern": pattern,
        "timeframe": timeframe,
        "confidence": confidence if confidence is not None else round((i % 100) / 100, 2),
        "detected_at": (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "price": 100.0 + i % 50,
        "volume": 1000 + i,
        "source": "tests",
    }
    event.update(extra)
    return event


async def publish_raw(js, items: list[tuple[str, bytes, dict[str, str] | None]]) -> list[object]:  # type: ignore[no-untyped-def]
    """Publish ``(subject, payload, headers)`` items with pipelined acks; returns the PubAcks in order."""
    futures = [
        await js.publish_async(subject, payload, headers=headers) for subject, payload, headers in items
    ]
    return list(await asyncio.gather(*futures))


async def publish_events(js, events: list[dict[str, object]]) -> list[object]:  # type: ignore[no-untyped-def]
    """Publish v1 events to their ingest subjects with ``Nats-Msg-Id`` = id."""
    import json

    from hub.subjects import ingest_subject

    return await publish_raw(
        js,
        [
            (
                ingest_subject(str(e["timeframe"]), str(e["symbol"])),
                json.dumps(e).encode(),
                {"Nats-Msg-Id": str(e["id"])},
            )
            for e in events
        ],
    )


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...
@overload
async def wait_for(
    predicate: Callable[[], T], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...
async def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float = DEFAULT_WAIT_S,
    interval: float = DEFAULT_POLL_S,
    what: str = "condition",
) -> object:
    """Call ``predicate`` (sync, or async) until it returns a truthy value, and return that value.

    The predicate runs at least once, and once more after the deadline (a loaded machine may sleep
    through it). Each call of an async predicate is bounded by what is left of ``timeout`` s. Raises
    ``AssertionError`` naming ``what`` and the last value after ``timeout`` s; a predicate's own
    exception propagates at once. The one way tests poll: ``tests/test_hygiene.py`` fails on a ``while``
    loop that sleeps.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        expired = loop.time() >= deadline
        result = predicate()
        if inspect.isawaitable(result):
            try:
                async with asyncio.timeout(max(deadline - loop.time(), interval)):
                    result = await result
            except TimeoutError:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what} (a check hung)"
                ) from None
        last = result
        if result:
            return result
        if expired:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(min(interval, max(deadline - loop.time(), 0.0)))


def wait_for_sync(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_WAIT_S,
    interval: float = DEFAULT_POLL_S,
    what: str = "condition",
) -> T:
    """``wait_for`` for code without an event loop (threads, subprocesses): the same contract, blocking."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {result!r})")
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))


def lines_until(stream: IO[str], marker: str, *, timeout: float) -> list[str]:
    """The lines read from ``stream`` up to and including the first that contains ``marker``.

    Reads in a thread, so that a silent stream cannot block past ``timeout`` s; raises ``AssertionError``
    (with the lines so far) on timeout or at end of stream. The reader stops after the marker, so the
    rest of the stream is left for the caller.
    """
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        try:
            for line in iter(stream.readline, ""):
                lines.append(line)
                if marker in line:
                    return
        finally:
            done.set()

    threading.Thread(target=read, name="lines-until", daemon=True).start()
    if not done.wait(timeout):
        raise AssertionError(f"no {marker!r} after {timeout} s; so far:\n" + "".join(lines))
    if not lines or marker not in lines[-1]:
        raise AssertionError(f"the stream ended before {marker!r}:\n" + "".join(lines))
    return lines


@contextlib.asynccontextmanager
async def within(timeout: float, *, what: str) -> AsyncIterator[None]:
    """Fail with ``AssertionError`` naming ``what`` if the body has not finished after ``timeout`` s.

    A deadline, not a measurement: use it for "does not stall" and keep ``timeout`` generous (several
    times the expected duration), so that a loaded machine cannot fail it.
    """
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise AssertionError(f"{what} did not finish within {timeout} s") from None


async def clean_stream_messages(js, *, limit: int = 1_000_000) -> list[object]:  # type: ignore[no-untyped-def]
    """Every message on TICKSTOCK_PATTERNS, in stream order (an ephemeral ordered read)."""
    from hub.jetstream import PATTERNS_STREAM
    from hub.subjects import CLEAN_WILDCARD

    info = await js.stream_info(PATTERNS_STREAM)
    total = info.state.messages
    sub = await js.subscribe(CLEAN_WILDCARD, ordered_consumer=True, stream=PATTERNS_STREAM)
    msgs = []
    try:
        while len(msgs) < min(total, limit):
            msgs.append(await sub.next_msg(timeout=5))
    finally:
        await sub.unsubscribe()
    return msgs


async def writer_consumers_info(js):  # type: ignore[no-untyped-def]
    """``hub-writer``'s consumer info with pending, ack-pending and redelivered counts summed over every
    writer consumer of the ingest stream (the partitions' too)."""
    import dataclasses

    from hub.jetstream import INGEST_STREAM, WRITER_CONSUMER

    infos = [i for i in await js.consumers_info(INGEST_STREAM) if (i.name or "").startswith(WRITER_CONSUMER)]
    shared = next(i for i in infos if i.name == WRITER_CONSUMER)
    return dataclasses.replace(
        shared,
        num_pending=sum(i.num_pending or 0 for i in infos),
        num_ack_pending=sum(i.num_ack_pending or 0 for i in infos),
        num_redelivered=sum(i.num_redelivered or 0 for i in infos),
    )


async def wait_settled(js, *, timeout: float = 30.0) -> object:  # type: ignore[no-untyped-def]
    """Wait until the writer's consumers (``hub-writer`` and the partitions') have nothing pending or
    unacknowledged; returns ``hub-writer``'s info with the counts summed over all of them."""

    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import ServiceUnavailableError

    async def settled():  # type: ignore[no-untyped-def]
        try:
            info = await writer_consumers_info(js)
        except (ServiceUnavailableError, NatsTimeout):  # a cluster electing leaders (a member killed)
            return None
        return info if info.num_pending == 0 and info.num_ack_pending == 0 else None

    return await wait_for(settled, timeout=timeout, what="every ingest message acknowledged")


async def count(pool, sql: str, *args: object) -> int:  # type: ignore[no-untyped-def]
    """The single number a ``SELECT count(*) …`` returns."""
    async with pool.connection() as conn:
        row = await (await conn.execute(sql, args)).fetchone()
    return int(next(iter(row.values()))) if row else 0


async def stored_count(pool, prefix: str) -> int:  # type: ignore[no-untyped-def]
    """How many events with ids ``<prefix>-…`` are stored."""
    return await count(pool, "SELECT count(*) FROM pattern_events WHERE id LIKE %s", prefix + "-%")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    import os
    from pathlib import Path

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def problem(response, status: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body


def locs(body: dict) -> list[str]:  # type: ignore[type-arg]
    return [e["loc"] for e in body.get("errors", [])]


class RawNats:
    """A NATS client speaking the wire protocol by hand, for what nats-py would never send: a header
    block that is not UTF-8, say. ``publish`` sends ``HPUB`` with the header block as given; ``reply``
    (after ``subscribe``) reads the next ``HMSG``/``MSG`` and returns its header block and payload."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 4222
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawNats:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        await self.reader.readline()  # INFO
        self.writer.write(b'CONNECT {"headers":true,"verbose":false,"pedantic":false}\r\n')
        await self.ping()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.writer is not None
        self.writer.close()
        await self.writer.wait_closed()

    async def ping(self) -> None:
        """Returns when the server has read everything sent so far (its PONG)."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        while (await self.reader.readline()) != b"PONG\r\n":
            pass

    async def subscribe(self, subject: str) -> None:
        assert self.writer is not None
        self.writer.write(f"SUB {subject} 1\r\n".encode())
        await self.ping()

    async def publish(self, subject: str, headers: bytes, payload: bytes, *, reply: str = "") -> None:
        assert self.writer is not None
        line = f"HPUB {subject} {reply} {len(headers)} {len(headers) + len(payload)}".replace("  ", " ")
        self.writer.write(line.encode() + b"\r\n" + headers + payload + b"\r\n")
        await self.ping()

    async def reply(self) -> tuple[bytes, bytes]:
        assert self.reader is not None
        while True:
            line = (await self.reader.readline()).rstrip(b"\r\n").split(b" ")
            if line[0] == b"HMSG":
                block, total = int(line[-2]), int(line[-1])
                body = await self.reader.readexactly(total + 2)
                return body[:block], body[block:total]
            if line[0] == b"MSG":
                return b"", (await self.reader.readexactly(int(line[-1]) + 2))[:-2]
