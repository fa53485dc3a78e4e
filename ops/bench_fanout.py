"""Websocket fan-out and idle-connection memory: the hub and the baselines, same client, same machine.

    python ops/bench_fanout.py                                    # all servers, 100 and 1,000 connections
    python ops/bench_fanout.py --servers hub,starlette --connections 100,1000,5000 --seconds 30
    python ops/bench_fanout.py --servers hub --memory 10000 --connections ''
    python ops/bench_fanout.py --servers hub,hub-shared,starlette,node --clients plain,deflate
    python ops/bench_fanout.py --servers hub --hub-workers 1 --connections 1000   # one hub process

Issue #14's acceptance runs (``.venv/bin/python`` from the repository root; each prints a table, then
the acceptance figures with "met"/"missed" where the run has the item's shape; ``--engine c``: the
load client that takes less of the machine's CPU from the servers it measures, ``ops/wsload.c``):

    # (1) deflate-offering clients ÷ plain ones, CPU per delivered message, in an order that cancels the
    #     drift between a server's runs (the mean of two runs of each kind)
    .venv/bin/python ops/bench_fanout.py --servers hub --clients plain,deflate,deflate,plain --connections 1000 \
        --engine c
    # (2) 5,000 connections × 20 msg/s, everyone gets everything: the hub (all workers) loses nothing,
    #     closes nothing, p99 ≤ Node's; server CPU per delivered message for hub, Starlette and Node
    .venv/bin/python ops/bench_fanout.py --servers hub,starlette,node --connections 5000 --seconds 20 --hub-filters all \
        --engine c
    # (3) 10,000 connections × 20 msg/s, past what the box carries: RSS max, sheds (4409), p99 of the kept
    .venv/bin/python ops/bench_fanout.py --servers hub --connections 10000 --seconds 20 --hub-filters all --engine c
    #     (the same with the hub's wait bound at 100 ms, not the default 150 ms: it keeps fewer, sooner)
    .venv/bin/python ops/bench_fanout.py --servers hub --connections 10000 --seconds 20 --hub-filters all --engine c \
        --hub-env TICKSTOCK_WS_SHED_LAG_S=0.1
    # (4) 10,000 idle connections: RSS (and PSS) per connection, hub beside the bare loop and Node
    .venv/bin/python ops/bench_fanout.py --servers hub,starlette,node --memory 10000 --connections ''

For each server and connection count: the load client (``ops/wsload.py``, one process per core)
opens the connections and waits until each is ready, the publisher sends a warm-up of 2 s, then
``--rate`` × ``--seconds`` measured messages; the client counts what each connection got and waits
until every connection still open has all of its messages (or nothing arrives for 3 s). Reported:
ingest→client latency p50/p95/p99 (client receive time − publish wall time in the message) over every
delivery and over the *kept* connections' (those the server did not close), deliveries/s, the
connections the server closed by close code (``closes``: 4409 shed as a slow consumer, 4408 idle, 1001
going away; the client never reopens them), lost messages (what each kept connection should have got
minus what it got), what the closed connections missed after their close (``missed_closed``: not a
loss, a real client resumes), duplicates, order inversions, server CPU per delivered message (``/proc``
utime+stime of the server process and all its descendants, over the measured publish and drain,
divided by deliveries) and the server's memory during the run (``rss_max_mb``: the largest summed RSS
of its processes, sampled every 0.5 s from before the connections open until they close;
``pss_max_mb``: the same of PSS, sampled every 2 s, which counts the pages the processes share once).

What "the server" and "the publisher" are:

- ``hub``: ``tickstock serve`` on a fresh embedded stack; events are published to ingest over
  NATS JetStream (``tickstock.ingest.<tf>.<sym>``, ``Nats-Msg-Id``), so the latency covers ingest,
  validation, the PostgreSQL transaction, the clean-stream publish and the fan-out. Connections
  subscribe with mixed filters (``--hub-filters mixed``: a quarter each on half the symbols, two of the
  four timeframes, ``confidence_min`` 0.75 and everything, rotating), each filter but "all" matching
  exactly half of the events; events are published at ``--rate`` / 0.625 (32/s for 20) so that a
  connection gets ``--rate`` events/s on average, as many deliveries as a baseline's
  (``--hub-filters all``: everyone gets everything at ``--rate``).
  ``--hub-workers N`` sets its ``TICKSTOCK_WORKERS`` (default: the hub's own default, one per core;
  1: one process without a supervisor); each hub row names its worker count. CPU and memory are the
  hub's processes (supervisor, primary and workers); NATS, PostgreSQL and Redis are reported apart.
- ``hub-sio``: the same hub (a fresh process and stack) through its Socket.IO endpoint
  (``/socket.io/``, websocket transport), the same mixed filters sent as ``subscribe`` events; it is
  shown as ratios to ``/ws`` and to Socket.IO on Node.js of the same run.
- ``hub-shared``: the same hub with ``TICKSTOCK_WS_COMPRESSION=shared`` (permessage-deflate, each
  distinct frame compressed once for every connection); run with deflate-offering clients only (plain
  clients get what ``hub`` gives them).
- ``starlette``: a bare broadcast loop on the same uvicorn stack (ops/baselines/starlette_broadcast.py),
  publisher in process.
- ``node``: Socket.IO 4 on Node.js (ops/baselines/socketio-node), publisher in process.
- ``flask``: Flask-SocketIO, threading mode, Redis message queue (ops/baselines/flask_socketio), an
  external publisher process emitting through Redis. Redis's CPU is reported apart.

Clients (``--clients``): ``plain`` offer no extension; ``deflate`` offer permessage-deflate exactly
as a browser does (``permessage-deflate; client_max_window_bits``). A row's ``negotiated`` counts the
connections whose server accepted the offer; ``deflate_ratios`` is each server's CPU per delivered
message with deflate-offering clients ÷ with plain ones, in the same run.

Memory (measured first, on the fresh server, after 100 connections came and went): ``--memory N``
idle connections (the hub's subscribed with the mixed filters); RSS per connection = (server RSS
with N connected − RSS before) / N, RSS summed over the server's processes (a hub's workers take the
connections as the kernel hands them out from their shared socket; each process's share and RSS are
printed), and the same with PSS; Node is asked to collect garbage before each sample.

File descriptors: this script raises its open-file limit (``raise_fd_limit``: 65,536 as root, the
hard limit otherwise) before starting any server, and every server and client process inherits it;
the hub runs with ``TICKSTOCK_WS_MAX_CONNECTIONS=30000`` (its default is 20,000 per node).

Client and server share this machine's cores (2 on the development machine): the client's CPU is
taken from the server, so every figure is a lower bound of what the server does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
from baselines.servers import (  # noqa: E402
    RssSampler,
    Server,
    flask_server,
    node_server,
    proc_connections,
    proc_cpu_s,
    proc_memory,
    starlette_server,
)
from fanout_report import acceptance_lines, fanout_line, fanout_table, memory_table  # noqa: E402
from harness import (  # noqa: E402
    PATTERNS,
    SYMBOLS,
    TIMEFRAMES,
    Stack,
    StderrTail,
    connected,
    embedded_stack,
    start_hub,
)
from wsload import ENGINES, KINDS, Conn, Load, raise_fd_limit  # noqa: E402

from api.auth import mint_token  # noqa: E402
from hub.subjects import ingest_subject  # noqa: E402

RESULTS = HERE / "results"
SERVERS = ("hub", "hub-shared", "hub-sio", "starlette", "node", "flask")
HUBS = ("hub", "hub-shared", "hub-sio")
CLIENTS = ("plain", "deflate")
PLAIN_ONLY = ("hub-sio", "flask")  # not run with deflate-offering clients
# They take a deflate offer: their deflate rows need the Python engine (the C one cannot inflate).
TAKES_DEFLATE = ("hub-shared", "starlette")
DEFLATE_ONLY = ("hub-shared",)
# Flask-SocketIO's threading mode is one busy thread per connection while it broadcasts: at 5,000 a
# trial ran the machine's load average past 1,000 (other work on the box stalled) and delivered
# nothing within the run. Above this it is not run unless asked (--flask-max-connections).
FLASK_MAX_CONNECTIONS = 1000
# And its idle connections: at 10,000 threads the Engine.IO heartbeats alone drove the load average
# into the thousands; its memory is measured at this many.
FLASK_MAX_IDLE = 2000
WARMUP_S = 2.0
SETTLE_S = 3.0
# The hub filters that select exactly the events each wsload.KINDS predicate says (see make_event).
HUB_FILTERS: dict[str, dict[str, Any]] = {
    "all": {},
    "sym_even": {"symbols": SYMBOLS[0::2]},
    "tf_fast": {"timeframes": TIMEFRAMES[:2]},
    "conf_high": {"confidence_min": 0.75},
}
MIXED = ("sym_even", "tf_fast", "conf_high", "all")
OPS_SECRET = Stack("", "", "").env(0)["TICKSTOCK_JWT_SECRET"]  # what harness.start_hub gives the hub
MEMORY_MEASURE = (
    "rss: resident bytes summed over the server's processes (a hub's supervisor, primary and workers; pages they"
    " share count once per process); pss: proportional set size summed (shared pages split, counted once)"
)


def make_event(i: int, run: str) -> dict[str, Any]:
    """Event ``i``: symbol i mod 20, timeframe i mod 4, confidence 0.50 + (i mod 50)/100, so each
    ``HUB_FILTERS`` entry matches the indices its ``wsload.KINDS`` predicate names."""
    return {
        "id": f"{run}-{i}",
        "type": "pattern_detected",
        "symbol": SYMBOLS[i % len(SYMBOLS)],
        "pattern": PATTERNS[i % len(PATTERNS)],
        "timeframe": TIMEFRAMES[i % len(TIMEFRAMES)],
        "confidence": round(0.5 + (i % 50) / 100, 2),
        "detected_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "price": 100 + i % 97,
        "volume": 1000 + i,
        "source": "ops-bench",
        "data": {},
    }


async def publish_ingest(nats_url: str, run: str, count: int, rate: float, start: int) -> float:
    """Events ``start`` .. ``start + count - 1`` to ingest at ``rate``/s, each stamped with
    ``data.bench_i`` and ``data.bench_t0`` (wall time just before its publish); returns seconds."""
    async with connected(nats_url) as nc:
        js = nc.jetstream()
        acks: list[asyncio.Future[Any]] = []
        started = time.monotonic()
        for n in range(count):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = make_event(start + n, run)
            event["data"] = {"bench_i": start + n, "bench_t0": time.time()}
            acks.append(
                await js.publish_async(
                    ingest_subject(event["timeframe"], event["symbol"]),
                    json.dumps(event).encode(),
                    headers={"Nats-Msg-Id": event["id"]},
                )
            )
            if len(acks) >= 500:
                await asyncio.gather(*acks)
                acks.clear()
        await asyncio.gather(*acks)
        return time.monotonic() - started


def stack_pids() -> dict[str, int]:
    """The embedded servers this process started: NATS, PostgreSQL (the postmaster) and Redis."""
    found: dict[str, int] = {}
    for child in psutil.Process().children():
        try:
            name = child.name()
        except psutil.NoSuchProcess:
            continue
        if "nats" in name:
            found.setdefault("nats", child.pid)
        elif "postgres" in name:
            found.setdefault("postgres", child.pid)
        elif "redis" in name:
            found.setdefault("redis", child.pid)
    return found


def default_hub_workers() -> int:
    """The hub's own default for ``TICKSTOCK_WORKERS`` (api/settings.py): one process per core."""
    return os.cpu_count() or 1


