"""``TICKSTOCK_WS_COMPRESSION``: the hub served as ``tickstock serve`` serves it (``server_config``), real
websockets clients offering permessage-deflate as a browser does (``permessage-deflate;
client_max_window_bits``), events published to ingest over NATS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

from api.app import create_app
from api.auth import mint_token
from api.cli.serving import server_config
from api.settings import Settings, SettingsError
from api.wsdeflate import MIN_DEFLATE_BYTES, FrameMemo, SharedDeflate
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, free_port, make_event, publish_events, serve_started

pytestmark = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="deflate-reader", scopes=["patterns:read"])
CONNECTIONS = 4
EVENTS = 40


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def served(live_hub: LiveHub, compression: str) -> AsyncIterator[str]:
    """The live hub's state behind a uvicorn configured as ``tickstock serve`` does, with
    ``TICKSTOCK_WS_COMPRESSION=compression``; yields its ``host:port``. Its compressor's counters go
    into the hub's registry (once per module: a name registers once)."""
    settings = dataclasses.replace(live_hub.settings, ws_compression=compression)
    registry = live_hub.hub.metrics.registry if compression == "shared" else None
    config = server_config(create_app(settings, hub=live_hub.hub), settings, registry=registry)
    config.port = free_port()
    config.lifespan = "off"
    config.log_level = "warning"
    server = _Quiet(config)
    task = await serve_started(server)
    try:
        yield f"127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def plain_hub(live_hub: LiveHub) -> AsyncIterator[str]:
    async with served(live_hub, "off") as where:
        yield where


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_hub(live_hub: LiveHub) -> AsyncIterator[str]:
    async with served(live_hub, "shared") as where:
        yield where


class BrowserDeflate(ClientPerMessageDeflateFactory):
    """A browser's offer (``permessage-deflate; client_max_window_bits``) that records, for each text
    message received, whether it came compressed (RSV1)."""

    def __init__(self) -> None:
        super().__init__(client_max_window_bits=True)
        self.compressed: list[bool] = []

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        ext = super().process_response_params(params, accepted_extensions)
        seen = self.compressed

        class Recording(PerMessageDeflate):
            def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
                if frame.opcode is Opcode.TEXT:
                    seen.append(frame.rsv1)
                return super().decode(frame, max_size=max_size)

        return Recording(
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
            ext.compress_settings,
        )


async def open_browser(url: str) -> tuple[ClientConnection, BrowserDeflate]:
    offer = BrowserDeflate()
    ws = await websockets.connect(url, extensions=[offer], compression=None, ping_interval=None)
    return ws, offer


async def frame(ws: ClientConnection, op: str) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            message = json.loads(await ws.recv())
            if message["op"] == op:
                return message  # type: ignore[no-any-return]
            assert message["op"] in ("ping", "welcome"), message


async def subscribed(url: str) -> tuple[ClientConnection, BrowserDeflate]:
    ws, offer = await open_browser(url)
    await frame(ws, "welcome")
    await ws.send(json.dumps({"op": "subscribe", "id": "all", "filter": {}}))
    await frame(ws, "subscribed")
    return ws, offer


async def samples(live_hub: LiveHub, prefix: str) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{live_hub.url}/metrics")).text
    return {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(prefix)
    }


async def counters(live_hub: LiveHub) -> tuple[float, float]:
    values = await samples(live_hub, "tickstock_ws_deflate_")
    return values["tickstock_ws_deflate_compressed_total"], values["tickstock_ws_deflate_reused_total"]


async def prepared(live_hub: LiveHub) -> float:
    return (await samples(live_hub, "tickstock_ws_prepared_frames_total"))[
        "tickstock_ws_prepared_frames_total"
    ]


async def test_off_declines_the_offer_and_sends_plain_frames(live_hub: LiveHub, plain_hub: str) -> None:
    ws, offer = await subscribed(f"ws://{plain_hub}/ws?token={READER}")
    try:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        before = await prepared(live_hub)
        await publish_events(live_hub.hub.js, [make_event(i, prefix="off") for i in range(3)])
        for _ in range(3):
            assert (await frame(ws, "event"))["event"]["id"].startswith("off-")
        assert offer.compressed == []  # nothing went through a deflate extension
        assert await prepared(live_hub) - before == 3  # each written as the bytes prepared once per event
    finally:
        await ws.close()


