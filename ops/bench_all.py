"""The whole benchmark suite behind ``ops/bench``: ingest, fan-out against three baselines, REST scans,
idle-connection memory; one table, one JSON file, one PNG.

    ops/bench --quick        # a few minutes: fewer events and connections
    ops/bench                # the full run (about 25 minutes on 2 cores)
    ops/bench --skip rest --fanout-connections 1000 --servers hub,node
    ops/bench --skip ingest,rest,memory --servers hub,hub-shared,starlette,node --fanout-connections 500
    ops/bench --skip ingest,rest --servers hub,starlette,node --hub-workers 1   # one hub process
    # issue #14's four points in one run (about 20 minutes):
    ops/bench --skip ingest,rest --servers hub,starlette,node --fanout-connections 1000,5000,10000 --hub-filters all --engine c

Sections (each starts its own servers and stops them, so a failure in one does not lose the others):

- ingest (``ops/bench_ingest.py``): sustained events/s stored, as fast as the publisher goes;
  publish→stored latency at a fixed 1,000 events/s;
- fan-out (``ops/bench_fanout.py``): 100, 1,000 and 5,000 connections × 20 messages/s per connection,
  for the hub (mixed filters, or ``--hub-filters all``: everyone gets everything, as issue #14's (2)
  and (3) ask; events through ingest either way) and the baselines: a bare Starlette broadcast
  loop, Socket.IO on Node.js, Flask-SocketIO with its Redis queue; same client, same machine;
- memory: RSS per idle connection at 10,000 connections, hub and baselines;
- REST (``ops/bench_rest.py``'s shapes and client): ``GET /api/patterns/scan`` on 2,000,000 stored
  events, uncached (a hub with ``TICKSTOCK_CACHE_ENABLED=false``) and cached (the same requests to a
  hub with its response cache on; the hit count is shown).

The fan-out and memory hubs run with ``--hub-workers`` processes (``TICKSTOCK_WORKERS``; default the
hub's own, one per core; each hub row names it); their CPU and memory cover the supervisor and every
worker. Each row also counts the connections the server closed by close code (the client never
reopens them), loses only what the kept connections missed, and gives the p99 of the kept connections
and the server's largest RSS during the run (``ops/fanout_report.py`` says what each column is).

Fan-out runs are made with plain clients and with clients that offer permessage-deflate as a browser
does (``--clients``, default both; ``hub-shared`` is the hub with ``TICKSTOCK_WS_COMPRESSION=shared``,
run with deflate clients only); a section prints each server's CPU per delivered message with deflate
clients ÷ with plain ones (issue #14's acceptance: at most 1.1× for the hub's default).

Then a table with each of the hub's fan-out and memory figures as a ratio to the bare loop and to each
peer (latency, deliveries/s, losses, server CPU per delivered message, RSS per connection), written
with everything measured to ``ops/results/bench-<time>.json`` and ``ops/results/bench-<time>.png``.

Client, servers, NATS, PostgreSQL and Redis all share this machine (2 cores on the development
machine): figures are what one box does with its own load generator, and they are noisy when
anything else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_fanout  # noqa: E402
import bench_ingest  # noqa: E402
import bench_rest  # noqa: E402
from fanout_report import LABELS, acceptance_lines, fanout_table, fmt, memory_table  # noqa: E402
from gen_events import ensure_events, open_stack  # noqa: E402
from harness import start_hub, stop_hub  # noqa: E402
from wsload import raise_fd_limit  # noqa: E402

RESULTS = HERE / "results"
SECTIONS = ("ingest", "fanout", "memory", "rest")
PEERS = ("starlette", "node", "flask")
FULL = {
    "ingest_events": 100_000,
    "latency_events": 10_000,
    "connections": [100, 1000, 5000],
    "seconds": 30.0,
    "memory": 10_000,
    "rest_events": 2_000_000,
    "rest_requests": 200,
    "rest_rounds": 2,
}
QUICK = {
    "ingest_events": 20_000,
    "latency_events": 5_000,
    "connections": [100, 1000],
    "seconds": 6.0,
    "memory": 2_000,
    "rest_events": 200_000,
    "rest_requests": 40,
    "rest_rounds": 1,
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "note": "load client, hub, baselines, NATS, PostgreSQL and Redis share this machine's cores",
    }


# -- sections ------------------------------------------------------------------------------------------


def run_ingest(cfg: dict[str, Any]) -> dict[str, Any]:
    print(f"== ingest: {cfg['ingest_events']:,} events as fast as possible", flush=True)
    sustained = asyncio.run(bench_ingest.bench(cfg["ingest_events"], None, 1))
    print(
        f"   {sustained['sustained_stored_per_s']:,} stored/s sustained; exactly once: {sustained['exactly_once']}",
        flush=True,
    )
    print(f"== ingest: {cfg['latency_events']:,} events at 1,000/s (publish→stored latency)", flush=True)
    latency = asyncio.run(bench_ingest.bench(cfg["latency_events"], 1000.0, 1))
    print(f"   publish→stored {latency['latency_ms']}", flush=True)
    return {"sustained": sustained, "at_1000_per_s": latency}


def run_fanout(cfg: dict[str, Any], servers: list[str], *, memory: bool, fanout: bool) -> dict[str, Any]:
    conns = cfg["connections"] if fanout else []
    print(
        f"== fan-out: {', '.join(servers)} at {conns} connections × {cfg['rate']:g} msg/s, {cfg['seconds']:g} s; "
        f"hubs with {cfg.get('hub_workers')} worker(s)"
        + (f"; memory at {cfg['memory']:,} idle connections" if memory else ""),
        flush=True,
    )
    return bench_fanout.run_all(
        servers,
        conns,
        rate=cfg["rate"],
        seconds=cfg["seconds"],
        memory=cfg["memory"] if memory else 0,
        filters=cfg.get("hub_filters", "mixed"),
        processes=None,
        flask_max=cfg["flask_max"],
        clients=tuple(cfg.get("clients", ("plain",))),
        hub_workers=cfg.get("hub_workers"),
        engine=cfg.get("engine", "python"),
    )


def run_rest(cfg: dict[str, Any], data_dir: Path | None) -> dict[str, Any]:
    print(
        f"== REST: {cfg['rest_events']:,} stored events, {cfg['rest_requests']} requests × "
        f"{cfg['rest_rounds']} round(s) per shape, uncached then cached",
        flush=True,
    )

    async def go() -> dict[str, Any]:
        with open_stack(data_dir) as stack:
            stack.extra_env["TICKSTOCK_MAINTENANCE_INTERVAL_S"] = "3600"
            stack.extra_env["TICKSTOCK_STATEMENT_TIMEOUT_MS"] = "120000"
            generated = await ensure_events(stack.database_url, cfg["rest_events"], progress=False)
            print(
                "   "
                + (
                    generated.line()
                    if generated
                    else f"{cfg['rest_events']:,} generated events already stored"
                ),
                flush=True,
            )
            passes: dict[str, Any] = {}
            original = bench_rest.user_headers
            ref = await bench_rest.read_reference(stack.database_url)
            # Uncached: a hub with its response cache off (it does not honour Cache-Control: no-cache, so
            # bench_rest's header alone would measure the cache); cached: the same requests, cache on.
            for name, cache_on in (("uncached", False), ("cached", True)):
                stack.extra_env["TICKSTOCK_CACHE_ENABLED"] = "true" if cache_on else "false"
                hub, port = start_hub(stack, timeout_s=300)
                shapes = bench_rest.shapes(ref)
                if cache_on:
                    bench_rest.user_headers = lambda: [  # type: ignore[assignment]
                        {k: v for k, v in h.items() if k != "Cache-Control"} for h in original()
                    ]
                try:
                    await bench_rest.measure(
                        f"http://127.0.0.1:{port}",
                        shapes,
                        requests=cfg["rest_requests"],
                        warmup=20,
                        rounds=cfg["rest_rounds"],
                        seed=7,
                    )
                finally:
                    bench_rest.user_headers = original  # type: ignore[assignment]
                    stop_hub(hub)
                    stack.hubs.remove(hub)
                passes[name] = [
                    {
                        "shape": s.name,
                        "client_ms": bench_rest.summary(s.client_ms),
                        "query_ms": bench_rest.summary(s.query_ms),
                        "cache_hits": s.cache_hits,
                        "requests": len(s.client_ms),
                    }
                    for s in shapes
                    if not s.explain_only
                ]
            return {"events": cfg["rest_events"], **passes}

    return asyncio.run(go())


# -- report --------------------------------------------------------------------------------------------


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None:
        return "—"
    if theirs == 0:
        return "both 0" if ours == 0 else f"{ours:g} vs 0"
    return f"{ours / theirs:.2f}×"


def _hist(ms: float) -> str:
    """A histogram percentile in ms; the top finite bucket (10 s) means "at least"."""
    return f"≥ {ms:,.0f}" if ms >= 10_000 else f"{ms:g}"


def report(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    say = lines.append
    m = result["machine"]
    say(f"TickStock Hub benchmarks — {result['when']} — {'quick' if result['quick'] else 'full'} run")
    say(
        f"machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
    )
    if result.get("note"):
        say(f"note: {result['note']}")
    say(
        "client and servers share this machine: the load client's CPU is taken from the server it measures;"
        " other work on the box makes every figure noisy."
    )
    ingest = result.get("ingest")
    if ingest:
        s, lat = ingest["sustained"], ingest["at_1000_per_s"]
        say("")
        say("== ingest (one hub process)")
        say(
            f"  {s['events']:,} events: {s['sustained_stored_per_s']:,} stored/s sustained (published at "
            f"{s['publish_rate']:,}/s), exactly once: {s['exactly_once']}, per-symbol order kept: "
            f"{s['per_symbol_order_kept']}"
        )
        lm = lat["latency_ms"] or {}
        say(
            f"  {lat['events']:,} events at 1,000/s: publish→stored p50 {lm.get('p50')} ms, p95 {lm.get('p95')} ms, "
            f"p99 {lm.get('p99')} ms"
        )
    fan = result.get("fanout") or {}
    all_runs = fan.get("fanout", [])
    runs = [r for r in all_runs if r.get("clients", "plain") == "plain"]
    if all_runs:
        say("")
        say(
            "== fan-out: 20 messages/s per connection (hub: "
            + (
                "everyone subscribed to everything, events published to ingest at 20/s"
                if (result.get("config") or {}).get("hub_filters") == "all"
                else "mixed filters over events published to ingest at 32/s, so 20/s per connection on average"
            )
            + "; baselines: broadcast)"
        )
        for line in fanout_table(all_runs, fan.get("skipped", [])):
            say(line)
        hubs = [r for r in runs if r["server"] == "hub"]
        if any(h.get("hub_stored_to_sent_ms") for h in hubs):
            say(
                "  hub's own stored→sent histogram (/metrics, during each measured run): "
                + "; ".join(
                    f"{h['connections']:,}: p50 {_hist(h['hub_stored_to_sent_ms']['p50'])} p99 "
                    f"{_hist(h['hub_stored_to_sent_ms']['p99'])} ms"
                    for h in hubs
                    if h.get("hub_stored_to_sent_ms")
                )
            )
        helper = [h for h in hubs if h["helper_cpu_s"]]
        if helper:
            say(
                "  hub pipeline besides the hub's processes (NATS, PostgreSQL, Redis), CPU µs per delivered message: "
                + ", ".join(f"{h['connections']:,}: {h['helper_cpu_us_per_msg']}" for h in helper)
            )
        peers = [p for p in PEERS if any(r["server"] == p for r in runs)]
        if hubs and peers:
            say("")
            say(
                "== the hub as a ratio to each peer (hub ÷ peer: below 1× the hub is lower: better for latency, CPU"
                " and losses; for deliveries/s above 1× is better)"
            )
            head = f"  {'conns':>6} {'figure':<22}" + "".join(f" {('÷ ' + p):>12}" for p in peers)
            say(head)
            say("  " + "-" * (len(head) - 2))
            for h in sorted(hubs, key=lambda r: r["connections"]):
                by_peer = {
                    p: next(
                        (r for r in runs if r["server"] == p and r["connections"] == h["connections"]), None
                    )
                    for p in peers
                }
                figures = [
                    ("p50 latency", lambda r: r["latency_ms"].get("p50")),
                    ("p95 latency", lambda r: r["latency_ms"].get("p95")),
                    ("p99 latency", lambda r: r["latency_ms"].get("p99")),
                    ("p99 latency, kept", lambda r: (r.get("latency_ms_kept") or {}).get("p99")),
                    ("deliveries/s", lambda r: r["deliveries_per_s"]),
                    ("lost messages", lambda r: r["lost"]),
                    ("server CPU µs/msg", lambda r: r["server_cpu_us_per_msg"]),
                    ("server RSS max", lambda r: r.get("rss_max_mb")),
                ]
                for name, get in figures:
                    say(
                        f"  {h['connections']:>6,} {name:<22}"
                        + "".join(
                            f" {_ratio(get(h), get(by_peer[p]) if by_peer[p] else None):>12}" for p in peers
                        )
                    )
    deflate_rows = fan.get("deflate_ratios") or []
    if deflate_rows:
        say("")
        say(
            "== clients that offer permessage-deflate as a browser does: server CPU µs per delivered message, "
            "deflate clients ÷ plain clients, same run (hub, shared deflate: ÷ the hub with plain clients; "
            "acceptance: the hub's default ≤ 1.1×)"
        )
        for row in sorted(deflate_rows, key=lambda x: (x["connections"], list(LABELS).index(x["server"]))):
            say(
                f"  {LABELS[row['server']]:<28} {row['connections']:>6,}: plain {fmt(row['plain_cpu_us_per_msg'])} µs, "
                f"deflate clients {fmt(row['deflate_cpu_us_per_msg'])} µs: {fmt(row['ratio'], 2)}×; "
                f"{row['negotiated']:,}/{row['ready']:,} negotiated; bytes received "
                f"{fmt(row['bytes_ratio'], 2)}× plain"
            )
    sio_rows = fan.get("socketio") or []
    if sio_rows:
        say("")
        say(
            "== the hub's Socket.IO endpoint (/socket.io/) as a ratio to its /ws and to Socket.IO on Node.js, "
            "same run (below 1×: lower, better; the aim is within 1.5× of /ws)"
        )
        for row in sio_rows:
            say(
                f"  {row['connections']:>6,} lost {row['lost']}; server CPU µs/msg "
                f"{fmt(row['cpu_us_per_msg_vs_hub'])}× /ws, {fmt(row['cpu_us_per_msg_vs_node'])}× Node; "
                f"p99 {fmt(row['p99_ms_vs_hub'])}× /ws, {fmt(row['p99_ms_vs_node'])}× Node"
            )
    mem = fan.get("memory", [])
    if mem:
        say("")
        say("== memory: RSS per idle connection")
        for line in memory_table(mem):
            say(line)
    checks = acceptance_lines(all_runs, mem)
    if checks:
        say("")
        say("== issue #14 acceptance figures")
        for line in checks:
            say(line)
    if fan.get("errors"):
        for name, err in fan["errors"].items():
            say(f"  {name}: FAILED: {err.splitlines()[0][:300]}")
    rest = result.get("rest")
    if rest:
        say("")
        say(
            f"== REST: GET /api/patterns/scan on {rest['events']:,} stored events, client-side ms (sequential "
            "requests; uncached: a hub with TICKSTOCK_CACHE_ENABLED=false)"
        )
        head = (
            f"  {'shape':<40} {'uncached p50':>12} {'p95':>7} {'p99':>7} {'hits':>5} | {'cached p50':>10} "
            f"{'p95':>7} {'p99':>7} {'hits':>9}"
        )
        say(head)
        say("  " + "-" * (len(head) - 2))
        cached = {s["shape"]: s for s in rest.get("cached", [])}
        for s in rest.get("uncached", []):
            c = cached.get(s["shape"])
            u = s["client_ms"]
            cm = c["client_ms"] if c else {}
            say(
                f"  {s['shape']:<40} {u['p50']:>12.2f} {u['p95']:>7.2f} {u['p99']:>7.2f} {s['cache_hits']:>5} | "
                f"{cm.get('p50', 0):>10.2f} {cm.get('p95', 0):>7.2f} {cm.get('p99', 0):>7.2f} "
                f"{(str(c['cache_hits']) + '/' + str(c['requests'])) if c else '—':>9}"
            )
    for section, err in result.get("errors", {}).items():
        say(f"{section}: FAILED: {err.splitlines()[-1][:300]}")
    return lines


def _key(r: dict[str, Any]) -> tuple[str, str]:
    return r["server"], r.get("clients", "plain")


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'matplotlib>=3.8', or the ops extra)")
        return False
    fan = result.get("fanout") or {}
    runs = fan.get("fanout", [])
    mem = fan.get("memory", [])
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    servers = [(s, c) for s in LABELS for c in ("plain", "deflate") if any(_key(r) == (s, c) for r in runs)]
    panels = [
        (axes[0][0], "p99 latency (ms)", lambda r: r["latency_ms"].get("p99")),
        (axes[0][1], "deliveries/s", lambda r: r["deliveries_per_s"]),
        (axes[1][0], "server CPU per delivered message (µs)", lambda r: r["server_cpu_us_per_msg"]),
    ]
    for ax, title, get in panels:
        for s, c in servers:
            points = sorted((r["connections"], get(r), r["lost_pct"]) for r in runs if _key(r) == (s, c))
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            name = LABELS[s] + (" · deflate clients" if c == "deflate" else "")
            ax.plot(
                xs,
                ys,
                marker="o",
                label=name,
                linewidth=2.5 if s == "hub" else 1.5,
                linestyle="--" if c == "deflate" else "-",
            )
            for x, y, lost in points:
                if lost and y is not None:
                    ax.annotate(
                        f"{lost:.0f}% lost", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
                    )
        ax.set_xscale("log")
        ax.set_xlabel("connections (20 msg/s each)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if "latency" in title or "CPU" in title:
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    ax = axes[1][1]
    mem = [x for x in mem if x["rss_per_conn_kb"] is not None]
    if mem:
        names = [x["server"] for x in sorted(mem, key=lambda x: list(LABELS).index(x["server"]))]
        values = [next(x["rss_per_conn_kb"] for x in mem if x["server"] == n) for n in names]
        counts = {x["server"]: x["connections"] for x in mem}
        bars = ax.bar(
            [f"{LABELS[n]}\n({counts[n]:,} idle)" for n in names],
            values,
            color=[f"C{list(LABELS).index(n)}" for n in names],
        )
        ax.bar_label(bars, fmt="%.1f")
        ax.set_title("RSS per idle connection (KB)")
        ax.tick_params(axis="x", labelsize=8)
    else:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(
        f"TickStock Hub fan-out vs baselines — {m['cpus']} cores shared by client and servers — "
        f"{result['when']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer events and connections: a few minutes")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {', '.join(SECTIONS)}")
    parser.add_argument(
        "--servers",
        default=",".join(bench_fanout.SERVERS),
        help="fan-out and memory servers (hub, hub-shared, hub-sio, starlette, node, flask)",
    )
    parser.add_argument(
        "--clients",
        default="plain,deflate",
        help="fan-out client kinds: plain, deflate (offer permessage-deflate as a browser does)",
    )
    parser.add_argument(
        "--fanout-connections", default=None, help="comma-separated (default: 100,1000,5000; quick: 100,1000)"
    )
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per fan-out run")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per connection")
    parser.add_argument("--memory-connections", type=int, default=None, help="default 10,000 (quick: 2,000)")
    parser.add_argument("--rest-events", type=int, default=None, help="default 2,000,000 (quick: 200,000)")
    parser.add_argument(
        "--flask-max-connections",
        type=int,
        default=bench_fanout.FLASK_MAX_CONNECTIONS,
        help="fan-out runs of Flask-SocketIO above this are skipped (its threads swamp the machine)",
    )
    parser.add_argument(
        "--hub-filters",
        choices=("mixed", "all"),
        default="mixed",
        help="the hub's subscriptions: mixed filters, or everyone gets everything (issue #14's (2) and (3))",
    )
    bench_fanout.add_hub_workers(parser)
    bench_fanout.add_engine(parser)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the REST section's embedded servers (and generated events) here between runs",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="print the table and plot again from a saved ops/results/bench-*.json",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every server started so far is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cfg = dict(
        QUICK if args.quick else FULL,
        rate=args.rate,
        flask_max=args.flask_max_connections,
        clients=bench_fanout.parse_clients(args.clients, parser),
        hub_workers=args.hub_workers,
        engine=args.engine,
        hub_filters=args.hub_filters,
    )
    if args.fanout_connections is not None:
        cfg["connections"] = [int(c) for c in args.fanout_connections.split(",") if c]
    if args.seconds is not None:
        cfg["seconds"] = args.seconds
    if args.memory_connections is not None:
        cfg["memory"] = args.memory_connections
    if args.rest_events is not None:
        cfg["rest_events"] = args.rest_events
    if args.report:
        result = json.loads(args.report.read_text())
        return finish(result, args.report.with_suffix(""))
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(skip - set(SECTIONS))}")
    servers = [s for s in args.servers.split(",") if s]
    raise_fd_limit()
    started = time.monotonic()
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "config": cfg,
        "machine": machine(),
        "errors": {},
    }
    steps = [
        ("ingest", lambda: run_ingest(cfg)),
        (
            "fanout",
            lambda: run_fanout(cfg, servers, memory="memory" not in skip, fanout="fanout" not in skip),
        ),
        ("rest", lambda: run_rest(cfg, args.data_dir)),
    ]
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    for name, step in steps:
        if name in skip or (name == "fanout" and {"fanout", "memory"} <= skip):
            continue
        try:
            result[name] = step()
        except Exception:
            result["errors"][name] = traceback.format_exc()
            print(f"{name}: FAILED\n{result['errors'][name]}", flush=True)
        # Saved after every section, so nothing measured is lost if a later one (or the report) fails.
        base.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    result["seconds"] = round(time.monotonic() - started)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    return finish(result, base)


def finish(result: dict[str, Any], base: Path) -> int:
    """Print the report, write ``base``.json (with the report's lines) and ``base``.png."""
    lines = report(result)
    print("\n" + "\n".join(lines))
    out = base.with_suffix(".json")
    out.write_text(json.dumps({**result, "report": lines}, indent=2, default=str))
    png = base.with_suffix(".png")
    wrote_png = plot(result, png)
    print(f"\nwritten: {out}" + (f", {png}" if wrote_png else "") + f" ({result.get('seconds', '?')} s)")
    fan_errors = (result.get("fanout") or {}).get("errors")
    return 1 if result["errors"] or fan_errors else 0


if __name__ == "__main__":
    sys.exit(main())
