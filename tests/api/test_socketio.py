"""``/socket.io/`` end to end: python-socketio's AsyncClient on a live hub, events published to ingest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
import socketio
import websockets

from api.auth import mint_token
from api.settings import Settings
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
        socketio_max_packet_bytes=4096,
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

    async def connect(self, hub: LiveHub, token: str | None = READER, transports: list[str] | None = None) -> None:
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
        make_event(i, prefix="py", symbol=("AAPL" if i % 2 else "MSFT"), confidence=(0.4 if i % 3 == 0 else 0.8))
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
