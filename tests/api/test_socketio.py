"""``/socket.io/`` end to end: python-socketio's AsyncClient on a live hub, events published to ingest."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
import socketio
import websockets

from api.auth import mint_token
from api.settings import Settings
from tests.api.test_ws import _client_frame
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import LiveHub, make_event, publish_events, wait_for, within

pytestmark = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="sio-reader", scopes=["patterns:read"])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hub(settings: Settings) -> AsyncIterator[LiveHub]:
    await delete_all_streams(settings.nats_url or "")
    tuned = replace(
        settings,
        ws_queue_messages=50,
        ws_queue_age_s=3.0,
        ws_max_subscriptions=5,
        rate_limit_per_s=0,
        socketio_queue_packets=8,
        socketio_max_packet_bytes=16_384,
    )
    async with LiveHub(tuned) as live:
        yield live


class Client:
    """A python-socketio AsyncClient that records every event it gets, in order."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        self.sio.on("*", self._record)
        self.sio.on("disconnect", self._gone)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))
        self.changed.set()

    async def _gone(self, reason: Any = None) -> None:
        self.events.append(("disconnect", reason))
        self.changed.set()

    def named(self, name: str) -> list[Any]:
        return [data for event, data in self.events if event == name]

    async def next(self, name: str, count: int = 1) -> list[Any]:
        await wait_for(lambda: len(self.named(name)) >= count, timeout=15, what=f"{count} {name}")
        return self.named(name)

    async def connect(
        self, hub: LiveHub, token: str | None = READER, transports: list[str] | None = None
    ) -> None:
        await self.sio.connect(
            hub.url,
            auth=None if token is None else {"token": token},
            transports=transports or ["websocket"],
            wait_timeout=10,
        )


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[Client]:
    c = Client()
    yield c
    await c.sio.disconnect()


async def test_python_client_gets_exactly_the_matching_events_in_order(hub: LiveHub, client: Client) -> None:
    await client.connect(hub)
    (hello,) = await client.next("connection_confirmed")
    assert hello["user_id"] == "sio-reader" and hello["status"] == "connected"
    await client.sio.emit("subscribe", {"id": "aapl", "filter": {"symbols": ["AAPL"], "confidence_min": 0.5}})
    (reply,) = await client.next("subscribed")
    assert reply["id"] == "aapl" and reply["replayed"] == 0
    events = [
        make_event(
            i, prefix="py", symbol=("AAPL" if i % 2 else "MSFT"), confidence=(0.4 if i % 3 == 0 else 0.8)
        )
        for i in range(30)
    ]
    await publish_events(hub.hub.js, events)
    wanted = [e["id"] for e in events if e["symbol"] == "AAPL" and float(e["confidence"]) >= 0.5]
    alerts = await client.next("pattern_alert", len(wanted))
    assert [a["event"]["data"]["id"] for a in alerts] == wanted
    first = alerts[0]
    assert first["type"] == "pattern_alert" and first["subs"] == ["aapl"]
    assert first["event"]["event_type"] == "pattern_detected"
    assert first["event"]["data"]["symbol"] == "AAPL"
    assert isinstance(first["event"]["timestamp"], float)
    seqs = [a["seq"] for a in alerts]
    assert seqs == sorted(seqs)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, 4401),
        ("not-a-jwt", 4401),
        (mint_token(JWT_SECRET, subject="x", scopes=["patterns:read"], ttl_s=-60), 4401),
        (mint_token("another-secret-another-secret-32b", subject="x", scopes=["patterns:read"]), 4401),
        (mint_token(JWT_SECRET, subject="x", scopes=["patterns:write"]), 4403),
    ],
)
async def test_a_bad_or_missing_token_is_refused_at_connect(
    hub: LiveHub, token: str | None, code: int
) -> None:
    c = Client()
    errors: list[Any] = []
    c.sio.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await c.connect(hub, token)
    assert errors and errors[0]["data"] == {"code": code}
    assert token is None or token not in json.dumps(errors)
    assert not c.sio.connected


