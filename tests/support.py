"""Test helpers that are not fixtures: a live hub, URL helpers and a TCP proxy that can cut links."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from datetime import UTC
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.applications import Starlette

from api.app import create_app, open_hub
from api.server import HubServer
from api.settings import Settings
from api.state import HubState

__all__ = ["LiveHub", "TcpProxy", "admin_url_for", "database_url_for", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url_for(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def admin_url_for(url: str) -> str:
    return database_url_for(url, "postgres")


class _QuietServer(HubServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", access_log=False)
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        await self._stack.aclose()
        self.state = None


class TcpProxy:
    """A loopback TCP proxy to ``target`` that a test can cut (``cut()``) and restore (``restore()``).

    While cut, existing connections are closed and new ones are refused, as in a network outage.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> TcpProxy:
        await self.restore()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

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
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.discard(writer)
        self._links.discard(up_writer)


def make_event(i: int, *, symbol: str = "AAPL", timeframe: str = "daily", pattern: str = "hammer",
               prefix: str = "ev", confidence: float | None = None, **extra: object) -> dict[str, object]:
    """A valid schema v1 event as a dict; ``i`` makes the id and the details vary."""
    from datetime import datetime, timedelta

    base = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    event: dict[str, object] = {
        "id": f"{prefix}-{i}", "type": "pattern_detected", "symbol": symbol, "pattern": pattern,
        "timeframe": timeframe, "confidence": confidence if confidence is not None else round((i % 100) / 100, 2),
        "detected_at": (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "price": 100.0 + i % 50, "volume": 1000 + i, "source": "tests",
    }
    event.update(extra)
    return event


async def publish_raw(js, items: list[tuple[str, bytes, dict[str, str] | None]]) -> list[object]:  # type: ignore[no-untyped-def]
    """Publish ``(subject, payload, headers)`` items with pipelined acks; returns the PubAcks in order."""
    futures = [await js.publish_async(subject, payload, headers=headers) for subject, payload, headers in items]
    return list(await asyncio.gather(*futures))


async def publish_events(js, events: list[dict[str, object]]) -> list[object]:  # type: ignore[no-untyped-def]
    """Publish v1 events to their ingest subjects with ``Nats-Msg-Id`` = id."""
    import json

    from hub.subjects import ingest_subject

    return await publish_raw(js, [
        (ingest_subject(str(e["timeframe"]), str(e["symbol"])), json.dumps(e).encode(), {"Nats-Msg-Id": str(e["id"])})
        for e in events])


async def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll the async ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


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


async def wait_settled(js, *, timeout: float = 30.0) -> object:  # type: ignore[no-untyped-def]
    """Wait until the writer's consumer has nothing pending or unacknowledged; returns its info."""
    from hub.jetstream import INGEST_STREAM, WRITER_CONSUMER

    async def settled():  # type: ignore[no-untyped-def]
        info = await js.consumer_info(INGEST_STREAM, WRITER_CONSUMER)
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
