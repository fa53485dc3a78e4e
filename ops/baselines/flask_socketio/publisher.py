"""Publisher for the Flask-SocketIO baseline: ``count`` messages at ``rate``/s through the Redis queue.

    python publisher.py --redis redis://127.0.0.1:6379/0 --count 600 --rate 20 --start 0

An external process emitting with ``SocketIO(message_queue=...)``, as the original design's detectors
would; every server on the queue re-emits to its clients. Each message carries ``bench_i`` and
``bench_t0`` (epoch seconds) for the load client; the rest is the size of a hub event.
"""

from __future__ import annotations

import argparse
import time

from flask_socketio import SocketIO

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

parser = argparse.ArgumentParser()
parser.add_argument("--redis", required=True)
parser.add_argument("--count", type=int, required=True)
parser.add_argument("--rate", type=float, default=20)
parser.add_argument("--start", type=int, default=0)
args = parser.parse_args()

socketio = SocketIO(message_queue=args.redis)
started = time.monotonic()
for i in range(args.count):
    delay = started + i / args.rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    socketio.emit("event", {"bench_i": args.start + i, "bench_t0": time.time(), "event": EVENT})
