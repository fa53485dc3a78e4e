"""api/wsproto.py: the lean protocol behaves as uvicorn's sans-I/O one, through real sockets (uvicorn
serving a small ASGI app, ``websockets`` clients), and its queue and flag as asyncio's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.asyncio.client import connect

from api.cli.serving import server_config
from api.settings import Settings
from api.wsdeflate import FrameMemo, shared_deflate_protocol
from api.wsproto import Flag, Inbox, LeanProtocol
from api.wsraw import raw_writer
from hub.wsframe import text_frame
from tests.support import free_port, serve_started, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Sessions:
    """An ASGI app that hands each websocket session to the test: its scope, receive and send."""

    def __init__(self) -> None:
        self.opened: asyncio.Queue[tuple[dict[str, Any], Any, Any, asyncio.Future[None]]] = asyncio.Queue()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", "headers": [(b"x-test", b"1")]})
        done = asyncio.get_running_loop().create_future()
        await self.opened.put((scope, receive, send, done))
        await done  # the test says when the session ends


@contextlib.asynccontextmanager
async def served(ws: Any = LeanProtocol, **options: Any) -> AsyncIterator[tuple[Sessions, str]]:
    app = Sessions()
    config = uvicorn.Config(
        app, ws=ws, port=free_port(), lifespan="off", log_level="warning", ws_per_message_deflate=False
    )
    for name, value in options.items():
        setattr(config, name, value)
    server = _Quiet(config)
    task = await serve_started(server)
    try:
        yield app, f"ws://127.0.0.1:{config.port}/ws?q=1"
    finally:
        server.should_exit = True
        await task


async def test_server_config_serves_the_lean_protocol() -> None:
    config = server_config(object(), Settings(jwt_secret="x" * 32))
    assert config.ws is LeanProtocol
    shared = server_config(object(), Settings(jwt_secret="x" * 32, ws_compression="shared")).ws
    assert issubclass(shared, LeanProtocol)


async def test_receives_in_order_and_keeps_no_handshake() -> None:
    async with served() as (app, url), connect(url, compression=None) as client:
        scope, receive, send, done = await app.opened.get()
        proto = send.__self__
        assert isinstance(proto, LeanProtocol)
        assert not getattr(proto, "__dict__", {})  # every attribute in a slot
        assert proto.response is None
        assert proto.request.path == ""
        assert not proto.request.headers
        assert dict(scope["headers"])[b"host"].startswith(b"127.0.0.1:")  # the scope keeps its own copy
        assert scope["query_string"] == b"q=1"
        assert client.response.headers["x-test"] == "1"
        for i in range(5):
            await client.send(f"m{i}")
        await client.send(b"\x01")
        got = [await receive() for _ in range(6)]
        assert [m.get("text") for m in got[:5]] == [f"m{i}" for i in range(5)]
        assert got[5] == {"type": "websocket.receive", "bytes": b"\x01"}
        await send({"type": "websocket.send", "text": "back"})
        assert await client.recv() == "back"
        done.set_result(None)


async def test_a_receive_waiting_before_data_arrives() -> None:
    async with served() as (app, url), connect(url, compression=None) as client:
        _, receive, send, done = await app.opened.get()
        waiting = asyncio.ensure_future(receive())
        inbox = send.__self__.queue
        await wait_for(lambda: inbox._getters, timeout=5, what="the receive to wait")
        assert not waiting.done()
        await client.send("late")
        assert await asyncio.wait_for(waiting, 5) == {"type": "websocket.receive", "text": "late"}
        done.set_result(None)


async def test_disconnect_while_waiting() -> None:
    async with served() as (app, url):
        client = await connect(url, compression=None)
        _, receive, _, done = await app.opened.get()
        waiting = asyncio.ensure_future(receive())
        await asyncio.sleep(0.02)
        await client.close(4000, "bye")
        message = await asyncio.wait_for(waiting, 5)
        assert message == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
        done.set_result(None)


async def test_close_from_the_server() -> None:
    async with served() as (app, url), connect(url, compression=None) as client:
        _, receive, send, done = await app.opened.get()
        await send({"type": "websocket.close", "code": 4001, "reason": "done"})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "done")
        assert (await receive())["type"] == "websocket.disconnect"
        done.set_result(None)


async def test_flow_control_holds_sends_and_the_raw_writer() -> None:
    async with served() as (app, url), connect(url, compression=None) as client:
        _, _, send, done = await app.opened.get()
        proto = send.__self__
        write = raw_writer(send)
        assert write is not None
        assert write(text_frame("raw"))
        assert await client.recv() == "raw"
        proto.pause_writing()
        assert not write(text_frame("held"))
        sending = asyncio.ensure_future(send({"type": "websocket.send", "text": "after"}))
        await wait_for(lambda: proto.writable._waiters, timeout=5, what="the send to wait")
        assert not sending.done()
        proto.resume_writing()
        await asyncio.wait_for(sending, 5)
        assert await client.recv() == "after"
        assert write(text_frame("raw again"))
        assert await client.recv() == "raw again"
        done.set_result(None)


async def test_keepalive_pings() -> None:
    async with served(ws_ping_interval=0.05, ws_ping_timeout=5.0) as (app, url):
        async with connect(url, compression=None, ping_interval=None) as client:
            _, _, send, done = await app.opened.get()
            proto = send.__self__
            await wait_for(lambda: proto.last_ping_rtt > 0, timeout=5, what="a pong")  # the client answers
            assert client.state is websockets.protocol.State.OPEN
            done.set_result(None)


async def test_max_size() -> None:
    async with served(ws_max_size=1024) as (app, url), connect(url, compression=None) as client:
        _, receive, _, done = await app.opened.get()
        await client.send("x" * 2048)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert (await receive())["type"] == "websocket.disconnect"
        done.set_result(None)


async def test_uvicorns_own_deflate_when_configured() -> None:
    async with served(ws_per_message_deflate=True) as (app, url), connect(url) as client:
        _, receive, _, done = await app.opened.get()
        assert client.response.headers["sec-websocket-extensions"].startswith("permessage-deflate")
        await client.send("compressed")
        assert (await receive())["text"] == "compressed"
        done.set_result(None)


async def test_shared_deflate_on_the_lean_protocol() -> None:
    async with served(ws=shared_deflate_protocol(FrameMemo())) as (app, url), connect(url) as client:
        _, _, send, done = await app.opened.get()
        assert "server_no_context_takeover" in client.response.headers["sec-websocket-extensions"]
        assert not getattr(send.__self__, "__dict__", {})
        await send({"type": "websocket.send", "text": "y" * 500})
        assert await client.recv() == "y" * 500
        done.set_result(None)


async def test_inbox_is_fifo_and_survives_a_cancelled_get() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    assert inbox.qsize() == 0
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert inbox.qsize() == 2
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    inbox.put_nowait(3)
    assert await inbox.get() == 3


async def test_inbox_a_woken_get_cancelled_wakes_the_next() -> None:
    inbox: Inbox[int] = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)  # wakes the first
    first.cancel()  # before it runs: the item stays and the second gets it
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == 1
    assert inbox.empty()


async def test_flag_waits_until_set() -> None:
    flag = Flag()
    assert flag.is_set()
    assert await flag.wait()
    flag.clear()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    cancelled = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not any(w.done() for w in waiters)
    flag.set()
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]


async def test_inbox_skips_cancelled_gets() -> None:
    inbox: Inbox[int] = Inbox()
    first, second, third = (asyncio.ensure_future(inbox.get()) for _ in range(3))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)  # it leaves the line; the others wait on
    second.cancel()
    inbox.put_nowait(1)  # the second is cancelled but still in line: the third gets it
    assert await asyncio.wait_for(third, 1) == 1
    with pytest.raises(asyncio.CancelledError):
        await second
    assert inbox.empty()


async def test_flag_set_skips_cancelled_waits() -> None:
    flag = Flag()
    flag.clear()
    cancelled, waiting = asyncio.ensure_future(flag.wait()), asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    flag.set()  # the cancelled wait has not left yet
    assert await asyncio.wait_for(waiting, 1)
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_every_attribute_uvicorns_protocol_sets_has_a_slot() -> None:
    """LeanProtocol copies uvicorn's constructor: an attribute a newer uvicorn adds there (and reads in
    the methods LeanProtocol inherits) would be missing. uvicorn's own protocol, built with the same
    configuration, must set nothing that LeanProtocol has no slot for, and LeanProtocol must set them all."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState

    config = uvicorn.Config(Sessions(), ws=LeanProtocol, lifespan="off", ws_per_message_deflate=False)
    config.load()
    loop = asyncio.get_running_loop()
    theirs = WebSocketsSansIOProtocol(config, ServerState(), {}, _loop=loop)
    ours = LeanProtocol(config, ServerState(), {}, _loop=loop)
    assert set(vars(theirs)) <= set(LeanProtocol.__slots__)
    assert all(hasattr(ours, name) for name in vars(theirs))
    assert not getattr(ours, "__dict__", {})