@contextmanager
def hub_server(
    stack: Stack | None = None,
    *,
    extra_env: dict[str, str] | None = None,
    name: str = "hub",
    workers: int | None = None,
) -> Iterator[Server]:
    """``tickstock serve`` on ``stack`` (default: a fresh embedded stack) as a :class:`Server`; ``name``
    ``hub-sio``: its clients come through ``/socket.io/`` instead of ``/ws``. ``workers``: its
    ``TICKSTOCK_WORKERS`` (default: the hub's, one per core; 1 runs it without a supervisor);
    ``extra_env`` may still say otherwise."""
    workers = workers or default_hub_workers()
    with ExitStack() as exits:
        if stack is None:
            stack = exits.enter_context(embedded_stack())
        stack.extra_env.update(
            {
                "TICKSTOCK_WS_MAX_CONNECTIONS": "30000",
                "TICKSTOCK_WORKERS": str(workers),
                **(extra_env or {}),
            }
        )
        workers = int(stack.extra_env["TICKSTOCK_WORKERS"])
        if name == "hub-shared":
            stack.extra_env["TICKSTOCK_WS_COMPRESSION"] = "shared"
        proc, port = start_hub(stack)
        # A chatty hub (a warning per shed step, a traceback per failed session) must never block on
        # the stderr pipe start_hub gives it: read it all along, keep the tail, print it at the end.
        exits.enter_context(StderrTail(proc))
        run = f"fo{int(time.time())}"
        nats_url = stack.nats_url

        def publish(count: int, rate: float, start: int) -> float:
            return asyncio.run(publish_ingest(nats_url, run, count, rate, start))

        sio = name == "hub-sio"
        yield Server(
            name,
            "hubsio" if sio else "hub",
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
            if sio
            else f"ws://127.0.0.1:{port}/ws",
            f"http://127.0.0.1:{port}",
            proc.pid,
            publish,
            extra_pids=stack_pids(),
            workers=workers,
        )


