"""Shared pieces of the ops scripts: an embedded stack, hub processes, a publisher and the checks.

Everything runs on loopback. The hub runs as real ``tickstock serve`` processes, so what is measured
is what production runs; the publisher is nats-py with pipelined acks in this process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import nats  # noqa: E402
import psycopg  # noqa: E402

from hub.broker import server_list  # noqa: E402
from hub.embedded import (  # noqa: E402
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
)
from hub.jetstream import PATTERNS_STREAM  # noqa: E402
from hub.subjects import CLEAN_WILDCARD, ingest_subject  # noqa: E402

SYMBOLS = [
    "AAPL",
    "MSFT",
    "GOOGL",
    "AMZN",
    "NVDA",
    "META",
    "TSLA",
    "BRK.B",
    "JPM",
    "V",
    "XOM",
    "KO",
    "IBM",
    "INTC",
    "CSCO",
    "PEP",
    "WMT",
    "DIS",
    "BA",
    "CAT",
]
PATTERNS = ["hammer", "doji", "engulfing", "morning_star", "shooting_star", "bull_flag", "breakout"]
TIMEFRAMES = ["1min", "5min", "hourly", "daily"]


@dataclass
class Stack:
    database_url: str
    nats_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None
    root: Path | None = None
    nats_cluster: EmbeddedNatsCluster | None = None  # with ``cluster=True``: its members, for drills
    hubs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, port: int) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")},
            "TICKSTOCK_DATABASE_URL": self.database_url,
            "TICKSTOCK_NATS_URL": self.nats_url,
            "TICKSTOCK_REDIS_URL": self.redis_url,
            "TICKSTOCK_PORT": str(port),
            "TICKSTOCK_JWT_SECRET": "ops-only-secret-not-for-production-0123456789",
            "TICKSTOCK_LOG_LEVEL": "WARNING",
            "TICKSTOCK_POOL_MAX_SIZE": "8",
            "TICKSTOCK_WORKERS": "1",  # one process per hub, as the figures so far; extra_env may say more
            **self.extra_env,
        }

    @property
    def client_url(self) -> str:
        """For this process's own clients: every cluster member (so they ride through a member's death),
        or the one server. The hubs get ``nats_url`` (the first member; they learn the others from it)."""
        return ",".join(self.nats_cluster.urls) if self.nats_cluster else self.nats_url


@contextmanager
def embedded_stack(*, cluster: bool = False) -> Iterator[Stack]:
    """Fresh NATS, PostgreSQL (durable, as in production) and Redis in a temporary folder. ``cluster``:
    a 3-node NATS cluster (``EmbeddedNatsCluster``) and every stream at R3 (``TICKSTOCK_NATS_REPLICAS``)."""
    with tempfile.TemporaryDirectory(prefix="tickstock-ops-") as tmp:
        root = Path(tmp)
        nats_server = EmbeddedNatsCluster(root / "nats") if cluster else EmbeddedNats(root / "nats")
        postgres = EmbeddedPostgres(root / "postgres")
        redis = EmbeddedRedis(root / "redis")
        with nats_server, postgres, redis:
            stack = Stack(postgres.url, nats_server.url, redis.url, postgres=postgres, root=root)
            if isinstance(nats_server, EmbeddedNatsCluster):
                stack.nats_cluster = nats_server
                stack.extra_env["TICKSTOCK_NATS_REPLICAS"] = "3"
            subprocess.run(
                [sys.executable, "-m", "api.cli", "load-reference-data"],
                env=stack.env(8000),
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            try:
                yield stack
            finally:
                for hub in stack.hubs:
                    stop_hub(hub)


def start_hub(
    stack: Stack, *, port: int | None = None, timeout_s: float = 60
) -> tuple[subprocess.Popen[bytes], int]:
    """``tickstock serve`` as a child process; returns once ``/health/ready`` answers 200."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=stack.env(port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stack.hubs.append(proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("hub did not become ready")


class StderrTail:
    """Reads ``proc``'s stderr in a thread until it ends, keeping the last ``keep`` lines; on leaving
    the block, says how many lines the process wrote and prints the last few."""

    def __init__(self, proc: subprocess.Popen[bytes], *, keep: int = 20, show: int = 5) -> None:
        self.proc = proc
        self.lines: deque[str] = deque(maxlen=keep)
        self.count = 0
        self.show = show
        self.thread = threading.Thread(target=self._read, daemon=True, name=f"stderr-{proc.pid}")

    def _read(self) -> None:
        if self.proc.stderr is None:
            return
        with suppress(ValueError, OSError):  # closed under us by stop_hub
            for line in iter(self.proc.stderr.readline, b""):
                self.count += 1
                self.lines.append(line.decode(errors="replace").rstrip()[:500])

    def __enter__(self) -> StderrTail:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.count:
            print(f"  hub stderr: {self.count:,} line(s) during the runs; the last:", flush=True)
            for line in list(self.lines)[-self.show :]:
                print(f"    | {line}", flush=True)


