"""Leak check: a hub under moderate load for a long time; RSS and open files sampled, slopes reported.

    python ops/soak.py                          # 20 minutes, fresh embedded stack
    python ops/soak.py --minutes 60 --connections 1000 --rate 100
    TICKSTOCK_DATABASE_URL=... TICKSTOCK_NATS_URL=... TICKSTOCK_REDIS_URL=... python ops/soak.py --minutes 1

Starts one hub (``tickstock serve``) on a fresh embedded stack (or on the servers the three
``TICKSTOCK_*_URL`` variables name), then for the whole run:

- ``--connections`` websockets (``ops/wsload.py``, one process per core) subscribed with mixed filters;
- a publisher sending ``--rate`` events/s to ingest over NATS;
- churn: ``--churn`` connections per second that connect, subscribe, read for a second and close
  (per-connection state that is never released is the usual leak);

and every ``--interval`` seconds samples the RSS and open file descriptors of the hub process and of
each embedded server it started (NATS, PostgreSQL with its backends, Redis). After ``--warmup``
seconds (caches, pools, the resume ring and the allocator settle; the hub's counters keep every
increment of the last 60 s for their rates, so RSS climbs for the first minute of load), it fits a least-squares line per
process and reports the slope per hour, over the whole measured span and over its last half.

The hub's resume ring (``TICKSTOCK_WS_RING_SIZE`` recent events) grows until it is full; the soak sets
it to ``--ring-size`` (default 5,000: full within the warm-up at 50 events/s) so that a bounded,
intended growth is not mistaken for a leak; ``--ring-size 0`` keeps the hub's default.

Verdict: a leak when the hub's RSS slope, over the whole fit and over its last half, would double its
mean RSS within an hour (and it rose by at least ``--min-growth-mb``), or its open files grow by more than ``--fd-slack`` per hour (both spans); ``--fail-on-leak`` turns that into exit status 1 (the
short version runs in the test suite: tests/test_leak.py). ``--json`` prints the result as one JSON
line at the end. Client, hub and servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import websockets  # noqa: E402
from baselines.servers import Server  # noqa: E402
from bench_fanout import HUB_FILTERS, OPS_SECRET, conns_for, publish_ingest, stack_pids  # noqa: E402
from gen_events import open_stack  # noqa: E402
from harness import start_hub  # noqa: E402
from wsload import Load, raise_fd_limit  # noqa: E402

from api.auth import mint_token  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_RING = 5_000


def sample(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) of ``pid`` and its live descendants."""
    rss = fds = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, fds


def slope_per_hour(times: list[float], values: list[float]) -> float:
    if len(times) < 3:
        return 0.0
    return float(np.polyfit(np.asarray(times), np.asarray(values, dtype=float), 1)[0]) * 3600