def hub_conns(server: Server, n: int, *, filters: str, secret: str, deflate: bool = False) -> list[Conn]:
    conns = []
    kinds = MIXED if filters == "mixed" else ("all",)
    tokens = [
        mint_token(secret, subject=f"bench-ws-{k}", scopes=["patterns:read"], ttl_s=7200) for k in range(50)
    ]
    for c in range(n):
        kind = kinds[c % len(kinds)]
        token = tokens[c % len(tokens)]
        if server.name == "hub-sio":
            join = ("40" + json.dumps({"token": token})).encode()
            sub = ("42" + json.dumps(["subscribe", {"id": "b", "filter": HUB_FILTERS[kind]}])).encode()
            conns.append(Conn(server.ws_url, kind, (join, sub), deflate))
            continue
        frame = json.dumps({"op": "subscribe", "id": "b", "filter": HUB_FILTERS[kind]}).encode()
        conns.append(Conn(f"{server.ws_url}?token={token}", kind, (frame,), deflate))
    return conns


def conns_for(server: Server, n: int, *, filters: str = "mixed", deflate: bool = False) -> list[Conn]:
    if server.name in HUBS:
        return hub_conns(server, n, filters=filters, secret=OPS_SECRET, deflate=deflate)
    return [Conn(server.ws_url, deflate=deflate)] * n