def stop_hub(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def make_events(n: int, *, run: str, symbols: list[str] = SYMBOLS) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "id": f"{run}-{i}",
            "type": "pattern_detected",
            "symbol": symbols[i % len(symbols)],
            "pattern": PATTERNS[i % len(PATTERNS)],
            "timeframe": TIMEFRAMES[i % len(TIMEFRAMES)],
            "confidence": round(0.5 + (i % 50) / 100, 2),
            "detected_at": now.isoformat().replace("+00:00", "Z"),
            "price": 100 + i % 97,
            "volume": 1000 + i,
            "source": "ops",
            "data": {},
        }
        for i in range(n)
    ]


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(server_list(url), name="tickstock-ops", max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        await nc.close()


async def publish(
    nc: Any,
    events: list[dict[str, Any]],
    *,
    rate: float | None = None,
    window: int = 2000,
    stamp: bool = True,
    blob: str | None = None,
    ack_timeout_s: float = 10.0,
    acks: dict[str, int] | None = None,
) -> float:
    """Publish to ingest with ``Nats-Msg-Id`` = id, at most ``window`` unacknowledged at a time, at
    ``rate`` events/s if given. Stamps ``data.sent_at`` (epoch seconds) for latency. A publish that
    fails, or whose ack does not come within ``ack_timeout_s`` (a stream leader that steps down or dies
    drops what it had in hand without an answer), is sent again, in publish order, as a producer must
    (``Nats-Msg-Id`` makes that safe). ``acks``, if given, receives each id's ingest-stream sequence (a
    re-send can land after a newer event of its symbol: the producer's own reordering, which
    :func:`verify` tells apart from the hub's). Returns elapsed seconds."""
    js = nc.jetstream()
    started = time.monotonic()
    pending: list[tuple[asyncio.Future[Any], str, bytes, str]] = []

    async def send(subject: str, body: bytes, msg_id: str) -> None:
        while True:
            try:
                pending.append(
                    (
                        await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id}),
                        subject,
                        body,
                        msg_id,
                    )
                )
                return
            except Exception:
                await asyncio.sleep(0.2)

    async def settle() -> None:
        while pending:
            batch = list(pending)
            pending.clear()
            results = await asyncio.gather(
                *(asyncio.wait_for(f, ack_timeout_s) for f, *_ in batch), return_exceptions=True
            )
            for (_, subject, body, msg_id), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    await send(subject, body, msg_id)
                elif acks is not None:
                    acks[msg_id] = result.seq

    for i, event in enumerate(events):
        if rate:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if stamp:
            event["data"] = {"sent_at": time.time()}
        if blob:
            event.setdefault("data", {})["blob"] = blob
        await send(
            ingest_subject(event["timeframe"], event["symbol"]), json.dumps(event).encode(), event["id"]
        )
        if len(pending) >= window:
            await settle()
    await settle()
    return time.monotonic() - started


async def wait_stored(database_url: str, run: str, n: int, *, timeout_s: float = 600) -> float:
    """Seconds until ``n`` events of ``run`` are stored and published (stream_seq set)."""
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while time.monotonic() - started < timeout_s:
            cur = await conn.execute(
                "SELECT count(*) FROM pattern_events WHERE id LIKE %s AND stream_seq IS NOT NULL",
                (run + "-%",),
            )
            row = await cur.fetchone()
            if row and row[0] >= n:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{run}: not all {n} events stored within {timeout_s} s")