def summarize(name: str, series: list[tuple[float, int, int]], warmup_s: float) -> dict[str, Any]:
    measured = [s for s in series if s[0] >= warmup_s]
    if len(measured) < 3:
        measured = series
    half = measured[len(measured) // 2 :]
    t = [s[0] for s in measured]
    rss = [s[1] / 2**20 for s in measured]
    fds = [float(s[2]) for s in measured]
    return {
        "process": name,
        "samples": len(measured),
        "rss_mb": {
            "first": round(rss[0], 1),
            "last": round(rss[-1], 1),
            "mean": round(float(np.mean(rss)), 1),
            "max": round(max(rss), 1),
        },
        "rss_mb_per_hour": round(slope_per_hour(t, rss), 1),
        "rss_mb_per_hour_last_half": round(
            slope_per_hour([s[0] for s in half], [s[1] / 2**20 for s in half]), 1
        ),
        "fds": {"first": int(fds[0]), "last": int(fds[-1]), "max": int(max(fds))},
        "fds_per_hour": round(slope_per_hour(t, fds), 1),
        "fds_per_hour_last_half": round(slope_per_hour([s[0] for s in half], [float(s[2]) for s in half]), 1),
    }


def rss_doubles(summary: dict[str, Any], *, min_growth_mb: float = 0.0) -> bool:
    """True when the RSS slope, over the whole fit and over its last half, would double the mean RSS
    within an hour, and the RSS rose by at least ``min_growth_mb`` over the fit.

    The floor is the resolution of a short fit: on a loaded machine the allocator takes memory in steps
    (seen: +0.9 MB within 16 s of a 32 s fit, a slope of 215 MB/h on a 107 MB process, with two test
    runs and five other jobs on the two cores), and a step late in a short fit reads as a steep slope.
    """
    rss = summary["rss_mb"]
    slope = min(summary["rss_mb_per_hour"], summary["rss_mb_per_hour_last_half"])
    return bool(slope >= rss["mean"] and rss["last"] - rss["first"] >= min_growth_mb)


class Churn(threading.Thread):
    """Connections that come and go: connect, subscribe, read about a second, close; ``rate`` per s."""

    def __init__(self, ws_url: str, rate: float) -> None:
        super().__init__(daemon=True, name="churn")
        self.ws_url = ws_url
        self.rate = rate
        self.stop = threading.Event()
        self.opened = 0
        self.failed = 0

    def run(self) -> None:
        if self.rate > 0:
            asyncio.run(self._main())

    async def _one(self, n: int) -> None:
        token = mint_token(OPS_SECRET, subject=f"soak-churn-{n % 20}", scopes=["patterns:read"], ttl_s=7200)
        flt = random.choice(list(HUB_FILTERS.values()))
        try:
            async with websockets.connect(f"{self.ws_url}?token={token}", open_timeout=10) as ws:
                await ws.recv()  # welcome
                await ws.send(json.dumps({"op": "subscribe", "id": "c", "filter": flt}))
                deadline = time.monotonic() + random.uniform(0.5, 1.5)
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        await asyncio.wait_for(ws.recv(), left)
                    except TimeoutError:
                        break
            self.opened += 1
        except (OSError, websockets.WebSocketException, TimeoutError):
            self.failed += 1

    async def _main(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        started = time.monotonic()
        while not self.stop.is_set():
            delay = started + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks, return_exceptions=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    duration_s = args.seconds if args.seconds else args.minutes * 60
    with open_stack(None) as stack:
        if args.ring_size:
            stack.extra_env["TICKSTOCK_WS_RING_SIZE"] = str(args.ring_size)
        stack.extra_env["TICKSTOCK_MAINTENANCE_INTERVAL_S"] = str(args.maintenance_interval_s)
        servers = stack_pids()  # embedded servers this process started (none with external URLs)
        proc, port = start_hub(stack)
        server = Server(
            "hub", "hub", f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", proc.pid, lambda *a: 0.0
        )
        watched = {"hub": proc.pid, **servers}
        count = int(args.rate * duration_s)
        conns = conns_for(server, args.connections)
        run_id = f"soak{int(time.time())}"
        print(
            f"soak: {duration_s / 60:.1f} min, {args.connections} connections, {args.rate:g} events/s, churn "
            f"{args.churn:g}/s, sampling {', '.join(f'{k} (pid {v})' for k, v in watched.items())} every "
            f"{args.interval:g} s",
            flush=True,
        )
        series: dict[str, list[tuple[float, int, int]]] = {name: [] for name in watched}
        with Load("hub", conns, first=0, count=min(count, 200_000)) as load:
            status = load.wait_ready(timeout_s=120)
            publisher = threading.Thread(
                target=lambda: asyncio.run(publish_ingest(stack.nats_url, run_id, count, args.rate, 0)),
                daemon=True,
                name="publisher",
            )
            publisher.start()
            churn = Churn(server.ws_url, args.churn)
            churn.start()
            started = time.monotonic()
            next_print = 0.0
            while (elapsed := time.monotonic() - started) < duration_s:
                for name, pid in watched.items():
                    rss, fds = sample(pid)
                    series[name].append((elapsed, rss, fds))
                if elapsed >= next_print:
                    hub = series["hub"][-1]
                    print(
                        f"  {elapsed:>6.0f} s  hub RSS {hub[1] / 2**20:7.1f} MB  fds {hub[2]:>5}  delivered "
                        f"{load.delivered():>10,}  churn {churn.opened:,} ok / {churn.failed:,} failed",
                        flush=True,
                    )
                    next_print = elapsed + max(args.interval, duration_s / 40)
                if proc.poll() is not None:
                    raise RuntimeError(f"the hub exited with {proc.returncode} during the soak")
                time.sleep(args.interval)
            churn.stop.set()
            churn.join(15)
            publisher.join(30)
            result = load.stop()
    warmup = min(args.warmup, duration_s * 0.8)
    processes = [summarize(name, s, warmup) for name, s in series.items() if s]
    hub = processes[0]
    # A leak grows all along; a settling allocator or a filling bounded buffer slows down. Both the whole
    # fit and its last half must be steep.
    doubling = rss_doubles(hub, min_growth_mb=args.min_growth_mb)
    fd_growth = min(hub["fds_per_hour"], hub["fds_per_hour_last_half"]) > args.fd_slack
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "seconds": duration_s,
        "warmup_s": warmup,
        "connections": args.connections,
        "ready": status.get("ready", 0),
        "rate": args.rate,
        "churn_per_s": args.churn,
        "churn_opened": churn.opened,
        "churn_failed": churn.failed,
        "ring_size": args.ring_size or "hub default",
        "delivered": result.delivered,
        "closes": result.closes,
        "processes": processes,
        "leak": doubling or fd_growth,
        "verdict": (
            "LEAK: "
            + "; ".join(
                (
                    [
                        f"hub RSS grows {hub['rss_mb_per_hour']} MB/h, mean {hub['rss_mb']['mean']} MB (doubles within an hour)"
                    ]
                    if doubling
                    else []
                )
                + (
                    [f"hub open files grow {hub['fds_per_hour']}/h (> {args.fd_slack}/h)"]
                    if fd_growth
                    else []
                )
            )
        )
        if doubling or fd_growth
        else "no leak: the hub's RSS would not double within an hour and its open files are flat",
    }


def report(r: dict[str, Any]) -> None:
    print(
        f"\n== soak: {r['seconds'] / 60:.1f} min ({r['warmup_s']:.0f} s warm-up not fitted), {r['ready']}/"
        f"{r['connections']} connections, {r['rate']:g} events/s, churn {r['churn_per_s']:g}/s "
        f"({r['churn_opened']:,} opened and closed, {r['churn_failed']} failed), {r['delivered']:,} events delivered; "
        f"{r['cpus']} cores shared by load, hub and servers"
    )
    head = (
        f"{'process':<10} {'RSS first':>9} {'last':>7} {'mean':>7} {'MB/hour':>9} {'(last half)':>11} | "
        f"{'fds first':>9} {'last':>5} {'fds/hour':>9} {'(last half)':>11}"
    )
    print(head)
    print("-" * len(head))
    for p in r["processes"]:
        print(
            f"{p['process']:<10} {p['rss_mb']['first']:>9.1f} {p['rss_mb']['last']:>7.1f} {p['rss_mb']['mean']:>7.1f} "
            f"{p['rss_mb_per_hour']:>9.1f} {p['rss_mb_per_hour_last_half']:>11.1f} | {p['fds']['first']:>9} "
            f"{p['fds']['last']:>5} {p['fds_per_hour']:>9.1f} {p['fds_per_hour_last_half']:>11.1f}"
        )
    print(f"verdict: {r['verdict']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument(
        "--seconds", type=float, default=None, help="overrides --minutes (short runs, the test)"
    )
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s published to ingest")
    parser.add_argument("--churn", type=float, default=5.0, help="short-lived connections per second")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=120.0, help="seconds left out of the fit (at most 80%% of the run)"
    )
    parser.add_argument(
        "--ring-size", type=int, default=DEFAULT_RING, help="TICKSTOCK_WS_RING_SIZE (0: hub default)"
    )
    parser.add_argument("--maintenance-interval-s", type=float, default=60.0)
    parser.add_argument(
        "--fd-slack", type=float, default=100.0, help="open files per hour tolerated on the hub"
    )
    parser.add_argument(
        "--min-growth-mb",
        type=float,
        default=0.0,
        help="RSS rise over the fit below which no slope is called a leak (the short check's resolution)",
    )
    parser.add_argument("--fail-on-leak", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    report(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    if args.json:
        print(json.dumps(result))
    return 1 if args.fail_on_leak and result["leak"] else 0


if __name__ == "__main__":
    sys.exit(main())