def hub_buckets(server: Server) -> list[tuple[float, float]] | None:
    """The hub's own stored→sent histogram from /metrics: cumulative (upper bound s, count) buckets."""
    if server.name not in HUBS:
        return None
    try:
        text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("tickstock_ws_stored_to_sent_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return buckets or None


def histogram_quantiles(
    before: list[tuple[float, float]] | None, after: list[tuple[float, float]] | None
) -> dict[str, Any] | None:
    """p50/p95/p99 (ms) of what a histogram observed between two scrapes, interpolated in its buckets."""
    if not after:
        return None
    counts = [
        (bound, count - (before[k][1] if before and len(before) == len(after) else 0))
        for k, (bound, count) in enumerate(after)
    ]
    total = counts[-1][1]
    if total <= 0:
        return None

    def quantile(q: float) -> float:
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in counts:
            if count >= q * total:
                if bound == float("inf"):
                    return lower_bound * 1000
                share = (q * total - lower_count) / max(1.0, count - lower_count)
                return (lower_bound + (bound - lower_bound) * share) * 1000
            lower_bound, lower_count = bound, count
        return lower_bound * 1000

    return {
        "n": int(total),
        "p50": round(quantile(0.5), 1),
        "p95": round(quantile(0.95), 1),
        "p99": round(quantile(0.99), 1),
    }


def fanout_run(
    server: Server,
    connections: int,
    *,
    rate: float,
    seconds: float,
    filters: str = "mixed",
    processes: int | None = None,
    clients: str = "plain",
    engine: str = "python",
) -> dict[str, Any]:
    """One fan-out measurement (see the module docstring); ``clients`` "deflate" offer permessage-deflate."""
    publish_rate = rate / _mean_share(MIXED) if server.name in HUBS and filters == "mixed" else rate
    warmup = max(1, int(publish_rate * WARMUP_S))
    count = int(publish_rate * seconds)
    # Each run uses fresh indices, so a late message from an earlier run is never counted.
    first = fanout_run.next_index + warmup  # type: ignore[attr-defined]
    fanout_run.next_index = first + count + 1000  # type: ignore[attr-defined]
    conns = conns_for(server, connections, filters=filters, deflate=clients == "deflate")
    print(
        f"  {server.name}: {connections:,} {clients} connections, {publish_rate:g} msg/s published for "
        f"{seconds:g} s ...",
        flush=True,
    )
    if engine == "c" and clients == "deflate" and server.name in TAKES_DEFLATE:
        engine = "python"
        print(f"    (the python engine: {server.name} takes the deflate offer, the c engine cannot inflate)")
    start_memory = proc_memory(server.pid, pss=False)
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        with Load(server.mode, conns, first=first, count=count, processes=processes, engine=engine) as load:
            started = time.monotonic()
            status = load.wait_ready(timeout_s=max(120.0, connections / 20))
            connect_s = time.monotonic() - started
            # How the connections spread over a hub's workers (the supervisor hands each to the least loaded).
            spread = (
                sorted(
                    proc_connections(server.pid, urlsplit(server.http_url).port or 0).values(), reverse=True
                )
                if server.workers > 1
                else None
            )
            server.publish(warmup, publish_rate, first - warmup)
            time.sleep(0.5)
            buckets0 = hub_buckets(server)
            cpu0 = proc_cpu_s(server.pid)
            extra0 = {name: proc_cpu_s(pid) for name, pid in server.extra_pids.items()}
            client0 = _children_cpu()
            t0 = time.monotonic()
            publish_s = server.publish(count, publish_rate, first)
            # Until every connection still open has all its messages (or nothing comes for 3 s).
            last_change = load.drain(stall_s=3.0, timeout_s=30.0)
            cpu = proc_cpu_s(server.pid) - cpu0
            extra = {
                name: round(proc_cpu_s(pid) - extra0[name], 2) for name, pid in server.extra_pids.items()
            }
            window_s = max(publish_s, last_change - t0)
            buckets1 = hub_buckets(server)
            result = load.stop()
    finally:
        memory = sampler.stop()
    client_cpu = _children_cpu() - client0
    out = result.as_dict()
    delivered = result.delivered
    return {
        "server": server.name,
        "workers": server.workers,
        "clients": clients,
        "engine": engine,
        "connections": connections,
        "rate_per_connection": rate,
        "publish_rate": publish_rate,
        "seconds": seconds,
        "filters": filters if server.name in HUBS else "broadcast",
        "connect_s": round(connect_s, 1),
        "ready_status": status,
        "publish_s": round(publish_s, 2),
        "window_s": round(window_s, 2),
        **out,
        "deliveries_per_s": round(result.delivered / window_s, 1),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_msg": round(cpu / delivered * 1e6, 2) if delivered else None,
        "server_cpu_pct": round(100 * cpu / window_s, 1),
        "helper_cpu_s": extra,
        "helper_cpu_us_per_msg": round(sum(extra.values()) / delivered * 1e6, 2) if delivered else None,
        "client_cpu_s": round(client_cpu or result.client_cpu_s, 2),
        "hub_stored_to_sent_ms": histogram_quantiles(buckets0, buckets1),
        "connections_by_process": spread,
        "rss_start_mb": round(start_memory["rss"] / 2**20, 1),
        **memory,
        "memory_measure": MEMORY_MEASURE,
    }


fanout_run.next_index = 0  # type: ignore[attr-defined]


def _mean_share(kinds: tuple[str, ...]) -> float:
    """The share of events a connection gets on average when the kinds rotate evenly (0.625 for MIXED)."""
    return sum(sum(1 for i in range(100) if KINDS[k](i)) / 100 for k in kinds) / len(kinds)


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def memory_run(
    server: Server,
    connections: int,
    *,
    processes: int | None = None,
    warmup_connections: int = 100,
    engine: str = "python",
) -> dict[str, Any]:
    """RSS per idle connection with ``connections`` open (the hub's subscribed). A first round of
    ``warmup_connections`` comes and goes before the baseline, so lazy imports and first-use caches
    are not charged to the connections."""
    print(f"  {server.name}: {connections:,} idle connections (memory) ...", flush=True)
    with Load(server.mode, conns_for(server, warmup_connections), processes=processes, engine=engine) as load:
        load.wait_ready(timeout_s=60)
        load.stop()
    conns = conns_for(server, connections)
    time.sleep(2.0)
    _collect(server)
    before = proc_memory(server.pid)
    with Load(server.mode, conns, first=0, count=0, processes=processes, engine=engine) as load:
        started = time.monotonic()
        status = load.wait_ready(timeout_s=max(180.0, connections / 20))
        connect_s = time.monotonic() - started
        time.sleep(SETTLE_S)
        _collect(server)
        after = proc_memory(server.pid)
        # Which process holds how many (the supervisor hands each connection to the least loaded worker).
        held = proc_connections(server.pid, urlsplit(server.http_url).port or 0)
        ready = status.get("ready", 0)
        load.stop()

    def per_conn(key: str) -> float | None:
        if not ready or not after[key] or before[key] is None:
            return None
        return round((after[key] - before[key]) / ready / 1024, 1)

    def mb(value: int | None) -> float | None:
        return round(value / 2**20, 1) if value is not None else None

    return {
        "server": server.name,
        "workers": server.workers,
        "connections": connections,
        "ready": ready,
        "failed": status.get("failed", 0),
        "connect_s": round(connect_s, 1),
        "rss_before_mb": mb(before["rss"]),
        "rss_after_mb": mb(after["rss"]),
        "rss_per_conn_kb": per_conn("rss"),
        "pss_before_mb": mb(before["pss"]),
        "pss_after_mb": mb(after["pss"]),
        "pss_per_conn_kb": per_conn("pss"),
        "processes": [
            {
                "pid": pid,
                "rss_before_mb": mb(before["rss_by_pid"].get(pid)),
                "rss_after_mb": mb(rss),
                "connections": held.get(pid, 0),
            }
            for pid, rss in after["rss_by_pid"].items()
        ],
        "memory_measure": MEMORY_MEASURE,
    }


def _settle(server: Server, timeout_s: float = 180.0) -> None:
    """Wait until the server has let go of the connections just closed (Flask-SocketIO's threads take
    a while, and it answers nothing meanwhile): ``/health`` answers and reports no clients."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{server.http_url}/health", timeout=5).json()
            if not body.get("clients"):
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1.0)
    time.sleep(2.0)


def _collect(server: Server) -> None:
    """Ask a garbage-collected server to collect now (Node: ``GET /gc``), so RSS is not sampled at a
    random point of its collector's cycle."""
    if server.name == "node":
        with suppress(httpx.HTTPError):
            httpx.get(f"{server.http_url}/gc", timeout=30)
        time.sleep(0.5)


@contextmanager
def open_server(
    name: str, redis: Any = None, *, hub_workers: int | None = None, hub_env: dict[str, str] | None = None
) -> Iterator[Server]:
    if name in HUBS:
        with hub_server(name=name, workers=hub_workers, extra_env=hub_env) as server:
            yield server
    elif name == "starlette":
        with starlette_server() as server:
            yield server
    elif name == "node":
        with node_server() as server:
            yield server
    elif name == "flask":
        with flask_server(redis.url, redis_pid=redis.pid) as server:
            yield server
    else:
        raise ValueError(f"unknown server {name!r} (known: {', '.join(SERVERS)})")


@contextmanager
def flask_redis() -> Iterator[Any]:
    """An embedded Redis for the Flask-SocketIO baseline's message queue."""
    from hub.embedded import EmbeddedRedis

    with (
        tempfile.TemporaryDirectory(prefix="tickstock-bench-redis-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as redis,
    ):
        yield redis


def run_all(
    servers: list[str],
    connections: list[int],
    *,
    rate: float,
    seconds: float,
    memory: int,
    filters: str,
    processes: int | None,
    flask_max: int = FLASK_MAX_CONNECTIONS,
    clients: tuple[str, ...] = ("plain",),
    hub_workers: int | None = None,
    hub_env: dict[str, str] | None = None,
    engine: str = "python",
) -> dict[str, Any]:
    """``hub_workers``: the hubs' ``TICKSTOCK_WORKERS`` (default: the hub's own, one per core);
    ``hub_env``: more of the hubs' settings (``TICKSTOCK_*`` variables); ``engine``: the load
    client's (ops/wsload.py: "python", or "c" for one that takes less of the machine's CPU)."""
    raise_fd_limit()
    fanout: list[dict[str, Any]] = []
    memory_results: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    for name in servers:
        try:
            with ExitStack() as exits:
                redis = exits.enter_context(flask_redis()) if name == "flask" else None
                server = exits.enter_context(
                    open_server(name, redis, hub_workers=hub_workers, hub_env=hub_env)
                )
                # Memory first, on the fresh server: a fan-out run leaves garbage that a collector may
                # return during the measurement (Node's did: a negative delta).
                if memory and name not in DEFLATE_ONLY:
                    idle = min(memory, FLASK_MAX_IDLE) if name == "flask" else memory
                    memory_results.append(memory_run(server, idle, processes=processes, engine=engine))
                    m = memory_results[-1]
                    print(
                        f"    {m['ready']:,} ready: RSS {m['rss_before_mb']} → {m['rss_after_mb']} MB, "
                        f"{m['rss_per_conn_kb']} KB per connection; PSS {m['pss_before_mb']} → "
                        f"{m['pss_after_mb']} MB, {m['pss_per_conn_kb']} KB per connection"
                        + (
                            "; by process (pid: connections, RSS MB): "
                            + ", ".join(
                                f"{p['pid']}: {p['connections']:,}, {p['rss_before_mb']} → {p['rss_after_mb']}"
                                for p in m["processes"]
                            )
                            if len(m["processes"]) > 1
                            else ""
                        ),
                        flush=True,
                    )
                    _settle(server)
                if connections and not memory:
                    # The first run on a fresh server ran slower and cheaper per message than the next
                    # ones (one trial: p50 762 ms and 17.6 µs/msg, then 15 ms and 28.0 µs/msg with the
                    # same clients): a short run, not counted, so that client kinds compare alike.
                    print("  (warm-up run, not counted)", flush=True)
                    fanout_run(
                        server,
                        min(connections[0], 200),
                        rate=rate,
                        seconds=3.0,
                        filters=filters,
                        engine=engine,
                    )
                for n in connections:
                    if name == "flask" and n > flask_max:
                        skipped.append(
                            {
                                "server": name,
                                "connections": n,
                                "why": f"above --flask-max-connections "
                                f"{flask_max}: one busy thread per connection saturates the machine",
                            }
                        )
                        print(f"  flask: {n:,} connections skipped ({skipped[-1]['why']})", flush=True)
                        continue
                    for kind in clients_for(name, clients):
                        fanout.append(
                            fanout_run(
                                server,
                                n,
                                rate=rate,
                                seconds=seconds,
                                filters=filters,
                                processes=processes,
                                clients=kind,
                                engine=engine,
                            )
                        )
                        print(fanout_line(fanout[-1]), flush=True)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"  {name}: FAILED {errors[name]}", flush=True)
    ratios = socketio_ratios(fanout)
    return {
        "fanout": fanout,
        "deflate_ratios": deflate_ratios(fanout),
        "memory": memory_results,
        "errors": errors,
        "skipped": skipped,
        "socketio": ratios,
    }


def clients_for(name: str, clients: tuple[str, ...]) -> list[str]:
    """The client kinds ``name`` is run with, of those asked for."""
    if name in PLAIN_ONLY:
        return [c for c in clients if c == "plain"]
    if name in DEFLATE_ONLY:
        return ["deflate"]
    return list(clients)


def deflate_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server and connection count: server CPU per delivered message with deflate-offering clients
    ÷ with plain clients (``hub-shared`` ÷ the plain ``hub``), and how many connections negotiated.
    With several runs of a kind (``--clients plain,deflate,deflate,plain``: the order a server's runs
    come in costs it more or less, so an ABBA order cancels it), the means of the kinds' runs, each
    run's figure printed beside them."""
    rows = []
    seen: set[tuple[str, int]] = set()
    for d in (r for r in runs if r.get("clients") == "deflate"):
        if (d["server"], d["connections"]) in seen:
            continue
        seen.add((d["server"], d["connections"]))
        base = "hub" if d["server"] == "hub-shared" else d["server"]
        mine_runs = [
            r
            for r in runs
            if r["server"] == d["server"]
            and r.get("clients") == "deflate"
            and r["connections"] == d["connections"]
        ]
        plain_runs = [
            r
            for r in runs
            if r["server"] == base
            and r.get("clients", "plain") == "plain"
            and r["connections"] == d["connections"]
        ]

        def mean(rs: list[dict[str, Any]], key: str) -> float | None:
            values = [r[key] for r in rs if r.get(key)]
            return round(sum(values) / len(values), 2) if values else None

        mine, theirs = mean(mine_runs, "server_cpu_us_per_msg"), mean(plain_runs, "server_cpu_us_per_msg")
        mine_bytes, plain_bytes = mean(mine_runs, "bytes"), mean(plain_runs, "bytes")
        rows.append(
            {
                "server": d["server"],
                "connections": d["connections"],
                "negotiated": sum(r.get("negotiated", 0) for r in mine_runs),
                "ready": sum(r["ready"] for r in mine_runs),
                "runs": [len(plain_runs), len(mine_runs)],
                "plain_cpu_us_per_msg": theirs,
                "deflate_cpu_us_per_msg": mine,
                "ratio": round(mine / theirs, 2) if mine and theirs else None,
                "bytes_ratio": round(mine_bytes / plain_bytes, 2) if mine_bytes and plain_bytes else None,
            }
        )
        each = (
            f" (runs: plain {', '.join(str(r['server_cpu_us_per_msg']) for r in plain_runs)}; deflate "
            f"{', '.join(str(r['server_cpu_us_per_msg']) for r in mine_runs)})"
            if len(mine_runs) > 1 or len(plain_runs) > 1
            else ""
        )
        print(
            f"  {d['server']} at {d['connections']:,}: deflate-offering clients "
            f"({rows[-1]['negotiated']:,}/{rows[-1]['ready']:,} negotiated) {mine} µs/msg vs plain {theirs} µs/msg: "
            f"{rows[-1]['ratio']}×{each}",
            flush=True,
        )
    return rows


def socketio_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hub's Socket.IO endpoint as ratios to its ``/ws`` and to Socket.IO on Node.js, per connection
    count of this run: server CPU per delivered message and p99 latency (below 1×: lower, better)."""
    rows = []
    runs = [r for r in runs if r.get("clients", "plain") == "plain"]
    for sio in (r for r in runs if r["server"] == "hub-sio"):
        row: dict[str, Any] = {"connections": sio["connections"], "lost": sio["lost"]}
        for peer in ("hub", "node"):
            other = next(
                (r for r in runs if r["server"] == peer and r["connections"] == sio["connections"]), None
            )
            for figure, get in (
                ("cpu_us_per_msg", lambda r: r["server_cpu_us_per_msg"]),
                ("p99_ms", lambda r: r["latency_ms"].get("p99")),
            ):
                mine, theirs = get(sio), get(other) if other else None
                row[f"{figure}_vs_{peer}"] = round(mine / theirs, 2) if mine and theirs else None
        rows.append(row)
        print(
            f"  hub Socket.IO at {row['connections']:,}: lost {row['lost']}; CPU/msg "
            f"{row['cpu_us_per_msg_vs_hub']}× /ws, {row['cpu_us_per_msg_vs_node']}× Node Socket.IO; p99 "
            f"{row['p99_ms_vs_hub']}× /ws, {row['p99_ms_vs_node']}× Node Socket.IO",
            flush=True,
        )
    return rows


def report(result: dict[str, Any]) -> list[str]:
    """The table of every fan-out run, the memory rows and issue #14's acceptance figures."""
    lines: list[str] = []
    if result["fanout"]:
        lines += ["== fan-out", *fanout_table(result["fanout"], result["skipped"])]
    if result["memory"]:
        lines += ["", "== memory: per idle connection", *memory_table(result["memory"])]
    checks = acceptance_lines(result["fanout"], result["memory"])
    if checks:
        lines += ["", "== issue #14 acceptance figures", *checks]
    if result.get("hub_env"):
        lines.append("  hub settings: " + " ".join(f"{k}={v}" for k, v in sorted(result["hub_env"].items())))
    if result.get("engine", "python") != "python":
        lines.append(f"  load client: the {result['engine']} engine of ops/wsload.py")
    lines += [f"  {name}: FAILED: {err.splitlines()[0][:300]}" for name, err in result["errors"].items()]
    return lines


def add_hub_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hub-workers",
        type=int,
        default=default_hub_workers(),
        help="the hubs' TICKSTOCK_WORKERS: serving processes (default: the hub's own, one per core: "
        f"{default_hub_workers()} here); CPU and memory cover the supervisor and every worker",
    )


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="python",
        help="the load client's engine: python, or c (ops/wsload.c: a fraction of the CPU per message, "
        "so more of the machine is left to the server measured; it cannot read a compressed session)",
    )


