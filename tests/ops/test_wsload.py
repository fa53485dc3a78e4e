"""ops/wsload.py counts right: deliveries, losses, duplicates, order and latency against a tiny server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))

from wsload import Conn, Load, expected_counts

from api.auth import mint_token
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, free_port, make_event, publish_events, serve_started

R = TypeVar("R")
CONNECTIONS = 6
FIRST, COUNT = 10, 50  # measured indices 10..59; 0..9 are warm-up
# Sent to every client: 17 and 23 missing, 31 twice, 40 before 39, a control frame in between.
SENT = [i for i in range(60) if i not in (17, 23, 39)] + [31, 39]


async def feed(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"op": "pong", "ts": 1}))
    for n, i in enumerate(SENT):
        if n == len(SENT) // 2:
            await asyncio.sleep(1.0)  # the server pings (every 0.1 s) while the client reads frames
        await websocket.send_text(
            json.dumps(
                {
                    "op": "event",
                    "seq": i,
                    "event": {"symbol": "AAPL", "data": {"bench_i": i, "bench_t0": time.time()}},
                    # frames of every length encoding: 7 bits, 16 bits (i % 3 == 1), 64 bits (i == 50)
                    "pad": "x" * (200 if i % 3 == 1 else 70_000 if i == 50 else 0),
                }
            )
        )
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def loaded(endpoint: Callable[[WebSocket], Awaitable[None]], run: Callable[[str], R]) -> R:
    """Serve ``endpoint`` at ``/ws`` on uvicorn (the hub's websocket implementation, pinging every 0.1 s
    and closing a connection that does not answer one within 0.5 s), run ``run(url)`` in a thread (the
    load client blocks), then stop the server."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[WebSocketRoute("/ws", endpoint)]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            ws_ping_interval=0.1,
            ws_ping_timeout=0.5,
        )
    )
    task = await serve_started(server)
    try:
        return await asyncio.to_thread(run, f"ws://127.0.0.1:{port}/ws")
    finally:
        server.should_exit = True
        await task


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("deflate", "engine"), [(False, "python"), (True, "python"), (False, "c")])
async def test_counts_deliveries_losses_duplicates_and_inversions(deflate: bool, engine: str) -> None:
    """The same counts whether the clients offer permessage-deflate (as a browser does: this uvicorn
    accepts it, so every connection negotiates it: websockets reads the frames) or not (the client
    reads them itself), and with the C engine."""

    def run(url: str) -> dict[str, object]:
        conns = [Conn(url, "all", deflate=deflate)] * CONNECTIONS
        with Load(
            "plain", conns, first=FIRST, count=COUNT, processes=2, start_method="spawn", engine=engine
        ) as load:
            assert load.wait_ready(30)["ready"] == CONNECTIONS
            load.drain(CONNECTIONS * 48, stall_s=1.0, timeout_s=20)
            return load.stop().as_dict()

    result = await loaded(feed, run)
    assert expected_counts("all", FIRST, COUNT) == COUNT
    assert result["ready"] == CONNECTIONS and result["failed"] == 0
    assert result["negotiated"] == (CONNECTIONS if deflate else 0)
    assert result["expected"] == CONNECTIONS * COUNT
    assert result["delivered"] == CONNECTIONS * 48  # 50 measured, 17 and 23 never sent
    assert result["lost"] == CONNECTIONS * 2
    assert result["duplicates"] == CONNECTIONS  # 31 again
    assert result["inversions"] == CONNECTIONS  # 39 after 59
    assert result["closes"] == {}  # every ping was answered
    latency = result["latency_ms"]
    assert isinstance(latency, dict) and latency["n"] == CONNECTIONS * 48 and 0 <= latency["p50"] < 5000
    # Every tenth of the measured messages had deliveries, and no tenth's p99 is above the largest
    # latency (the p99s are rounded to 0.1 ms, the maximum to 0.01 ms).
    tenths = result["p99_ms_kept_by_tenth"]
    assert isinstance(tenths, list) and len(tenths) == 10 and all(t is not None and t >= 0 for t in tenths)
    assert max(tenths) <= latency["max"] + 0.06  # 0.05 + 0.005 of rounding at most


@pytest.mark.timeout(60)
async def test_the_c_engine_fails_a_connection_whose_server_takes_the_deflate_offer() -> None:
    """It cannot inflate: each connection fails, saying so, and counts as negotiated."""

    def run(url: str) -> dict[str, object]:
        conns = [Conn(url, "all", deflate=True)] * 2
        with Load("plain", conns, first=FIRST, count=COUNT, processes=1, engine="c") as load:
            assert load.wait_ready(30)["failed"] == 2
            return load.stop().as_dict()

    result = await loaded(feed, run)
    assert result["ready"] == 0 and result["failed"] == 2 and result["negotiated"] == 2
    assert result["delivered"] == 0
    errors = result["errors"]
    assert isinstance(errors, dict)
    [(why, n)] = errors.items()
    assert n == 2 and "deflate" in why


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="engine"):
        Load("plain", [], engine="rust")


