"""The Socket.IO session adapter's pure parts: the alert codec, and closing a session that does not take
its close (an Engine.IO session stand-in: a real bounded queue, a disconnect that never finishes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from engineio.exceptions import EngineIOError, SocketIsClosedError

from api.sio_wire import AlertCodec, SessionWire, alert

ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")

EVENT = {
    "id": "e1",
    "type": "pattern_updated",
    "symbol": "AAPL",
    "pattern": "hammer",
    "confidence": 0.8,
    "detected_at": "2026-12-04T15:00:00Z",
    "data": {"k": 1},
}


def frame(seq: int, subs: list[str]) -> str:
    return json.dumps({"op": "event", "seq": seq, "subs": subs, "event": EVENT}, separators=(",", ":"))


def test_an_alert_has_upstreams_shape() -> None:
    body = alert(json.loads(frame(7, ["a", "b"])))
    assert body["type"] == "pattern_alert" and body["seq"] == 7 and body["subs"] == ["a", "b"]
    event = body["event"]
    assert event["event_type"] == "pattern_updated" and event["source"] == "unknown"
    assert event["timestamp"] == 1796396400.0  # 2026-12-04T15:00:00Z in epoch seconds
    assert event["data"]["timestamp"] == "2026-12-04T15:00:00Z" and event["data"]["data"] == {"k": 1}


def test_the_codec_translates_each_frame_once_and_stays_bounded() -> None:
    codec = AlertCodec(size=2)
    first = codec.packet(frame(1, ["a"]))
    assert first.startswith('42["pattern_alert",') and codec.packet(frame(1, ["a"])) is first
    codec.packet(frame(2, ["a"]))
    third = codec.packet(frame(3, ["a"]))  # over the size: the cache starts again
    assert json.loads(third[2:])[1]["seq"] == 3
    assert len(codec._packets) == 1


class Session:
    """Engine.IO's session as the wire sees it: a bounded queue, ``send``, ``close``."""

    def __init__(self, *, closed: bool = False) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        self.sid = "eio-1"
        self.closed = closed

    async def send(self, pkt: Any) -> None:
        if self.closed:
            raise SocketIsClosedError()
        await self.queue.put(pkt)

    async def close(self, wait: bool = True) -> None:
        raise EngineIOError("closed already")


@ON_SESSION_LOOP
async def test_a_closed_polling_session_ends_the_connections_writer() -> None:
    wire = SessionWire(socket=Session(closed=True), codec=AlertCodec(), disconnect=None)
    with pytest.raises(ConnectionError):
        await wire({"type": "websocket.send", "text": '42["heartbeat_ack",{}]'})


@ON_SESSION_LOOP
async def test_a_polling_session_gets_engineio_messages_on_its_queue() -> None:
    session = Session()
    wire = SessionWire(socket=session, codec=AlertCodec(), disconnect=None)
    await wire({"type": "websocket.send", "text": frame(1, ["a"])})
    pkt = session.queue.get_nowait()
    assert pkt.encode().startswith('42["pattern_alert"')


@ON_SESSION_LOOP
async def test_a_session_that_does_not_take_its_close_has_its_websocket_closed() -> None:
    session = Session()
    for n in range(3):
        session.queue.put_nowait(n)
    session.queue.put_nowait(None)  # the writer's end-of-stream marker survives the drop
    sent: list[dict[str, Any]] = []
    stuck = asyncio.Event()

    async def raw_send(message: dict[str, Any]) -> None:
        sent.append(message)

    wire = SessionWire(socket=session, codec=AlertCodec(), disconnect=stuck.wait, raw_send=raw_send)
    await wire({"type": "websocket.close", "code": 4409, "reason": "slow consumer"})
    assert sent == [{"type": "websocket.close", "code": 4409, "reason": "slow consumer"}]
    left = [session.queue.get_nowait() for _ in range(session.queue.qsize())]
    assert left[0] is None and '"closing"' in left[1].encode()


@ON_SESSION_LOOP
async def test_a_polling_session_that_does_not_take_its_close_is_left_to_engineio() -> None:
    stuck = asyncio.Event()
    wire = SessionWire(socket=Session(), codec=AlertCodec(), disconnect=stuck.wait)
    await wire({"type": "websocket.close", "code": 1001, "reason": "going away"})  # returns after the wait


@ON_SESSION_LOOP
async def test_a_session_closed_meanwhile_is_let_go() -> None:
    async def done() -> None:
        return None

    wire = SessionWire(socket=Session(), codec=AlertCodec(), disconnect=done)
    await wire({"type": "websocket.close", "code": 1000, "reason": ""})