def parse_clients(value: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    kinds = tuple(c for c in value.split(",") if c)
    if not kinds or set(kinds) - set(CLIENTS):
        parser.error(f"--clients: comma-separated {', '.join(CLIENTS)}, not {value!r}")
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--connections", default="100,1000", help="comma-separated; '' for none")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second per connection")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured publishing time per run")
    parser.add_argument(
        "--memory", type=int, default=0, help="idle connections for the RSS measurement (0: skip)"
    )
    parser.add_argument("--hub-filters", choices=("mixed", "all"), default="mixed")
    parser.add_argument(
        "--processes", type=int, default=None, help="client processes (default: one per core)"
    )
    parser.add_argument("--flask-max-connections", type=int, default=FLASK_MAX_CONNECTIONS)
    parser.add_argument(
        "--clients",
        default="plain",
        help="comma-separated client kinds: plain, deflate (offer permessage-deflate as a browser does)",
    )
    add_hub_workers(parser)
    add_engine(parser)
    parser.add_argument(
        "--hub-env",
        action="append",
        default=[],
        metavar="TICKSTOCK_NAME=VALUE",
        help="a setting for the hubs (repeatable), e.g. TICKSTOCK_WS_SHED_LAG_S=0.05; the hubs get no "
        "other TICKSTOCK_ variable from this shell",
    )
    args = parser.parse_args()
    hub_env = dict(item.split("=", 1) for item in args.hub_env if "=" in item)
    if len(hub_env) != len(args.hub_env) or any(not k.startswith("TICKSTOCK_") for k in hub_env):
        parser.error("--hub-env: TICKSTOCK_NAME=VALUE")
    # SIGTERM unwinds like Ctrl-C, so every server started so far is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    servers = [s for s in args.servers.split(",") if s]
    connections = [int(c) for c in args.connections.split(",") if c]
    result = run_all(
        servers,
        connections,
        rate=args.rate,
        seconds=args.seconds,
        memory=args.memory,
        filters=args.hub_filters,
        processes=args.processes,
        flask_max=args.flask_max_connections,
        clients=parse_clients(args.clients, parser),
        hub_workers=args.hub_workers,
        hub_env=hub_env,
        engine=args.engine,
    )
    result["hub_env"] = hub_env
    result["engine"] = args.engine
    print("\n" + "\n".join(report(result)))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_fanout-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"cpus": os.cpu_count(), "hub_workers": args.hub_workers, **result}, indent=2))
    print(f"written to {out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