def test_expected_counts_match_the_filters_share() -> None:
    assert expected_counts("sym_even", 0, 100) == 50
    assert expected_counts("tf_fast", 0, 100) == 50
    assert expected_counts("conf_high", 0, 100) == 50


@pytest.mark.timeout(120)
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("engine", ["python", "c"])
async def test_the_hubsio_mode_counts_the_hubs_socketio_alerts(live_hub: LiveHub, engine: str) -> None:
    """ops/bench's hub-sio row: wsload joins /socket.io/ with a token, subscribes, counts pattern_alerts."""
    token = mint_token(JWT_SECRET, subject="bench-sio", scopes=["patterns:read"])
    join = ("40" + json.dumps({"token": token})).encode()
    subscribe = b'42["subscribe",{"id":"b","filter":{"symbols":["WSL"]}}]'
    url = f"{live_hub.ws_url}/socket.io/?EIO=4&transport=websocket"
    conns = [Conn(url, "all", (join, subscribe))] * 3
    events = [
        make_event(i, prefix=f"wsl-{engine}", symbol="WSL", data={"bench_i": i, "bench_t0": time.time()})
        for i in range(20)
    ]

    def run(loop: asyncio.AbstractEventLoop) -> dict[str, object]:
        with Load(
            "hubsio", conns, first=0, count=20, processes=1, start_method="spawn", engine=engine
        ) as load:
            assert load.wait_ready(30)["ready"] == 3
            asyncio.run_coroutine_threadsafe(publish_events(live_hub.hub.js, events), loop).result(30)
            load.drain(3 * 20, stall_s=3.0, timeout_s=30)
            return load.stop().as_dict()

    result = await asyncio.to_thread(run, asyncio.get_running_loop())
    assert result["ready"] == 3 and result["failed"] == 0
    assert result["delivered"] == 60 and result["lost"] == 0 and result["duplicates"] == 0
    assert result["inversions"] == 0


@pytest.mark.timeout(120)
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("engine", ["python", "c"])
async def test_the_hub_mode_subscribes_on_ws_and_counts_what_its_filter_selects(
    live_hub: LiveHub, engine: str
) -> None:
    """ops/bench's hub row: token in the URL, a subscribe frame at welcome, ready at subscribed; a
    filter that selects half of the events gets that half, and a forged token fails the connection."""
    token = mint_token(JWT_SECRET, subject="bench-ws", scopes=["patterns:read"])
    url = f"{live_hub.ws_url}/ws?token={token}"
    subscribe = json.dumps({"op": "subscribe", "id": "b", "filter": {"symbols": ["WSH"]}}).encode()
    conns = [Conn(url, "all", (subscribe,))] * 2 + [Conn(f"{live_hub.ws_url}/ws?token=forged", "all")]
    events = [
        make_event(
            i,
            prefix=f"wsh-{engine}",
            symbol="WSH" if i % 2 == 0 else "WSX",
            data={"bench_i": i, "bench_t0": time.time()},
        )
        for i in range(20)
    ]

    def run(loop: asyncio.AbstractEventLoop) -> dict[str, object]:
        with Load("hub", conns, first=0, count=20, processes=1, start_method="spawn", engine=engine) as load:
            status = load.wait_ready(30)
            assert status["ready"] == 2 and status["failed"] == 1
            asyncio.run_coroutine_threadsafe(publish_events(live_hub.hub.js, events), loop).result(30)
            load.drain(2 * 10, stall_s=3.0, timeout_s=30)
            return load.stop().as_dict()

    result = await asyncio.to_thread(run, asyncio.get_running_loop())
    assert result["ready"] == 2 and result["failed"] == 1
    assert result["delivered"] == 20 and result["duplicates"] == 0 and result["inversions"] == 0
    assert result["kept"] == 2 and result["closes"] == {"4401": 1}  # the forged token: unauthorized


async def closing(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close(4409, "slow consumer")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ["python", "c"])
async def test_counts_the_close_codes_the_server_sends(engine: str) -> None:
    def run(url: str) -> dict[str, object]:
        conns = [Conn(url, "all")] * 3
        with Load("plain", conns, first=0, count=1, processes=1, start_method="spawn", engine=engine) as load:
            load.wait_ready(30)
            load.drain(1, stall_s=1.0, timeout_s=5)
            return load.stop().as_dict()

    result = await loaded(closing, run)
    assert result["closes"] == {"4409": 3}
