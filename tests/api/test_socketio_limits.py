"""``/socket.io/`` at its limits: transports, origins, connection caps, failed authentications, token
expiry, shutdown, an unavailable key set."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import socketio
import websockets
from joserfc.jwk import RSAKey

from api.auth import mint_token
from api.authlimit import AUTH_FAILURE_KEY_PREFIX
from api.settings import Settings
from tests.api.test_hostile_auth import _rs256
from tests.api.test_socketio import READER, Client
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

BURST = 2
ORIGIN = "https://dashboard.example"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_hub(settings: Settings) -> AsyncIterator[LiveHub]:
    tuned = dataclasses.replace(
        settings,
        rate_limit_per_s=0,
        ws_max_connections=2,
        auth_failure_per_s=0.05,
        auth_failure_burst=BURST,
        socketio_transports="websocket",
        socketio_cors_origins=f" {ORIGIN} ,",
    )
    async with LiveHub(tuned) as live:
        yield live


async def refused(hub: LiveHub, token: str | None) -> dict[str, Any]:
    c = Client()
    errors: list[Any] = []
    c.sio.on("connect_error", lambda data: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await c.connect(hub, token)
    assert errors, "no connect_error"
    return errors[0]  # type: ignore[no-any-return]


async def test_websocket_only_refuses_long_polling(small_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=small_hub.url) as http:
        response = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 400


async def test_only_the_configured_origins_may_connect(small_hub: LiveHub) -> None:
    url = f"{small_hub.ws_url}/socket.io/?EIO=4&transport=websocket"
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(url, origin="https://evil.example")  # type: ignore[arg-type]
    async with websockets.connect(url, origin=ORIGIN) as ws:  # type: ignore[arg-type]
        assert str(await ws.recv()).startswith("0{")


async def test_sessions_are_capped_by_the_connection_limit(small_hub: LiveHub) -> None:
    # The fan-out is full of /ws connections: a Socket.IO connect is refused with 4429.
    feeds = [await websockets.connect(f"{small_hub.ws_url}/ws?token={READER}") for _ in range(2)]
    try:
        for ws in feeds:
            assert '"welcome"' in str(await ws.recv())
        error = await refused(small_hub, READER)
        assert error["data"] == {"code": 4429} and "too many connections" in error["message"]
    finally:
        for ws in feeds:
            await ws.close()
    # Engine.IO sessions that never join the namespace count too: the third is refused.
    url = f"{small_hub.ws_url}/socket.io/?EIO=4&transport=websocket"
    bare = [await websockets.connect(url) for _ in range(2)]
    try:
        for ws in bare:
            assert str(await ws.recv()).startswith("0{")
        with pytest.raises((websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed)):
            third = await websockets.connect(url)
            await third.recv()
    finally:
        for ws in bare:
            await ws.close()


async def test_an_expired_token_closes_the_session_with_4401(small_hub: LiveHub) -> None:
    c = Client()
    await c.connect(small_hub, mint_token(JWT_SECRET, subject="brief", scopes=["patterns:read"], ttl_s=2))
    try:
        (closing,) = await c.next("closing")
        assert closing["code"] == 4401 and "expired" in closing["reason"]
        await c.next("disconnect")
    finally:
        await c.sio.disconnect()


async def test_failed_authentications_beyond_the_burst_are_4429(
    small_hub: LiveHub, redis_client: aioredis.Redis
) -> None:
    await redis_client.delete(AUTH_FAILURE_KEY_PREFIX + "127.0.0.1")
    assert (await refused(small_hub, "junk"))["data"] == {"code": 4401}
    assert (await refused(small_hub, None))["data"] == {"code": 4401}
    assert (await refused(small_hub, "junk"))["data"] == {"code": 4429}
    assert (await refused(small_hub, None))["data"] == {"code": 4429}
    await redis_client.delete(AUTH_FAILURE_KEY_PREFIX + "127.0.0.1")


async def test_going_away_says_closing_1001_then_disconnects(settings: Settings) -> None:
    async with LiveHub(dataclasses.replace(settings, rate_limit_per_s=0, ws_drain_s=1.0)) as hub:
        c = Client()
        await c.connect(hub)
        await c.next("connection_confirmed")
        assert hub.hub.fanout is not None
        await hub.hub.fanout.go_away()
        (closing,) = await c.next("closing")
        assert closing["code"] == 1001
        await c.next("disconnect")
        assert not hub.hub.fanout.connections
        error = await refused(hub, READER)  # not accepting any more
        assert error["data"] == {"code": 1001}


async def test_an_unavailable_key_set_is_1013(settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-jwks.json"
    tuned = dataclasses.replace(settings, jwt_secret=None, jwks_url=missing.as_uri(), rate_limit_per_s=0)
    async with LiveHub(tuned) as hub:
        key = RSAKey.generate_key(2048, parameters={"kid": "sio-rsa"}, private=True)
        error = await refused(hub, _rs256(key))
        assert error["data"] == {"code": 1013} and "unavailable" in error["message"]
        await wait_for(lambda: not hub.hub.fanout or not hub.hub.fanout.connections, what="no session")
