"""Cache load test: 100 dashboard users (``ops/load/cache_locustfile.py``) while events are stored.

    python ops/load_cache.py                                   # 100 users, 60 s, 50 events/s
    python ops/load_cache.py --duration 90 --kill-redis-at 30 --redis-down 30   # Redis killed mid-run

Starts a fresh embedded stack (NATS, PostgreSQL, Redis), fills it with ``--events`` generated events,
starts one hub (``tickstock serve``), publishes ``--rate`` events/s to ingest for the whole run and runs
locust headless. With ``--kill-redis-at`` the Redis server is SIGKILLed that many seconds in and started
again (same port, empty) ``--redis-down`` seconds later. Prints, per phase (before, Redis down, after),
requests, 5xx, failures and client p50/p95/p99 (all reads, scans, cached scans), the hub's hit ratio
per route and its ratio per 5-second interval (so the recovery shows), and writes JSON to ``ops/results/``.

Exit status 1 when a target is missed: hit ratio of scans < ``--min-hit-ratio`` (0.70, outside the
outage), p95 of cached scans >= ``--cached-p95-ms`` (10), any 5xx, or (with a kill) p95 during the
outage >= ``--outage-p95-ms`` (50), or the hit ratio not back above the minimum after Redis returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

import httpx
from gen_events import ensure_events
from harness import ROOT, Stack, connected, make_events, publish, start_hub, stop_hub

from hub.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "load" / "cache_locustfile.py"
RESULTS = HERE / "results"
SAMPLE_S = 5.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ms = [r["ms"] for r in rows]
        return {
            "requests": len(rows),
            "p50": percentile(ms, 0.5),
            "p95": percentile(ms, 0.95),
            "p99": percentile(ms, 0.99),
            "mean": round(statistics.fmean(ms), 2) if ms else None,
        }

    reads = [r for r in records if r["name"] != "user universe: save"]
    scans = [r for r in reads if r["name"].startswith("scan")]
    return {
        "all": stats(reads),
        "scans": stats(scans),
        "cached_scans": stats([r for r in scans if r["name"] == "scan [hit]"]),
        "uncached_scans": stats([r for r in scans if r["name"] != "scan [hit]"]),
        "client_scan_hit_ratio": round(sum(r["name"] == "scan [hit]" for r in scans) / len(scans), 4)
        if scans
        else None,
        "status_5xx": sum(1 for r in records if r["status"] >= 500),
        "failures": sum(1 for r in records if r["failed"] or r["status"] == 0),
    }


def ready(port: int) -> dict[str, Any] | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).json()  # type: ignore[no-any-return]
    except (httpx.HTTPError, ValueError):
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tickstock-cache-") as tmp:
        root = Path(tmp)
        redis = EmbeddedRedis(root / "redis")
        with (
            EmbeddedNats(root / "nats") as nats_server,
            EmbeddedPostgres(root / "postgres") as postgres,
            redis,
        ):
            stack = Stack(postgres.url, nats_server.url, redis.url, root=root)
            subprocess.run(
                [sys.executable, "-m", "api.cli", "load-reference-data"],
                env=stack.env(8000),
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            generated = asyncio.run(ensure_events(stack.database_url, args.events))
            print(generated.line() if generated else f"{args.events:,} events stored", flush=True)
            try:
                return measure(args, stack, redis, root)
            finally:
                for hub in stack.hubs:
                    stop_hub(hub)


def measure(args: argparse.Namespace, stack: Stack, redis: EmbeddedRedis, root: Path) -> dict[str, Any]:
    hub, port = start_hub(stack)
    # start_hub keeps the hub's stderr in a pipe nobody reads; move it to a file so that a chatty hub
    # never blocks on a full pipe, and keep it for reading afterwards.
    log_file = root / "hub.log"
    _drain(hub, log_file)
    host = f"http://127.0.0.1:{port}"
    log_path = root / "requests.jsonl"
    stop = threading.Event()
    samples: list[dict[str, Any]] = []
    marks: dict[str, float] = {}

    def publisher() -> None:
        events = make_events(int(args.rate * (args.duration + 30)), run="cacheload")

        async def go() -> None:
            async with connected(stack.nats_url) as nc:
                task = asyncio.create_task(publish(nc, events, rate=args.rate, window=200, stamp=False))
                while not stop.is_set() and not task.done():
                    await asyncio.sleep(0.2)
                task.cancel()

        asyncio.run(go())

    def sampler() -> None:
        while not stop.is_set():
            body = ready(port)
            if body is not None:
                samples.append({"t": time.time(), "status": body["status"], "cache": body.get("cache")})
            stop.wait(SAMPLE_S)

    threads = [threading.Thread(target=publisher, daemon=True), threading.Thread(target=sampler, daemon=True)]
    hub_cpu0, load0 = _cpu(hub.pid), os.getloadavg()[0]
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{args.duration}s",
        "--host",
        host,
        "--only-summary",
        "--stop-timeout",
        "5",
        "--loglevel",
        "WARNING",
    ]
    env = {
        **os.environ,
        "TICKSTOCK_JWT_SECRET": stack.env(port)["TICKSTOCK_JWT_SECRET"],
        "TICKSTOCK_LOAD_LOG": str(log_path),
    }
    print(
        f"locust: {args.users} users, {args.duration} s against {host}; publishing {args.rate:.0f} events/s",
        flush=True,
    )
    marks["start"] = time.time()
    for t in threads:
        t.start()
    out_path = root / "locust.out"
    with out_path.open("w") as out:
        locust = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
        # Redis is killed and restarted from this (main) thread: the embedded servers die with the
        # thread that started them (PR_SET_PDEATHSIG), so a helper thread must not start one.
        kill_at = args.kill_redis_at
        while locust.poll() is None:
            elapsed = time.time() - marks["start"]
            if kill_at is not None and "redis_killed" not in marks and elapsed >= kill_at:
                marks["redis_killed"] = time.time()
                os.kill(redis.pid or 0, signal.SIGKILL)
                print(f"redis killed (SIGKILL) at {elapsed:.1f} s", flush=True)
            if "redis_killed" in marks and "redis_back" not in marks and elapsed >= kill_at + args.redis_down:
                redis.stop()
                redis.start()
                marks["redis_back"] = time.time()
                print(f"redis started again (empty) at {elapsed:.1f} s", flush=True)
            if elapsed > args.duration + 120:
                locust.kill()
            time.sleep(0.1)
    locust_output = out_path.read_text()
    marks["end"] = time.time()
    hub_cpu = _cpu(hub.pid) - hub_cpu0
    final = ready(port)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    if locust.returncode not in (0, 1):
        raise RuntimeError(f"locust exited with {locust.returncode}: {locust_output[-2000:]}")
    stored = _stored_count(stack.database_url)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    warmup = marks["start"] + args.warmup
    phases: dict[str, list[dict[str, Any]]] = {}
    if "redis_killed" in marks:
        back = marks.get("redis_back", marks["end"])
        phases["before"] = [r for r in records if warmup <= r["t"] < marks["redis_killed"]]
        phases["redis_down"] = [r for r in records if marks["redis_killed"] <= r["t"] < back]
        phases["after"] = [r for r in records if r["t"] >= back]
    else:
        phases["steady"] = [r for r in records if r["t"] >= warmup]
    intervals = []
    for a, b in itertools.pairwise(samples):
        if a["cache"] and b["cache"]:
            sa, sb = a["cache"]["routes"]["scan"], b["cache"]["routes"]["scan"]
            counts = {k: sb[k] - sa[k] for k in ("hit", "miss", "coalesced", "bypass")}
            total = sum(counts.values())
            intervals.append(
                {
                    "s": round(b["t"] - marks["start"]),
                    "status": b["status"],
                    **counts,
                    "hit_ratio": round(counts["hit"] / total, 3) if total else None,
                }
            )
    if args.hub_log:
        print((root / "hub.log").read_text()[-20000:])
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "duration_s": args.duration,
        "rate": args.rate,
        "events": args.events,
        "stored_during_run": stored,
        "cpus": os.cpu_count(),
        "marks": {k: round(v - marks["start"], 1) for k, v in marks.items()},
        "phases": {name: summarize(rows) for name, rows in phases.items()},
        "whole_run": summarize(records),
        "hub_cache": final.get("cache") if final else None,
        "intervals": intervals,
        "hub_checks": final.get("checks") if final else None,
        "hub_cpu_s": round(hub_cpu, 1),
        "load_average_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid``, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drain(proc: subprocess.Popen[bytes], path: Path) -> None:
    def copy() -> None:
        with path.open("ab") as out:
            for line in iter(proc.stderr.readline, b"") if proc.stderr else ():
                out.write(line)
                out.flush()

    threading.Thread(target=copy, daemon=True).start()


def _stored_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pattern_events WHERE id LIKE 'cacheload-%'").fetchone()
    return int(row[0]) if row else 0


def report(result: dict[str, Any]) -> None:
    print(
        f"\n== cache under load: {result['users']} users, {result['duration_s']} s, {result['rate']:.0f} events/s "
        f"({result['stored_during_run']:,} stored during the run), {result['events']:,} events before; "
        f"{result['cpus']} cores shared by locust, hub, PostgreSQL, NATS and Redis"
    )
    head = f"{'phase':<11} {'what':<15} {'requests':>8} {'p50':>7} {'p95':>7} {'p99':>7}"
    print(head)
    print("-" * len(head))
    for name, phase in result["phases"].items():
        for what in ("all", "scans", "cached_scans", "uncached_scans"):
            s = phase[what]
            print(
                f"{name:<11} {what:<15} {s['requests']:>8} {s['p50'] or 0:>7.1f} {s['p95'] or 0:>7.1f} {s['p99'] or 0:>7.1f}"
            )
        print(
            f"{name:<11} scan hit ratio (client) {phase['client_scan_hit_ratio']}; 5xx {phase['status_5xx']}; "
            f"failures {phase['failures']}"
        )
    cache = result["hub_cache"] or {}
    for route, r in (cache.get("routes") or {}).items():
        print(
            f"hub: {route:<9} hit {r['hit']:>6} miss {r['miss']:>5} coalesced {r['coalesced']:>4} bypass {r['bypass']:>5} "
            f"ratio {r['hit_ratio']}"
        )
    print(
        "scan hit ratio per interval (s: ratio [status]): "
        + ", ".join(f"{i['s']}: {i['hit_ratio']} [{i['status']}]" for i in result["intervals"])
    )
    print(
        f"marks (s from start): {result['marks']}; hub CPU {result['hub_cpu_s']} s; machine load average "
        f"(1 min) at start/end {result['load_average_1m']}"
    )


def check(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    problems = []
    phases = result["phases"]
    normal = [p for name, p in phases.items() if name != "redis_down"]
    for p in normal:
        if (p["client_scan_hit_ratio"] or 0) < args.min_hit_ratio:
            problems.append(f"scan hit ratio {p['client_scan_hit_ratio']} < {args.min_hit_ratio}")
        if (p["cached_scans"]["p95"] or 0) >= args.cached_p95_ms:
            problems.append(f"cached scans p95 {p['cached_scans']['p95']} ms >= {args.cached_p95_ms}")
    if result["whole_run"]["status_5xx"]:
        problems.append(f"{result['whole_run']['status_5xx']} responses were 5xx")
    if "redis_down" in phases and (phases["redis_down"]["all"]["p95"] or 0) >= args.outage_p95_ms:
        problems.append(
            f"p95 with Redis down {phases['redis_down']['all']['p95']} ms >= {args.outage_p95_ms}"
        )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--spawn-rate", type=float, default=25)
    parser.add_argument("--duration", type=int, default=60, help="seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="events stored per second during the run")
    parser.add_argument("--events", type=int, default=200_000, help="generated events stored before the run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds left out of the steady figures")
    parser.add_argument("--kill-redis-at", type=float, default=None, help="seconds into the run")
    parser.add_argument("--redis-down", type=float, default=20.0, help="seconds Redis stays down")
    parser.add_argument("--hub-log", action="store_true", help="print the end of the hub's log")
    parser.add_argument("--min-hit-ratio", type=float, default=0.70)
    parser.add_argument("--cached-p95-ms", type=float, default=10.0)
    parser.add_argument("--outage-p95-ms", type=float, default=50.0)
    args = parser.parse_args()
    result = run(args)
    report(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"load_cache-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out}")
    problems = check(result, args)
    for p in problems:
        print(f"MISSED: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
