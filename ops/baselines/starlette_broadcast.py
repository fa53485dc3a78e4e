"""Baseline for ops/bench: a bare Starlette broadcast loop on uvicorn, as the hub serves websockets.

    python ops/baselines/starlette_broadcast.py --port 9001
    POST /publish?count=600&rate=20&start=0   -> 202; publishing runs in the background
    GET  /health                              -> {"clients": N, "publishing": bool, "sent": N}

Same stack as ``tickstock serve``: uvicorn with uvloop, httptools and its default websocket
implementation (websockets, sans-I/O). Clients connect to ``/ws``; an in-process publisher encodes
each message once and awaits ``send_text`` to every client in turn: no filters, no queues, no auth,
which is the floor the framework and this machine allow. Each message carries ``bench_i`` and
``bench_t0`` (epoch seconds) for the load client; the rest is the size of a hub event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

EVENT = {
    "id": "baseline",
    "type": "pattern_detected",
    "symbol": "AAPL",
    "pattern": "hammer",
    "timeframe": "daily",
    "confidence": 0.82,
    "detected_at": "2026-11-28T15:30:00Z",
    "expires_at": None,
    "price": 187.5,
    "volume": 1200300,
    "levels": {"support": 181.2, "resistance": 192.4},
    "indicators": {"rsi": 41.5},
    "source": "baseline",
    "schema_version": 1,
}

clients: set[WebSocket] = set()
state = {"publishing": False, "sent": 0}
tasks: set[asyncio.Task[None]] = set()


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    clients.add(websocket)
    try:
        while True:
            await websocket.receive_text()  # the client may ping; nothing else to do
    except WebSocketDisconnect:
        pass
    finally:
        clients.discard(websocket)


async def _publish(count: int, rate: float, start: int) -> None:
    state["publishing"] = True
    started = time.monotonic()
    try:
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            text = json.dumps({"bench_i": start + i, "bench_t0": time.time(), "event": EVENT})
            for ws in list(clients):
                try:
                    await ws.send_text(text)
                except Exception:
                    clients.discard(ws)
            state["sent"] += 1
    finally:
        state["publishing"] = False


async def publish(request: Request) -> Response:
    count = int(request.query_params.get("count", 0))
    rate = float(request.query_params.get("rate", 20))
    start = int(request.query_params.get("start", 0))
    if state["publishing"] or count < 0 or rate <= 0:
        return Response(status_code=409)
    task = asyncio.create_task(_publish(count, rate, start))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return JSONResponse({"count": count, "rate": rate, "start": start}, status_code=202)


async def health(request: Request) -> Response:
    return JSONResponse({"clients": len(clients), **state})


app = Starlette(
    routes=[
        WebSocketRoute("/ws", ws_endpoint),
        Route("/publish", publish, methods=["POST"]),
        Route("/health", health),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    # As api/cli.py serves the hub: uvloop, httptools, the default websocket implementation, 1 MiB frames.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        ws="auto",
        ws_max_size=1 << 20,
        server_header=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
