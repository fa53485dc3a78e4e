"""Both locust scenarios at once, headless: REST dashboard users and websocket dashboard users.

    python ops/load_all.py --duration 60                          # 100 REST + 200 websocket users
    python ops/load_all.py --rest-users 50 --ws-users 500 --event-rate 40 --duration 300
    python ops/load_all.py --host http://127.0.0.1:8000 --duration 60   # a hub that is already running

Starts the stack (embedded, or the servers ``TICKSTOCK_*_URL`` name, or ``--data-dir``), fills it with
``--events`` generated events unless exactly that many are stored, starts one hub (``tickstock serve``)
— unless ``--host`` names a running one — and, for the whole run, publishes ``--event-rate`` events/s
to ingest over NATS (each stamped with ``data.bench_t0``, the publish wall time). Locust runs
``ops/load/locustfile.py`` (REST users, think time 0.5-1.5 s) and ``ops/load/ws_locustfile.py``
(websocket users: each subscribes with a dashboard filter and reports every delivered event with its
ingest→client latency as a ``WS event: <filter>`` request) headless for ``--duration`` seconds. Prints
p50/p95/p99 and failures per request type, per scenario and overall, and the CPU each side used;
writes JSON to ``ops/results/``. Locust, the hub and the servers share this machine's cores.

Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_fanout import publish_ingest  # noqa: E402
from gen_events import ensure_events, open_stack  # noqa: E402
from harness import start_hub  # noqa: E402
from load_rest import cpu_seconds, machine_busy, read_failures, read_stats  # noqa: E402

LOAD = HERE / "load"
RESULTS = HERE / "results"
REST_TYPES = ("GET", "PUT", "POST", "DELETE", "PATCH")


def _summarize(stats: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """Request-weighted totals of one scenario; percentiles from its busiest row set (locust only
    aggregates overall, so per-scenario p50/p95/p99 are the max over its request types, a safe bound)."""
    rows = [s for s in stats if s["name"] != "overall" and ((s["method"] == "WS") == (kind == "ws"))]
    if not rows:
        return None
    requests = sum(r["requests"] for r in rows)
    return {
        "requests": requests,
        "failures": sum(r["failures"] for r in rows),
        "rps": round(sum(r["rps"] for r in rows), 1),
        "p50_weighted": round(sum(r["p50"] * r["requests"] for r in rows) / max(1, requests), 1),
        "p95_max": max(r["p95"] for r in rows),
        "p99_max": max(r["p99"] for r in rows),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with open_stack(args.data_dir) as stack, tempfile.TemporaryDirectory(prefix="tickstock-locust-") as tmp:
        stack.extra_env["TICKSTOCK_STATEMENT_TIMEOUT_MS"] = "120000"
        hub_pid = None
        if args.host:
            host = args.host.rstrip("/")
        else:
            generated = asyncio.run(ensure_events(stack.database_url, args.events, progress=False))
            print(
                generated.line() if generated else f"{args.events:,} generated events already stored",
                flush=True,
            )
            hub, port = start_hub(stack, timeout_s=300)
            hub_pid = hub.pid
            host = f"http://127.0.0.1:{port}"
        prefix = Path(tmp) / "all"
        users = args.rest_users + args.ws_users
        files = ",".join(
            str(f)
            for f, n in (
                (LOAD / "locustfile.py", args.rest_users),
                (LOAD / "ws_locustfile.py", args.ws_users),
            )
            if n
        )
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            files,
            "--headless",
            "-u",
            str(users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{args.duration}s",
            "--host",
            host,
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "5",
            "--loglevel",
            "WARNING",
        ]
        if args.processes:
            command += ["--processes", str(args.processes)]
        env = {
            **os.environ,
            "TICKSTOCK_JWT_SECRET": stack.env(0)["TICKSTOCK_JWT_SECRET"],
            "TICKSTOCK_LOAD_WS_USERS": str(args.ws_users),
        }
        stop_publishing = threading.Event()
        published = {"events": 0}

        def publisher() -> None:
            # In slices, so the run's end stops it within a second.
            start = 0
            while not stop_publishing.is_set() and args.event_rate > 0:
                count = max(1, int(args.event_rate))
                asyncio.run(
                    publish_ingest(stack.nats_url, f"load{int(time.time())}", count, args.event_rate, start)
                )
                start += count
                published["events"] = start

        print(
            f"locust: {args.rest_users} REST + {args.ws_users} websocket users, spawn {args.spawn_rate}/s, "
            f"{args.duration} s against {host}; {args.event_rate:g} events/s into ingest",
            flush=True,
        )
        thread = threading.Thread(target=publisher, daemon=True, name="publisher")
        hub_cpu0 = cpu_seconds(hub_pid) if hub_pid else 0.0
        busy0 = machine_busy()
        children0 = _children_cpu()
        started = time.monotonic()
        thread.start()
        try:
            locust = subprocess.run(
                command,
                env=env,
                cwd=HERE.parent,
                capture_output=True,
                text=True,
                timeout=args.duration + 180,
                check=False,
            )
        finally:
            stop_publishing.set()
            thread.join(10)
        seconds = time.monotonic() - started
        hub_cpu = cpu_seconds(hub_pid) - hub_cpu0 if hub_pid else None
        busy1 = machine_busy()
        if locust.returncode not in (0, 1):
            raise RuntimeError(f"locust exited with {locust.returncode}: {locust.stderr[-3000:]}")
        stats = read_stats(Path(f"{prefix}_stats.csv"))
        failures = read_failures(Path(f"{prefix}_failures.csv"))
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host,
        "rest_users": args.rest_users,
        "ws_users": args.ws_users,
        "event_rate": args.event_rate,
        "events_published": published["events"],
        "duration_s": args.duration,
        "wall_s": round(seconds, 1),
        "cpus": os.cpu_count(),
        "machine_cpu_busy": round(busy, 3),
        "hub_cpu_s": round(hub_cpu, 1) if hub_cpu is not None else None,
        "locust_cpu_s": round(_children_cpu() - children0, 1),
        "stats": stats,
        "failures": failures,
        "rest": _summarize(stats, "rest"),
        "ws": _summarize(stats, "ws"),
    }


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def report(r: dict[str, Any]) -> None:
    print(
        f"\n== locust: {r['rest_users']} REST + {r['ws_users']} websocket users, {r['duration_s']} s, "
        f"{r['event_rate']:g} events/s into ingest ({r['events_published']:,} published); {r['cpus']} cores shared "
        f"by locust, hub, PostgreSQL, NATS and Redis"
    )
    head = f"{'request':<34} {'requests':>9} {'fail':>5} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>7}"
    print(head)
    print("-" * len(head))
    for s in sorted(r["stats"], key=lambda s: (s["name"] == "overall", s["method"] == "WS", s["name"])):
        name = f"{s['method']} {s['name']}" if s["name"] != "overall" else "overall"
        print(
            f"{name[:34]:<34} {s['requests']:>9} {s['failures']:>5} {s['rps']:>8.1f} {s['p50']:>6.0f} "
            f"{s['p95']:>6.0f} {s['p99']:>6.0f} {s['max']:>7.0f}"
        )
    print(
        "(ms; WS event rows: ingest→client latency of each delivered event; locust rounds percentiles to 2 "
        "significant digits above 100 ms)"
    )
    for kind in ("rest", "ws"):
        if r[kind]:
            k = r[kind]
            print(
                f"{kind.upper():>4}: {k['requests']:,} requests, {k['failures']} failures, {k['rps']} req/s, "
                f"p50 {k['p50_weighted']} ms (weighted), worst p95 {k['p95_max']} ms, worst p99 {k['p99_max']} ms"
            )
    hub = f"hub process {r['hub_cpu_s']} s, " if r["hub_cpu_s"] is not None else ""
    print(
        f"CPU: machine {r['machine_cpu_busy'] * 100:.0f}% busy over {r['wall_s']} s; {hub}locust {r['locust_cpu_s']} s"
    )
    for f in r["failures"]:
        print(f"failure: {f['occurrences']} x {f['name']}: {f['error']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rest-users", type=int, default=100)
    parser.add_argument("--ws-users", type=int, default=200)
    parser.add_argument("--spawn-rate", type=float, default=50)
    parser.add_argument("--duration", type=int, default=60, help="seconds")
    parser.add_argument("--event-rate", type=float, default=20.0, help="events/s published to ingest")
    parser.add_argument("--events", type=int, default=200_000, help="generated events stored for the scans")
    parser.add_argument("--processes", type=int, default=0, help="locust worker processes (0: one process)")
    parser.add_argument("--host", default=None, help="a running hub (default: start one)")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.rest_users < 0 or args.ws_users < 0 or args.rest_users + args.ws_users < 1:
        parser.error("at least one user")
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be 1-3600 s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    report(result)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"load_all-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out}")
    failed = sum(s["failures"] for s in result["stats"] if s["name"] == "overall")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