async def test_upstream_events_subscribe_patterns_and_heartbeat(hub: LiveHub, client: Client) -> None:
    await client.connect(hub, transports=["polling"])  # long-polling works too
    await client.next("connection_confirmed")
    await client.sio.emit("subscribe_patterns", {"patterns": ["doji"]})
    (confirmed,) = await client.next("subscription_confirmed")
    assert confirmed["patterns"] == ["doji"] and confirmed["count"] == 1 and confirmed["id"] == "patterns"
    await client.sio.emit("heartbeat")
    (ack,) = await client.next("heartbeat_ack")
    assert isinstance(ack["timestamp"], float)
    events = [make_event(i, prefix="up", pattern=("doji" if i % 2 else "hammer")) for i in range(10)]
    await publish_events(hub.hub.js, events)
    wanted = [e["id"] for e in events if e["pattern"] == "doji"]
    alerts = await client.next("pattern_alert", len(wanted))
    assert [a["event"]["data"]["id"] for a in alerts] == wanted
    assert all(a["event"]["data"]["pattern"] == "doji" for a in alerts)


async def test_a_long_polling_client_disconnects_without_waiting_out_the_ping_window(
    hub: LiveHub, client: Client
) -> None:
    """python-socketio's ``disconnect()`` over long-polling waits for the GET it left pending. The hub
    answers that GET when the client's CLOSE arrives; unanswered, it waited out the 25 + 20 s ping window."""
    await client.connect(hub, transports=["polling"])
    await client.next("connection_confirmed")  # the session is up: the client's next GET waits
    await asyncio.wait_for(client.sio.disconnect(), timeout=10)
    assert not client.sio.connected


async def test_resume_with_since_replays_what_was_missed(hub: LiveHub, client: Client) -> None:
    await client.connect(hub)
    (hello,) = await client.next("connection_confirmed")
    events = [make_event(i, prefix="rs", symbol="NVDA") for i in range(6)]
    await publish_events(hub.hub.js, events)
    await wait_for(
        lambda: hub.hub.fanout is not None and hub.hub.fanout.head >= hello["head"] + 6, what="stored"
    )
    await client.sio.emit(
        "subscribe", {"id": "nvda", "filter": {"symbols": ["NVDA"]}, "since": hello["head"]}
    )
    (reply,) = await client.next("subscribed")
    assert reply["replayed"] == 6 and reply["recovered"] is True
    alerts = await client.next("pattern_alert", 6)
    assert [a["event"]["data"]["id"] for a in alerts] == [e["id"] for e in events]
    assert [a["seq"] for a in alerts] == list(range(hello["head"] + 1, hello["head"] + 7))


@pytest.mark.parametrize(
    ("event", "payload", "code"),
    [
        ("nonsense", {}, "unknown_event"),
        ("subscribe", "not an object", "invalid"),
        ("subscribe", {"id": "x", "filter": {"symbols": "AAPL"}}, "invalid_filter"),
        ("subscribe", {"id": "x", "filter": {"symbols": ["A"] * 2001}}, "invalid_filter"),
        ("subscribe", {"id": "x", "filter": {"universes": ["no-such-universe"]}}, "invalid_filter"),
        ("subscribe", {"id": "x", "since": -1}, "invalid"),
        ("subscribe", {"id": "x", "extra": 1}, "invalid"),
        ("subscribe_patterns", {"patterns": "doji"}, "invalid"),
        ("subscribe_patterns", {"patterns": ["no-such-pattern"]}, "invalid_filter"),
        ("unsubscribe", {"id": "never"}, "unknown_subscription"),
    ],
)
async def test_hostile_events_get_an_error_event_and_the_session_stays(
    hub: LiveHub, client: Client, event: str, payload: Any, code: str
) -> None:
    await client.connect(hub)
    await client.next("connection_confirmed")
    await client.sio.emit(event, payload)
    (error,) = await client.next("error")
    assert error["code"] == code, error
    await client.sio.emit("heartbeat")
    await client.next("heartbeat_ack")
    assert client.sio.connected


async def test_too_many_subscriptions_and_two_arguments(hub: LiveHub, client: Client) -> None:
    await client.connect(hub)
    await client.next("connection_confirmed")
    for i in range(6):
        await client.sio.emit("subscribe", {"id": f"s{i}"})
    errors = await client.next("error")
    assert errors[0]["code"] == "too_many_subscriptions" and errors[0]["id"] == "s5"
    await client.sio.emit("subscribe", ({"id": "a"}, {"id": "b"}))
    errors = await client.next("error", 2)
    assert errors[1]["code"] == "invalid"
    await client.sio.emit("unsubscribe", {"id": "s0"})
    (gone,) = await client.next("unsubscribed")
    assert gone == {"id": "s0"}