async def test_shared_compresses_each_distinct_frame_once_for_every_connection(
    live_hub: LiveHub, shared_hub: str
) -> None:
    peers = [await subscribed(f"ws://{shared_hub}/ws?token={READER}") for _ in range(CONNECTIONS)]
    try:
        for ws, _ in peers:
            assert ws.response is not None
            negotiated = ws.response.headers["Sec-WebSocket-Extensions"]
            assert negotiated.startswith("permessage-deflate")
            assert "server_no_context_takeover" in negotiated
        compressed0, reused0 = await counters(live_hub)
        prepared0 = await prepared(live_hub)
        events = [make_event(i, prefix="shared", pattern="doji") for i in range(EVENTS)]
        await publish_events(live_hub.hub.js, events)
        for ws, offer in peers:
            got = [(await frame(ws, "event")) for _ in range(EVENTS)]
            assert [f["event"]["id"] for f in got] == [e["id"] for e in events]  # all, in order
            seqs = [f["seq"] for f in got]
            assert seqs == sorted(seqs)
            assert offer.compressed[-EVENTS:] == [True] * EVENTS  # every event came compressed
        compressed, reused = await counters(live_hub)
        assert compressed - compressed0 == EVENTS  # once per distinct frame ...
        assert reused - reused0 == EVENTS * (CONNECTIONS - 1)  # ... and shared by every other connection
        assert await prepared(live_hub) == prepared0  # deflate sessions never take the plain bytes
    finally:
        for ws, _ in peers:
            await ws.close()


async def test_short_frames_go_uncompressed_in_a_deflate_session(shared_hub: str) -> None:
    ws, offer = await open_browser(f"ws://{shared_hub}/ws")
    try:
        await ws.send(json.dumps({"op": "ping", "ts": 7}))
        pong = await frame(ws, "pong")
        assert len(json.dumps(pong, separators=(",", ":"))) < MIN_DEFLATE_BYTES
        assert offer.compressed == [False]
    finally:
        await ws.close()


