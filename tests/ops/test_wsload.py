"""ops/wsload.py counts right: deliveries, losses, duplicates, order and latency against a tiny server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops"))

from wsload import Conn, Load, expected_counts

from tests.support import free_port, serve_started

CONNECTIONS = 6
FIRST, COUNT = 10, 50  # measured indices 10..59; 0..9 are warm-up
# Sent to every client: 17 and 23 missing, 31 twice, 40 before 39, a control frame in between.
SENT = [i for i in range(60) if i not in (17, 23, 39)] + [31, 39]


async def feed(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"op": "pong", "ts": 1}))
    for i in SENT:
        await websocket.send_text(
            json.dumps(
                {
                    "op": "event",
                    "seq": i,
                    "event": {"symbol": "AAPL", "data": {"bench_i": i, "bench_t0": time.time()}},
                }
            )
        )
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


@pytest.mark.timeout(60)
async def test_counts_deliveries_losses_duplicates_and_inversions() -> None:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[WebSocketRoute("/ws", feed)]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    task = await serve_started(server)

    def run() -> dict[str, object]:
        conns = [Conn(f"ws://127.0.0.1:{port}/ws", "all")] * CONNECTIONS
        with Load("plain", conns, first=FIRST, count=COUNT, processes=2, start_method="spawn") as load:
            assert load.wait_ready(30)["ready"] == CONNECTIONS
            load.drain(CONNECTIONS * 48, stall_s=1.0, timeout_s=20)
            return load.stop().as_dict()

    try:
        result = await asyncio.to_thread(run)
    finally:
        server.should_exit = True
        await task
    assert expected_counts("all", FIRST, COUNT) == COUNT
    assert result["ready"] == CONNECTIONS and result["failed"] == 0
    assert result["expected"] == CONNECTIONS * COUNT
    assert result["delivered"] == CONNECTIONS * 48  # 50 measured, 17 and 23 never sent
    assert result["lost"] == CONNECTIONS * 2
    assert result["duplicates"] == CONNECTIONS  # 31 again
    assert result["inversions"] == CONNECTIONS  # 39 after 59
    latency = result["latency_ms"]
    assert isinstance(latency, dict) and latency["n"] == CONNECTIONS * 48 and 0 <= latency["p50"] < 5000


def test_expected_counts_match_the_filters_share() -> None:
    assert expected_counts("sym_even", 0, 100) == 50
    assert expected_counts("tf_fast", 0, 100) == 50
    assert expected_counts("conf_high", 0, 100) == 50