async def verify(
    database_url: str, nats_url: str, run: str, n: int, *, acks: dict[str, int] | None = None
) -> dict[str, Any]:
    """Exactly-once and order checks, plus publish→stored latency percentiles. With ``acks`` (id ->
    ingest-stream sequence, from :func:`publish`) the order is also judged against the ingest stream:
    ``ingest_inversions`` are the producer's (a re-send stored after a newer event of its symbol),
    ``hub_inversions`` the hub's (clean-stream order not the ingest stream's, per symbol)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT id), "
            " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM received_at)"
            "   - (payload->'data'->>'sent_at')::float8) "
            "FROM pattern_events WHERE id LIKE %s",
            (run + "-%",),
        )
        rows, distinct, pct = await cur.fetchone()  # type: ignore[misc]
        dead = (await (await conn.execute("SELECT count(*) FROM dead_letters")).fetchone())[0]  # type: ignore[index]
    async with connected(nats_url) as nc:
        js = nc.jetstream()
        total = (await js.stream_info(PATTERNS_STREAM)).state.messages
        sub = await js.subscribe(CLEAN_WILDCARD, ordered_consumer=True, stream=PATTERNS_STREAM)
        ids: list[str] = []
        per_symbol: dict[str, list[int]] = defaultdict(list)
        ingested: dict[str, list[int]] = defaultdict(list)  # ingest seqs, in clean-stream order
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            body = json.loads(msg.data)
            if body["id"].startswith(run + "-"):
                ids.append(body["id"])
                per_symbol[body["symbol"]].append(int(body["id"].rsplit("-", 1)[1]))
                if acks is not None:
                    ingested[body["symbol"]].append(acks.get(body["id"], -1))
        await sub.unsubscribe()
    in_order = all(seq == sorted(seq) for seq in per_symbol.values())
    inversions = sum(1 for seq in per_symbol.values() for a, b in itertools.pairwise(seq) if b < a)
    first_bad = next(
        (
            [sym, seq[max(0, i - 3) : i + 3]]
            for sym, seq in per_symbol.items()
            for i, (a, b) in enumerate(itertools.pairwise(seq), 1)
            if b < a
        ),
        None,
    )
    drops = sum(1 for seq in ingested.values() for a, b in itertools.pairwise(seq) if b < a)
    first_drop = next(
        (
            # the symbol and, around the first drop, (event number, ingest-stream seq) in clean order
            [sym, list(zip(per_symbol[sym], seq, strict=True))[max(0, i - 3) : i + 3]]
            for sym, seq in ingested.items()
            for i, (a, b) in enumerate(itertools.pairwise(seq), 1)
            if b < a
        ),
        None,
    )
    by_ingest = [[i for _, i in sorted(zip(ingested[sym], per_symbol[sym], strict=True))] for sym in ingested]
    order = (
        {
            "ingest_inversions": sum(1 for seq in by_ingest for a, b in itertools.pairwise(seq) if b < a),
            "hub_inversions": drops,
            "first_hub_inversion": first_drop,
        }
        if acks is not None
        else {}
    )
    return {
        **order,
        "published": n,
        "stored_rows": rows,
        "stored_distinct": distinct,
        "clean_messages": len(ids),
        "clean_distinct": len(set(ids)),
        "per_symbol_order_kept": in_order,
        "order_inversions": inversions,
        "first_inversion": first_bad,
        "dead_letters": dead,
        "latency_ms": {
            "p50": round(pct[0] * 1000, 1),
            "p95": round(pct[1] * 1000, 1),
            "p99": round(pct[2] * 1000, 1),
        }
        if pct and pct[0] is not None
        else None,
        "exactly_once": rows == distinct == len(ids) == len(set(ids)) == n,
    }


async def growth_moments(
    count: Callable[[], Awaitable[int]], total: int, *, interval_s: float = 0.05, timeout_s: float = 600
) -> list[float]:
    """The moments (``time.monotonic()``) at which ``count()`` was seen to grow, sampled every
    ``interval_s`` until it reaches ``total``; raises ``TimeoutError`` after ``timeout_s``. The first
    sample is the baseline, not a growth (so a pause measured from before it is never cut short)."""
    moments: list[float] = []
    last = await count()
    deadline = time.monotonic() + timeout_s
    while last < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{last} of {total} after {timeout_s} s")
        await asyncio.sleep(interval_s)
        now = await count()
        if now > last:
            moments.append(time.monotonic())
            last = now
    return moments


def longest_pause(since: float, moments: Sequence[float]) -> float:
    """The longest time without growth after ``since`` (from ``since`` to the first growth, then
    between growths), given :func:`growth_moments`' moments."""
    after = [since, *(t for t in moments if t > since)]
    return max((b - a for a, b in itertools.pairwise(after)), default=0.0)


WRITER_COUNTERS = (
    "tickstock_writer_redeliveries_total",
    "tickstock_writer_retries_total",
    "tickstock_writer_partition_deferrals_total",
    "tickstock_events_rejected_total",
    "tickstock_events_duplicate_total",
)


async def hub_counters(port: int, names: Sequence[str] = WRITER_COUNTERS) -> dict[str, float]:
    """A hub's counters from ``/metrics``, each summed over its labels."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0]
        if name in sums:
            sums[name] += float(value)
    return sums


async def hub_metrics(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)).json()