async def test_binary_attachments_are_refused_with_an_error(hub: LiveHub, client: Client) -> None:
    await client.connect(hub)
    await client.next("connection_confirmed")
    await client.sio.emit("subscribe", {"id": "b", "blob": b"\x00" * 10})
    errors = await client.next("error")
    assert {e["code"] for e in errors} == {"bad_frame"}
    await client.sio.emit("heartbeat")
    await client.next("heartbeat_ack")


async def raw_session(hub: LiveHub) -> websockets.asyncio.client.ClientConnection:
    """A bare Engine.IO websocket joined to the default namespace with a token."""
    ws = await websockets.connect(f"{hub.ws_url}/socket.io/?EIO=4&transport=websocket")
    opened = await ws.recv()
    assert str(opened).startswith("0{")
    await ws.send("40" + json.dumps({"token": READER}))
    connected = await ws.recv()
    assert str(connected).startswith("40{")
    return ws


async def recv_until(ws: websockets.asyncio.client.ClientConnection, prefix: str) -> str:
    async with within(10, what=f"a {prefix} message"):
        while True:
            message = str(await ws.recv())
            if message.startswith(prefix):
                return message


@pytest.mark.parametrize(
    "packet",
    ['4{"not":"an event"}', "42[", "4" + "[" * 2000, '42[{"a":1},2]', "49"],
)
async def test_malformed_socketio_packets_get_bad_frame(hub: LiveHub, packet: str) -> None:
    ws = await raw_session(hub)
    try:
        await ws.send(packet)
        await ws.send('42["heartbeat"]')
        first = await recv_until(ws, "42[")
        assert '"connection_confirmed"' in first
        error = json.loads((await recv_until(ws, "42["))[2:])
        if error[0] == "error":
            assert error[1]["code"] in ("bad_frame", "unknown_event")
            error = json.loads((await recv_until(ws, "42["))[2:])
        assert error[0] == "heartbeat_ack"
    finally:
        await ws.close()


@pytest.mark.parametrize("message", ["hello", "", "4" + "x" * 20_000])
async def test_a_message_that_is_not_engineio_or_too_big_ends_the_session(hub: LiveHub, message: str) -> None:
    ws = await raw_session(hub)
    await ws.send(message)
    async with within(10, what="the session to end"):
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            while True:
                await ws.recv()
    assert hub.hub.fanout is not None
    await wait_for(lambda: all(c.subject != "sio-reader" for c in hub.hub.fanout.connections), what="gone")


async def test_a_slow_session_is_closed_with_4409_never_silently_dropped(hub: LiveHub) -> None:
    # A bare websocket with a tiny receive buffer that never reads: the socket, Engine.IO's bounded queue
    # and the connection's outbox fill, then the session is closed with 4409.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    writer.write(_client_frame("40" + json.dumps({"token": READER})))
    writer.write(_client_frame('42["subscribe",{"id":"slow","filter":{"symbols":["SLOW"]}}]'))
    assert hub.hub.fanout is not None
    fanout = hub.hub.fanout
    try:
        await wait_for(lambda: any("slow" in c.subs for c in fanout.connections), what="the subscription")
        (conn,) = [c for c in fanout.connections if "slow" in c.subs]
        sent = 0

        async def closed() -> bool:
            nonlocal sent
            if conn.close_code is not None:
                return True
            assert sent < 3_000, "the session was never closed"
            big = {"blob": "z" * 12_000}
            await publish_events(
                hub.hub.js, [make_event(sent + i, prefix="slow", symbol="SLOW", data=big) for i in range(50)]
            )
            sent += 50
            return False

        await wait_for(closed, timeout=60, what="the slow session closed")
        assert conn.close_code == 4409 and "slow consumer" in conn.close_reason
        await wait_for(lambda: conn not in fanout.connections, timeout=30, what="the slow session gone")
    finally:
        writer.transport.abort()


async def test_a_failing_handler_closes_the_session_with_1011(
    hub: LiveHub, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.connect(hub)
    await client.next("connection_confirmed")
    assert hub.hub.fanout is not None

    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(hub.hub.fanout, "subscribe", broken)
    await client.sio.emit("subscribe", {"id": "x"})
    (closing,) = await client.next("closing")
    assert closing == {"code": 1011, "reason": "internal error"}
    await client.next("disconnect")
