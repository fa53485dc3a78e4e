"""The websocket fan-out's acceptance runs (issue #4), each on a fresh embedded stack with real hub processes.

    python -m ops.ws_acceptance oracle    # N clients, mixed filters, events at a rate: exact delivery + latency
    python -m ops.ws_acceptance resume    # a client away 30 s while 2,000 events flow resumes exactly
    python -m ops.ws_acceptance slow      # a client that stops reading is closed (4409); the others' p99
    python -m ops.ws_acceptance failover  # two nodes, clients split; kill -9 one; all resume with no loss
    python -m ops.ws_acceptance all

Clients use :class:`hub.client.HubClient` (the project's client: reconnect, resume by ``seq``). Client
and hubs share the machine; latency is client receive time minus the publisher's ``data.sent_at``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import random
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from api.auth import mint_token
from hub.client import Delivery, HubClient, Subscription
from ops.harness import (
    ROOT,
    SYMBOLS,
    Stack,
    connected,
    embedded_stack,
    make_events,
    publish,
    start_hub,
    stop_hub,
)

SECRET = "ops-only-secret-not-for-production-0123456789"
TOKEN = mint_token(SECRET, subject="ops-ws", scopes=["patterns:read"], ttl_s=6 * 3600)
FILTERS: list[dict[str, Any]] = [
    {},
    {"symbols": ["AAPL"]},
    {"symbols": ["MSFT", "NVDA", "BRK.B"]},
    {"universes": ["dow30"]},
    {"universes": ["sp500"], "patterns": ["hammer", "doji"]},
    {"timeframes": ["daily"]},
    {"confidence_min": 0.8},
    {"universes": ["nasdaq100"], "timeframes": ["1min", "5min"]},
    {"patterns": ["engulfing"], "confidence_min": 0.6},
    {"symbols": ["JPM", "XOM", "KO"], "timeframes": ["hourly"]},
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def members(stack: Stack) -> dict[str, set[str]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT universe, symbol FROM universe_members")
        found: dict[str, set[str]] = {}
        for universe, symbol in await cur.fetchall():
            found.setdefault(universe, set()).add(symbol)
    return found


def matcher(f: dict[str, Any], universes: dict[str, set[str]]) -> Callable[[dict[str, Any]], bool]:
    wanted = set(f.get("symbols", [])).union(*(universes.get(u, set()) for u in f.get("universes", [])))
    any_symbol = not f.get("symbols") and not f.get("universes")

    def match(e: dict[str, Any]) -> bool:
        return (
            (any_symbol or e["symbol"] in wanted)
            and (not f.get("patterns") or e["pattern"] in f["patterns"])
            and (not f.get("timeframes") or e["timeframe"] in f["timeframes"])
            and e["confidence"] >= f.get("confidence_min", 0)
        )

    return match


class Collector:
    """One client: its deliveries (ids in order, latencies)."""

    def __init__(self, urls: list[str], f: dict[str, Any], since: int | None = None) -> None:
        self.filter = f
        self.client = HubClient(
            urls,
            token=TOKEN,
            subscriptions=[Subscription("s", f)],
            since=since,
            backoff_initial_s=0.2,
            backoff_max_s=2.0,
        )
        self.ids: list[str] = []
        self.seqs: list[int] = []
        self.latency: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.__aenter__()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        d: Delivery
        async for d in self.client:
            now = time.time()
            self.ids.append(d.event["id"])
            self.seqs.append(d.seq)
            sent = (d.event.get("data") or {}).get("sent_at")
            if sent:
                self.latency.append((now - sent) * 1000)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self.client.__aexit__(None, None, None)


async def start_clients(urls_for: Callable[[int], list[str]], n: int, *, seed: int = 1) -> list[Collector]:
    rng = random.Random(seed)
    clients = [Collector(urls_for(i), rng.choice(FILTERS)) for i in range(n)]
    for i in range(0, n, 50):
        await asyncio.gather(*(c.start() for c in clients[i : i + 50]))
    deadline = time.monotonic() + 120
    while any(not c.client.recovered for c in clients):
        if time.monotonic() > deadline:
            raise RuntimeError("clients did not all subscribe")
        await asyncio.sleep(0.1)
    return clients


def check(
    clients: list[Collector], events: list[dict[str, Any]], universes: dict[str, set[str]]
) -> dict[str, Any]:
    """Exact = each matching event once (no loss, no duplicate, nothing unmatched) in clean-stream order
    (strictly increasing ``seq``). With two nodes the stream interleaves their writers' batches, so the
    order to check is the stream's, not the publisher's."""
    exact = 0
    problems: list[str] = []
    prefix = events[0]["id"].rsplit("-", 1)[0] + "-"
    for c in clients:
        expected = {e["id"] for e in events if matcher(c.filter, universes)(e)}
        mine = [i for i in c.ids if i.startswith(prefix)]
        seqs = [s for i, s in zip(c.ids, c.seqs, strict=True) if i.startswith(prefix)]
        in_order = all(a < b for a, b in itertools.pairwise(seqs))
        if len(mine) == len(expected) and set(mine) == expected and in_order:
            exact += 1
        elif len(problems) < 5:
            problems.append(
                f"filter {c.filter}: expected {len(expected)}, got {len(mine)} ({len(set(mine))} distinct, "
                f"{len(set(mine) - expected)} unexpected), seq order kept: {in_order}"
            )
    return {"clients": len(clients), "exact": exact, "problems": problems}


async def wait_delivered(
    clients: list[Collector],
    events: list[dict[str, Any]],
    universes: dict[str, set[str]],
    timeout_s: float = 120,
) -> None:
    want = {id(c): sum(1 for e in events if matcher(c.filter, universes)(e)) for c in clients}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(len(c.ids) >= want[id(c)] for c in clients):
            await asyncio.sleep(1.0)  # anything extra (a duplicate) would arrive now
            return
        await asyncio.sleep(0.2)


def latency_summary(clients: list[Collector]) -> dict[str, float]:
    values = [v for c in clients for v in c.latency]
    return {
        "deliveries": len(values),
        "p50_ms": round(pct(values, 0.5), 1),
        "p95_ms": round(pct(values, 0.95), 1),
        "p99_ms": round(pct(values, 0.99), 1),
        "max_ms": round(max(values, default=float("nan")), 1),
    }


# -- scenarios -------------------------------------------------------------------------------------


async def oracle(stack: Stack, *, clients_n: int, rate: float, seconds: float) -> dict[str, Any]:
    proc, port = start_hub(stack)
    url = f"ws://127.0.0.1:{port}/ws"
    universes = await members(stack)
    clients = await start_clients(lambda i: [url], clients_n)
    events = make_events(int(rate * seconds), run=f"oracle{int(time.time())}", symbols=SYMBOLS)
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    async with connected(stack.nats_url) as nc:
        await publish(nc, events, rate=rate, window=50)
    await wait_delivered(clients, events, universes)
    cpu = cpu_seconds(proc.pid) - cpu0
    elapsed = time.monotonic() - t0
    result = check(clients, events, universes)
    lat = latency_summary(clients)
    for c in clients:
        await c.stop()
    stop_hub(proc)
    return {
        "scenario": "oracle",
        "events": len(events),
        "rate": rate,
        **result,
        **lat,
        "deliveries_per_s": round(lat["deliveries"] / elapsed, 1),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_delivery": round(cpu / max(1, lat["deliveries"]) * 1e6, 1),
    }


async def resume(stack: Stack, *, away_s: float = 30, n: int = 2000) -> dict[str, Any]:
    proc, port = start_hub(stack)
    url = f"ws://127.0.0.1:{port}/ws"
    universes = await members(stack)
    f = {"universes": ["dow30"], "confidence_min": 0.6}
    run = f"resume{int(time.time())}"
    events = make_events(n, run=run, symbols=SYMBOLS)
    first = Collector([url], f)
    await first.start()
    while not first.client.recovered:
        await asyncio.sleep(0.05)
    async with connected(stack.nats_url) as nc:
        publishing = asyncio.create_task(publish(nc, events, rate=n / (away_s + 10), window=50))
        await asyncio.sleep(5)
        last = first.client.last_seq["s"]
        got_before = list(first.ids)
        await first.stop()  # away for away_s while events flow
        await asyncio.sleep(away_s)
        second = Collector([url], f, since=last)
        await second.start()
        await publishing
    await wait_delivered([second], events[len(got_before) :], universes, timeout_s=60)
    combined = got_before + second.ids
    expected = [e["id"] for e in events if matcher(f, universes)(e)]
    await second.stop()
    stop_hub(proc)
    return {
        "scenario": "resume",
        "away_s": away_s,
        "events": n,
        "expected": len(expected),
        "before": len(got_before),
        "after_resume": len(second.ids),
        "exact": combined == expected,
        "duplicates": len(combined) - len(set(combined)),
        "recovered": second.client.recovered.get("s"),
    }


def _raw_frame(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def slow(
    stack: Stack, *, clients_n: int = 100, rate: float = 100, seconds: float = 30
) -> dict[str, Any]:
    stack.extra_env.update({"TICKSTOCK_WS_QUEUE_MESSAGES": "1000", "TICKSTOCK_WS_QUEUE_BYTES": str(1 << 20)})
    proc, port = start_hub(stack)
    url = f"ws://127.0.0.1:{port}/ws"
    universes = await members(stack)
    out: dict[str, Any] = {
        "scenario": "slow",
        "clients": clients_n,
        "rate": rate,
        "frame_bytes": "about 3,400",
    }
    async with connected(stack.nats_url) as nc:  # warm the hub up before measuring
        await publish(nc, make_events(200, run="warmup"), rate=100, window=50)
    for phase in ("without", "with"):
        clients = await start_clients(lambda i: [url], clients_n, seed=3)
        sock_writer = None
        if phase == "with":
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            reader, sock_writer = await asyncio.open_connection(sock=sock)
            key = base64.b64encode(os.urandom(16)).decode()
            sock_writer.write(
                f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")
            sock_writer.write(_raw_frame(json.dumps({"op": "subscribe", "id": "all", "filter": {}})))
        run = f"slow{phase}{int(time.time())}"
        events = make_events(int(rate * seconds), run=run, symbols=SYMBOLS)
        blob = "x" * 3000  # 3 KB frames: the non-reader's socket buffers fill within the run
        async with connected(stack.nats_url) as nc:
            publishing = asyncio.create_task(publish(nc, events, rate=rate, window=50, blob=blob))
            while not publishing.done():
                if sock_writer is not None and not sock_writer.transport.is_closing():
                    sock_writer.write(_raw_frame('{"op":"pong"}'))  # it talks, but never reads
                await asyncio.sleep(0.3)
            await publishing
        await wait_delivered(clients, events, universes)
        out[phase] = {**latency_summary(clients), **check(clients, events, universes)}
        if sock_writer is not None:
            text = httpx_get(f"http://127.0.0.1:{port}/metrics")
            out[phase]["slow_consumer_closes"] = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith('tickstock_ws_closes_total{code="4409"}')
            )
            sock_writer.transport.abort()
        for c in clients:
            await c.stop()
    stop_hub(proc)
    return out


def httpx_get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10).text


async def failover(
    stack: Stack, *, clients_n: int = 200, rate: float = 50, seconds: float = 30
) -> dict[str, Any]:
    a, port_a = start_hub(stack)
    b, port_b = start_hub(stack)
    urls = [f"ws://127.0.0.1:{port_a}/ws", f"ws://127.0.0.1:{port_b}/ws"]
    universes = await members(stack)
    clients = await start_clients(lambda i: [urls[i % 2], urls[(i + 1) % 2]], clients_n, seed=5)
    run = f"failover{int(time.time())}"
    events = make_events(int(rate * seconds), run=run, symbols=SYMBOLS)
    async with connected(stack.nats_url) as nc:
        publishing = asyncio.create_task(publish(nc, events, rate=rate, window=50))
        await asyncio.sleep(seconds / 2)
        stop_hub(a, kill=True)
        await publishing
    await wait_delivered(clients, events, universes)
    on_b = sum(1 for c in clients if c.client.node and c.client.connects >= 2)
    result = check(clients, events, universes)
    for c in clients:
        await c.stop()
    stop_hub(b)
    return {
        "scenario": "failover",
        "events": len(events),
        "killed_after_s": seconds / 2,
        "reconnected_clients": on_b,
        **result,
        **latency_summary(clients),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["oracle", "resume", "slow", "failover", "all"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.chdir(ROOT)
    results = []
    for name in ["oracle", "resume", "slow", "failover"] if args.scenario == "all" else [args.scenario]:
        with embedded_stack() as stack:
            stack.extra_env.update(
                {"TICKSTOCK_RATE_LIMIT_PER_S": "0", "TICKSTOCK_WS_MAX_CONNECTIONS": "50000"}
            )
            if name == "oracle":
                result = await oracle(stack, clients_n=args.clients, rate=args.rate, seconds=args.seconds)
            elif name == "resume":
                result = await resume(stack)
            elif name == "slow":
                result = await slow(stack)
            else:
                result = await failover(stack)
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    out = ROOT / "ops" / "results"
    out.mkdir(exist_ok=True)
    (out / f"ws_acceptance-{int(time.time())}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