async def test_socketio_gets_the_same_shared_compression(live_hub: LiveHub, shared_hub: str) -> None:
    ws, offer = await open_browser(f"ws://{shared_hub}/socket.io/?EIO=4&transport=websocket")
    try:
        assert ws.response is not None
        assert "server_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
        opened = await ws.recv()
        assert str(opened).startswith("0")
        await ws.send("40" + json.dumps({"token": READER}))
        async with asyncio.timeout(15):
            while '"connection_confirmed"' not in str(await ws.recv()):
                pass
        assert True in offer.compressed  # the confirmation (over 128 bytes) came compressed
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def raw_socket(
    where: str, path: str, extensions: str | None
) -> AsyncIterator[tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open a websocket by hand with this ``Sec-WebSocket-Extensions`` value: the response's status,
    headers (lower-case names) and the stream."""
    host, port = where.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {where}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        yield int(status_line.split(" ")[1]), headers, reader, writer
    finally:
        writer.close()


async def raw_handshake(where: str, path: str, extensions: str | None) -> tuple[int, dict[str, str]]:
    async with raw_socket(where, path, extensions) as (status, headers, _, _):
        return status, headers


HOSTILE = [
    "permessage-deflate; client_max_window_bits=8",
    "permessage-deflate; server_max_window_bits=8",
    "permessage-deflate; server_max_window_bits=9",
    "permessage-deflate; server_max_window_bits=99",
    "permessage-deflate; client_max_window_bits=abc",
    'permessage-deflate; client_max_window_bits="10"',
    "permessage-deflate; bogus=1",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate, permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits, permessage-deflate",
    "x-webkit-deflate-frame, foo; bar=baz",
    ";;;,,,",
    "permessage-deflate; " + "; ".join(f"p{i}" for i in range(500)),
    "",
]


@pytest.mark.parametrize("offer", HOSTILE)
async def test_odd_offers_get_a_sane_handshake_or_a_clean_refusal(
    plain_hub: str, shared_hub: str, offer: str
) -> None:
    for where in (plain_hub, shared_hub):
        status, headers = await raw_handshake(where, f"/ws?token={READER}", offer)
        assert status in (101, 400), (where, offer, status)
        negotiated = headers.get("sec-websocket-extensions")
        if where == plain_hub or status != 101:
            assert negotiated is None
        elif negotiated is not None:  # accepted: one extension, no context takeover, a window we support
            assert negotiated.count("permessage-deflate") == 1
            assert "server_no_context_takeover" in negotiated
            assert "server_max_window_bits=8" not in negotiated
    # and the servers still serve a browser afterwards
    ws, _ = await subscribed(f"ws://{shared_hub}/ws?token={READER}")
    await ws.close()


async def test_a_client_window_of_8_bits_is_accepted_and_its_messages_decode(shared_hub: str) -> None:
    async with raw_socket(shared_hub, "/ws", "permessage-deflate; client_max_window_bits=8") as (
        status,
        headers,
        reader,
        writer,
    ):
        assert status == 101 and "client_max_window_bits=8" in headers["sec-websocket-extensions"]
        encoder = zlib.compressobj(wbits=-9)  # zlib cannot compress with 8 bits; a short op fits either
        body = encoder.compress(b'{"op":"ping","ts":8}') + encoder.flush(zlib.Z_SYNC_FLUSH)
        payload, mask = body[:-4], os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        writer.write(bytes([0x80 | 0x40 | Opcode.TEXT, 0x80 | len(payload)]) + mask + masked)  # FIN, RSV1
        async with asyncio.timeout(10):
            answer = await reader.readuntil(b"}")
        assert answer[2:].startswith(b'{"op":"pong","ts":8')  # a plain text frame (RSV1 clear)
        assert answer[0] == 0x80 | Opcode.TEXT


async def test_the_memo_is_bounded_and_its_output_inflates() -> None:
    memo = FrameMemo(entries=3, max_bytes=1 << 20)
    payloads = [json.dumps({"op": "event", "n": i, "pad": "x" * 200}).encode() for i in range(5)]
    for payload in payloads:
        data = memo.deflate(payload, 12)
        assert zlib.decompressobj(wbits=-12).decompress(data + b"\x00\x00\xff\xff") == payload
    assert len(memo) == 3 and memo.compressed == 5 and memo.reused == 0
    memo.deflate(payloads[4], 12)
    memo.deflate(payloads[4], 9)  # another window is another entry
    assert (memo.compressed, memo.reused, len(memo)) == (6, 1, 3)
    memo.deflate(payloads[0], 12)  # evicted earlier: compressed again
    assert memo.compressed == 7

    tight = FrameMemo(entries=100, max_bytes=64)
    for payload in payloads:
        tight.deflate(payload, 12)
    assert len(tight) <= 1
    big = os.urandom(100_000)
    tight.deflate(big, 12)
    tight.deflate(big, 12)
    assert tight.compressed == 7 and tight.reused == 0  # too big to keep


async def test_the_setting_is_off_by_default_and_checked() -> None:
    assert Settings.from_env({}).ws_compression == "off"
    assert Settings.from_env({"TICKSTOCK_WS_COMPRESSION": "shared"}).ws_compression == "shared"
    with pytest.raises(SettingsError, match="TICKSTOCK_WS_COMPRESSION must be off or shared, not 'gzip'"):
        Settings.from_env({"TICKSTOCK_WS_COMPRESSION": "gzip"})
    assert server_config(object(), Settings()).ws_per_message_deflate is False


async def test_control_and_fragmented_frames_are_compressed_as_websockets_does() -> None:
    """uvicorn sends neither fragments nor compressible control frames, but the extension stays correct
    for them: control frames untouched, a fragmented message compressed as one (no context takeover)."""
    memo = FrameMemo()
    negotiated = PerMessageDeflate(True, True, 12, 12, {"memLevel": 5})
    ext = SharedDeflate(memo, negotiated)
    ping = Frame(Opcode.PING, b"x" * 200)
    assert ext.encode(ping) is ping
    first = ext.encode(Frame(Opcode.TEXT, b'{"a":"' + b"y" * 300, fin=False))
    last = ext.encode(Frame(Opcode.CONT, b'"}', fin=True))
    assert first.rsv1 and not last.rsv1 and memo.compressed == 0
    inflate = zlib.decompressobj(wbits=-12)
    text = inflate.decompress(bytes(first.data) + bytes(last.data) + b"\x00\x00\xff\xff")
    assert text == b'{"a":"' + b"y" * 300 + b'"}'
