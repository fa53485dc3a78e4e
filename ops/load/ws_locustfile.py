"""Locust scenario: dashboard users holding a websocket to ``/ws`` (protocol: docs/websocket.md).

    locust -f ops/load/ws_locustfile.py --headless -u 200 -r 50 -t 60s --host http://127.0.0.1:8000
    locust -f ops/load/locustfile.py,ops/load/ws_locustfile.py ...   # with the REST users (ops/load_all.py)

Each user mints a token for its own subject (``ws-<n>``, secret ``TICKSTOCK_JWT_SECRET``, default: the
ops stack's), connects with ``?token=``, waits for ``welcome`` and subscribes with one of a few
dashboard filters (a universe, a symbol list, timeframes, a confidence floor, everything). A reader
greenlet reports every frame as a locust request event:

- ``WS connect`` / ``WS subscribe``: time to ``welcome`` / to ``subscribed``;
- ``WS event: <filter>``: one per delivered event, response time = receive time − ``data.bench_t0``
  (the wall time the publisher stamped; ``detected_at`` when absent), so percentiles are
  ingest→client latency; length = frame bytes;
- ``WS ping``: round trip of the ``ping`` op;
- failures: error frames, unexpected closes (with their code), events out of ``seq`` order or repeated.

Tasks besides reading: ``ping`` now and then, and sometimes replace the subscription with another
filter (unsubscribe + subscribe). ``TICKSTOCK_LOAD_WS_USERS`` pins how many of the users are websocket
users (``fixed_count``) when REST users run in the same locust. Needs ``websocket-client`` (locust's
own dependency through python-socketio[client]); locust's gevent patching makes it cooperative.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import contextlib

import gevent
import websocket
from locust import User, between, task

from api.auth import mint_token

SECRET = os.environ.get("TICKSTOCK_JWT_SECRET", "ops-only-secret-not-for-production-0123456789")
FILTERS: dict[str, dict[str, Any]] = {
    "sp500": {"universes": ["sp500"]},
    "mega caps": {"symbols": ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "BRK.B", "JPM", "V"]},
    "fast timeframes": {"timeframes": ["1min", "5min"]},
    "high confidence": {"confidence_min": 0.75},
    "everything": {},
}
_serial = itertools.count(1)


def _t0(frame: str) -> float | None:
    """The publish wall time of an event frame: ``data.bench_t0``, else ``detected_at``."""
    at = frame.find('"bench_t0":')
    if at >= 0:
        end = at + 11
        while end < len(frame) and frame[end] in " 0123456789.":
            end += 1
        try:
            return float(frame[at + 11 : end])
        except ValueError:
            return None
    at = frame.find('"detected_at":')
    if at >= 0:
        start = frame.find('"', at + 14) + 1
        try:
            return datetime.fromisoformat(
                frame[start : frame.find('"', start)].replace("Z", "+00:00")
            ).timestamp()
        except ValueError:
            return None
    return None


class DashboardSocketUser(User):
    wait_time = between(5, 15)
    fixed_count = int(os.environ.get("TICKSTOCK_LOAD_WS_USERS", "0"))

    def on_start(self) -> None:
        self.subject = f"ws-{next(_serial)}"
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.pings: dict[str, float] = {}
        self.pending: dict[str, float] = {}
        self.last_seq = 0
        self.stopping = False
        token = mint_token(SECRET, subject=self.subject, scopes=["patterns:read"], ttl_s=7200)
        url = (
            self.host.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
            + f"/ws?token={token}"
        )
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=30, enable_multithread=True)
            welcome = json.loads(self.ws.recv())
            if welcome.get("op") != "welcome":
                raise ConnectionError(f"expected welcome, got {welcome}")
        except Exception as exc:
            self._fire("WS", "connect", started, 0, exc)
            self.ws = None
            return
        self._fire("WS", "connect", started, 0, None)
        self.ws.settimeout(None)  # quiet filters may see no event for a long time
        self.filter_name = random.choice(list(FILTERS))
        self.reader = gevent.spawn(self._read)
        self._subscribe()

    def on_stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
        if self.reader is not None:
            self.reader.kill(block=False)

    def _fire(
        self,
        kind: str,
        name: str,
        started: float,
        length: int,
        exc: BaseException | None,
        response_time_ms: float | None = None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            context={},
            exception=exc,
            response_length=length,
            response_time=response_time_ms
            if response_time_ms is not None
            else (time.perf_counter() - started) * 1000,
        )

    def _send(self, message: dict[str, Any]) -> None:
        if self.ws is not None:
            self.ws.send(json.dumps(message))

    def _subscribe(self) -> None:
        self.pending["s"] = time.perf_counter()
        self._send({"op": "subscribe", "id": "s", "filter": FILTERS[self.filter_name]})

    def _read(self) -> None:
        assert self.ws is not None
        while True:
            try:
                frame = self.ws.recv()
            except websocket.WebSocketConnectionClosedException as exc:
                if not self.stopping:
                    self._fire("WS", "closed", time.perf_counter(), 0, exc, 0)
                return
            except Exception as exc:
                if not self.stopping:
                    self._fire("WS", "closed", time.perf_counter(), 0, exc, 0)
                return
            if not frame:  # a close frame: websocket-client returns an empty payload
                if not self.stopping:
                    code = getattr(self.ws, "status", None)
                    self._fire(
                        "WS",
                        "closed",
                        time.perf_counter(),
                        0,
                        ConnectionError(f"closed by the hub ({code})"),
                        0,
                    )
                return
            now = time.time()
            if (
                frame.startswith('{"op":"event"')
                or '"op": "event"' in frame[:20]
                or '"op":"event"' in frame[:20]
            ):
                self._event(frame, now)
                continue
            message = json.loads(frame)
            op = message.get("op")
            if op == "subscribed":
                self._fire(
                    "WS",
                    "subscribe",
                    self.pending.pop(message.get("id"), time.perf_counter()),
                    len(frame),
                    None,
                )
            elif op == "unsubscribed":
                self.pending.pop(message.get("id"), None)
            elif op == "pong" and str(message.get("ts")) in self.pings:
                self._fire("WS", "ping", self.pings.pop(str(message.get("ts"))), len(frame), None)
            elif op == "ping":
                self._send({"op": "pong"})
            elif op == "error":
                self._fire(
                    "WS",
                    f"error: {message.get('code')}",
                    time.perf_counter(),
                    len(frame),
                    RuntimeError(message.get("message", "error frame")),
                    0,
                )

    def _event(self, frame: str, now: float) -> None:
        at = frame.find('"seq":')
        seq = 0
        if at >= 0:
            end = at + 6
            while end < len(frame) and frame[end] in " 0123456789":
                end += 1
            seq = int(frame[at + 6 : end] or 0)
        t0 = _t0(frame)
        latency_ms = max(0.0, (now - t0) * 1000) if t0 is not None else 0.0
        exc = None
        if seq and seq <= self.last_seq:
            exc = RuntimeError(f"seq {seq} after {self.last_seq}: repeated or out of order")
        self.last_seq = max(self.last_seq, seq)
        self._fire("WS", f"event: {self.filter_name}", 0, len(frame), exc, latency_ms)

    @task(5)
    def ping(self) -> None:
        if self.ws is None:
            return
        ts = f"{self.subject}-{time.perf_counter():.6f}"
        self.pings[ts] = time.perf_counter()
        self._send({"op": "ping", "ts": ts})

    @task(1)
    def change_filter(self) -> None:
        if self.ws is None:
            return
        self._send({"op": "unsubscribe", "id": "s"})
        self.filter_name = random.choice(list(FILTERS))
        # A new subscription starts with live events only; seq order restarts with it.
        self.last_seq = 0
        self._subscribe()
