"""Machinery of the abuse suite: a hub process with its log, a steady valid producer that records
publish→clean-stream latency, a partition sampler, an HTTP status recorder and one loopback source
address per attacker (so a per-address failure budget spent by one attack never answers another).

Nothing here asserts; the suite's tests judge what these record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hub.subjects import ingest_subject
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "ROOT",
    "HubProcess",
    "LatencyStats",
    "Loopback",
    "PartitionSampler",
    "StatusRecorder",
    "SteadyProducer",
    "log_problems",
    "percentile",
]

# A log line the hub's formatter ("<date> <time> LEVEL name [rid]: msg") or uvicorn's ("LEVEL:   msg")
# wrote at ERROR or above.
_ERROR_LINE = re.compile(r"^(?:\S+ \S+ (?:ERROR|CRITICAL)\s|(?:ERROR|CRITICAL):\s)")


def log_problems(text: str) -> list[str]:
    """The lines of a hub log that are ERROR/CRITICAL records or start a traceback."""
    return [line for line in text.splitlines() if _ERROR_LINE.match(line) or "Traceback" in line]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Loopback:
    """Distinct client addresses 127.0.0.2, 127.0.0.3 …: Linux routes all of 127/8 to ``lo``, so a
    client bound to one of them reaches a hub on 127.0.0.1 and the hub sees that address as the peer.
    (127.0.0.1 itself is avoided: uvicorn trusts ``X-Forwarded-For`` from it by default.)"""

    def __init__(self) -> None:
        self._next = itertools.count(2)

    def take(self) -> str:
        n = next(self._next)
        return f"127.0.{n // 250}.{n % 250 + 2}"


class StatusRecorder:
    """Every HTTP response any attacker's client got: ``(method, path, status)``. Give its ``hook`` to
    ``httpx.AsyncClient(event_hooks={"response": [hook]})``."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, str, int]] = []

    async def hook(self, response: httpx.Response) -> None:
        self.responses.append((response.request.method, response.request.url.path, response.status_code))

    def with_status(self, status: int) -> list[tuple[str, str, int]]:
        return [r for r in self.responses if r[2] == status]


class HubProcess:
    """``tickstock serve`` as a child process on a free loopback port, its stderr (the hub's whole log)
    written to ``log_path``. ``env`` adds TICKSTOCK_* variables to a clean environment."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.log_path = log_path
        base = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
        self._env = {
            **base,
            "TICKSTOCK_HOST": "127.0.0.1",
            "TICKSTOCK_PORT": str(port),
            "TICKSTOCK_WORKERS": "1",  # one process per node, as these tests count per process
            **env,
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object = None

    def start(self) -> None:
        log = self.log_path.open("wb")
        self._log = log
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve"],
            env=self._env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until ``GET /health`` answers 200; raises with the log's tail when the process exits or the
        deadline passes."""
        async with httpx.AsyncClient(timeout=2) as client:

            async def ready() -> bool:
                if self._proc is None or self._proc.poll() is not None:
                    raise RuntimeError(f"hub {self.name} exited during start-up:\n{self.log()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(self.url + "/health")).status_code == 200
                return False

            try:
                await wait_for(ready, timeout=timeout_s, interval=0.1, what=f"hub {self.name} ready")
            except AssertionError:
                raise RuntimeError(
                    f"hub {self.name} not ready after {timeout_s} s:\n{self.log()[-3000:]}"
                ) from None

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT, then wait (SIGKILL after ``timeout_s``); returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        with contextlib.suppress(Exception):
            self._log.close()  # type: ignore[attr-defined]
        return proc.returncode

    def log(self) -> str:
        return (
            self.log_path.read_bytes().decode("utf-8", "backslashreplace") if self.log_path.exists() else ""
        )

    async def metric_sum(self, client: httpx.AsyncClient, name: str) -> float:
        """The sum of every sample of ``name`` (any labels) in ``GET /metrics``; 0 when absent."""
        text = (await client.get(self.url + "/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class LatencyStats:
    count: int
    p50_s: float
    p99_s: float
    max_s: float

    def line(self) -> str:
        return (
            f"{self.count} valid events, publish->clean stream p50 {self.p50_s * 1000:.1f} ms, "
            f"p99 {self.p99_s * 1000:.1f} ms, max {self.max_s * 1000:.1f} ms"
        )


@dataclass
class SteadyProducer:
    """Valid schema v1 events at ``rate_per_s`` to ``tickstock.ingest.<tf>.<token>`` (``Nats-Msg-Id``
    = id), from a thread with its own event loop and NATS connection, so the attackers' work on the
    test's loop neither slows the flow nor delays the timestamps.

    ``published[id]`` is the monotonic time just before the first publish attempt (a failed publish is
    retried with the same id, as a producer should); ``arrived[id]`` the time the event was first seen on
    ``tickstock.patterns.>`` (a core subscription opened before the first publish); ``repeats`` counts
    later sightings. ``failures`` holds publish errors that outlived the retries."""

    nats_url: str
    rate_per_s: float = 500.0
    prefix: str = "abuse-valid"
    symbols: tuple[str, ...] = ("AAPL", "MSFT", "NVDA", "KO", "JPM", "XOM", "BRK.B", "T")
    published: dict[str, float] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)
    repeats: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def event(self, n: int) -> dict[str, object]:
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return {
            "id": f"{self.prefix}-{n}",
            "type": "pattern_detected",
            "symbol": self.symbols[n % len(self.symbols)],
            "pattern": "hammer",
            "timeframe": "daily",
            "confidence": round((n % 100) / 100, 2),
            "detected_at": now,
            "price": 100.0 + n % 50,
            "volume": 1000 + n,
            "source": "abuse-steady",
        }

    def start(self) -> None:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="steady-producer", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the steady producer did not start: {self._error!r}")

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop publishing (acks still in flight are awaited), then keep listening for the clean stream
        until every published event arrived or ``drain_s`` passed."""
        self._drain_deadline = time.monotonic() + drain_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(drain_s + 30)

    @property
    def ids(self) -> list[str]:
        return list(self.published)

    def missing(self) -> list[str]:
        return [i for i in self.published if i not in self.arrived]

    def stats(self, since: float = -math.inf, until: float = math.inf) -> LatencyStats:
        """Latency of the events published in ``[since, until]`` (monotonic) that arrived."""
        lat = [
            self.arrived[i] - t
            for i, t in self.published.items()
            if since <= t <= until and i in self.arrived
        ]
        return LatencyStats(len(lat), percentile(lat, 0.5), percentile(lat, 0.99), max(lat, default=math.nan))

    async def _main(self) -> None:
        nc = NATS()
        try:
            await nc.connect(self.nats_url, name="abuse-steady-producer", connect_timeout=5)
            js = nc.jetstream()

            async def seen(msg: Msg) -> None:
                now = time.monotonic()
                event_id = (msg.headers or {}).get("Nats-Msg-Id") or str(json.loads(msg.data).get("id"))
                if event_id in self.arrived:
                    self.repeats += 1
                elif event_id.startswith(self.prefix + "-"):
                    self.arrived[event_id] = now

            await nc.subscribe("tickstock.patterns.>", cb=seen, pending_msgs_limit=1_000_000)
            await nc.flush()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await nc.close()
            return
        self._ready.set()
        acks: set[asyncio.Task[None]] = set()
        tick_s = 0.01
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():  # hygiene: ok - paces the producer at rate_per_s; not a poll
            due = int((time.monotonic() - started) * self.rate_per_s)
            while n < due:  # hygiene: ok - publishes the events due by now; does not wait
                task = asyncio.create_task(self._publish(js, self.event(n)))
                acks.add(task)
                task.add_done_callback(acks.discard)
                n += 1
            await asyncio.sleep(tick_s)
        if acks:
            await asyncio.gather(*acks)
        # Events still on their way to the clean stream arrive while the suite waits for them; the
        # suite's tests judge the ones that did not (``missing()``), so running out of time is no error.
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda: not self.missing(),
                timeout=max(self._drain_deadline - time.monotonic(), 0.0),
                what="the published events on the clean stream",
            )
        await nc.close()

    _drain_deadline: float = math.inf

    async def _publish(self, js: object, event: dict[str, object]) -> None:
        event_id = str(event["id"])
        self.published[event_id] = time.monotonic()
        payload = json.dumps(event).encode()
        subject = ingest_subject(str(event["timeframe"]), str(event["symbol"]))
        for attempt in range(5):
            try:
                await js.publish(subject, payload, headers={"Nats-Msg-Id": event_id}, timeout=5)  # type: ignore[attr-defined]
                return
            except Exception as exc:
                if attempt == 4:
                    self.failures.append(f"{event_id}: {exc!r}")
                await asyncio.sleep(0.2)


@dataclass
class PartitionSampler:
    """Samples, every ``interval_s``, how many partitions (or chunks) ``pattern_events`` has and how many
    writer batches the hubs have run (``tickstock_writer_batch_size_count`` summed over ``hubs``).
    ``worst()`` is the largest partition growth between two samples, with the batches run meanwhile."""

    database_url: str
    hubs: Sequence[HubProcess]
    interval_s: float = 0.25
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    SQL = "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'pattern_events'::regclass"

    async def partitions(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            row = await (await conn.execute(self.SQL)).fetchone()
        return int(row[0]) if row else 0

    async def sample(self, client: httpx.AsyncClient) -> tuple[float, int, float]:
        batches = 0.0
        for hub in self.hubs:
            with contextlib.suppress(httpx.HTTPError):
                batches += await hub.metric_sum(client, "tickstock_writer_batch_size_count")
        point = (time.monotonic(), await self.partitions(), batches)
        self.samples.append(point)
        return point

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:  # hygiene: ok - samples every interval_s until cancelled; not a poll
                with contextlib.suppress(psycopg.Error, OSError):
                    await self.sample(client)
                await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with httpx.AsyncClient(timeout=5) as client:
            await self.sample(client)

    @property
    def first(self) -> int:
        return self.samples[0][1]

    @property
    def last(self) -> int:
        return self.samples[-1][1]

    @property
    def batches(self) -> float:
        return self.samples[-1][2] - self.samples[0][2]

    def worst(self) -> tuple[int, float]:
        """``(growth, batches)`` of the consecutive-sample step with the largest growth per batch."""
        worst = (0, 0.0)
        for (_, p0, b0), (_, p1, b1) in itertools.pairwise(self.samples):
            growth, batches = p1 - p0, b1 - b0
            if growth > 0 and growth / max(batches, 1.0) > worst[0] / max(worst[1], 1.0):
                worst = (growth, batches)
        return worst


# -- inputs and verdicts shared by the attacks ---------------------------------------------------------

# Dead-letter reasons: docs/nats-contract.md plus the ones agreed for issue #11 (CONTRACT-11.md).
DOCUMENTED_REASONS = frozenset(
    {
        "not_json",
        "not_object",
        "too_large",
        "missing_field",
        "invalid_field",
        "unknown_field",
        "confidence_out_of_range",
        "unknown_timeframe",
        "unknown_type",
        "unknown_pattern",
        "invalid_symbol",
        "invalid_timestamp",
        "data_too_large",
        "subject_mismatch",
        "invalid_subject",
        "store_rejected",
        "max_deliveries_exceeded",
        "detected_at_out_of_range",
        "expires_at_out_of_range",
        "id_conflict",
    }
)
_ids = itertools.count(1)


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def now_iso(offset_s: float = 0.0) -> str:
    from datetime import timedelta

    return iso(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=offset_s))


def hostile_event(tag: str, **fields: object) -> dict[str, object]:
    """A valid event (detected now, unique id ``abuse-<tag>-<n>``) with ``fields`` overriding."""
    event: dict[str, object] = {
        "id": f"abuse-{tag}-{next(_ids)}",
        "type": "pattern_detected",
        "symbol": "KO",
        "pattern": "hammer",
        "timeframe": "daily",
        "confidence": 0.5,
        "detected_at": now_iso(),
        "source": "abuse-attacker",
    }
    event.update(fields)
    return event


def assert_problem(
    response: httpx.Response, *statuses: int, mentions: str | None = None
) -> dict[str, object]:
    """``response`` is an RFC 9457 problem with one of ``statuses``, no traceback, and (if given) a
    detail or field error that mentions ``mentions``; returns the document."""
    where = f"{response.request.method} {str(response.request.url)[:120]}"
    assert response.status_code in statuses, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers.get("content-type", "").startswith("application/problem+json"), (
        f"{where}: not a problem document: {response.headers.get('content-type')} {response.text[:200]}"
    )
    assert "Traceback" not in response.text, f"{where}: {response.text[:300]}"
    body = response.json()
    if mentions is not None:
        assert mentions in json.dumps(body).lower(), f"{where}: {mentions!r} not in {response.text[:300]}"
    return body
