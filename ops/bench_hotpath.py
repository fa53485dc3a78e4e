"""REST throughput of the hub's hot paths against a bare Starlette endpoint, in one run (issue 19).

    python ops/bench_hotpath.py                          # fresh embedded stack, 3 rounds of 10 s per endpoint
    python ops/bench_hotpath.py --rounds 1 --seconds 5 --profile 10
    python ops/bench_hotpath.py --workers 2              # hub and bare endpoint on two processes each
    python ops/bench_hotpath.py --data-dir /tmp/tickstock-hot   # keep the servers (and generated events)
    git archive main | tar -x -C /tmp/main && python ops/bench_hotpath.py --before /tmp/main   # before/after

Starts, on this machine: a bare Starlette JSON endpoint (``ops/baselines/bare_json.py``, ~1.2 KB body,
the same uvicorn stack), and one hub (``tickstock serve``) over ``--events`` generated events with the
demo feed publishing ``--feed-rate`` events/s, authentication on (every request carries one HS256
token), the per-token rate limit on and enforced but set above what the load reaches
(``--rate-limit``/s, burst twice that), and the response cache on. Then, per round, ``wrk -t2 -c64``
for ``--seconds`` (after ``--warmup`` seconds) on each endpoint in turn:

- ``bare``: ``GET /json`` on the baseline;
- ``cached scan``: ``GET /api/patterns/scan?limit=50``;
- ``universes``: ``GET /api/universes``;
- ``definitions``: ``GET /api/patterns/definitions``;
- ``uncached scan``: ``GET /api/patterns/scan?universe=sp500&limit=50&confidence_min=<unique>``, a new
  ``confidence_min`` on every request, so every one misses the cache and reaches PostgreSQL.

Prints req/s, p50/p99 latency, non-2xx answers, the server's CPU per request and each endpoint's ratio to
the bare endpoint's req/s in the same round; then min/max over the rounds (the noise). The hub's answers
are larger than 1.2 KB (a scan page of 50 events is about 20 KB), so each round also measures the bare
endpoint with a pre-encoded body of each hub answer's size (``bare NN KB``), and prints the ratio to that
too: it separates what the hub's own work costs from what moving the bytes costs wrk and the kernel. Client, hub,
PostgreSQL, Redis and NATS share this machine's cores. ``--profile S`` then samples the hub with
py-spy (``pip install py-spy``; it is in the ``ops`` extra) for S seconds under the cached-scan load and
prints where its CPU goes, by area and by function. Needs ``wrk`` (Debian: ``apt-get install wrk``).
Results go to ``ops/results/bench_hotpath-<time>.json``; exit status 1 when a target is missed in the
median round (cached scan ≥ 0.4× bare with p99 < 15 ms; universes and definitions ≥ 0.6×).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil
from gen_events import ensure_events, open_stack
from harness import ROOT, Stack, start_hub, stop_hub

from api.auth import mint_token
from hub.embedded import free_port

OPS_SECRET = "ops-only-secret-not-for-production-0123456789"
RESULTS = Path(__file__).resolve().parent / "results"
BARE = Path(__file__).resolve().parent / "baselines" / "bare_json.py"
TARGETS = {"cached scan": (0.4, 15.0), "universes": (0.6, None), "definitions": (0.6, None)}
# Every request a new confidence_min (thread id and a counter): a new cache key, so a miss.
UNCACHED_LUA = """
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
function init(args)
  counter = 0
end
function request()
  counter = counter + 1
  return wrk.format(nil, string.format(
    "/api/patterns/scan?universe=sp500&limit=50&confidence_min=0.5%d%08d", id, counter))
end
"""
ENDPOINTS: list[tuple[str, str]] = [
    ("bare", "/json"),
    ("cached scan", "/api/patterns/scan?limit=50"),
    ("universes", "/api/universes"),
    ("definitions", "/api/patterns/definitions"),
    ("uncached scan", "/api/patterns/scan"),
]
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class Measured:
    endpoint: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu_us_per_request: float | None


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT[unit]


def parse_wrk(endpoint: str, output: str, cpu_s: float | None) -> Measured:
    """The figures of one ``wrk --latency`` run."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return Measured(
        endpoint=endpoint,
        requests_per_s=rps,
        p50_ms=round(p50, 3),
        p99_ms=round(p99, 3),
        requests=total,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        cpu_us_per_request=None if cpu_s is None or not total else round(cpu_s / total * 1e6, 1),
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (a ``--workers`` server's processes)."""
    process = psutil.Process(pid)
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wrk(url: str, *, seconds: float, headers: dict[str, str], script: Path | None = None) -> str:
    command = ["wrk", "-t2", "-c64", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    return subprocess.run(
        [*command, url], check=True, capture_output=True, text=True, timeout=seconds + 30
    ).stdout


def start_bare(workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BARE), "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the bare endpoint did not come up")


def start_feed(stack: Stack, rate: float) -> subprocess.Popen[bytes] | None:
    if rate <= 0:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "demo-feed", "--rate", str(rate)],
        env=stack.env(0),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cache_counts(base: str) -> dict[str, dict[str, int]]:
    """The cache's counts per route from ``/health/ready`` (nothing when the hub does not answer in time)."""
    try:
        routes = httpx.get(f"{base}/health/ready", timeout=30).json().get("cache", {}).get("routes", {})
    except httpx.HTTPError as exc:
        print(f"    (no cache counts: {exc!r})", flush=True)
        return {}
    return {
        route: {k: int(v) for k, v in counts.items() if k in ("hit", "miss", "coalesced", "bypass")}
        for route, counts in routes.items()
    }


def check_limits(base: str, headers: dict[str, str]) -> dict[str, Any]:
    """What one request shows of the limit and the cache (the limit must be on: a RateLimit-Limit)."""
    response = httpx.get(f"{base}/api/patterns/scan?limit=50", headers=headers, timeout=10)
    response.raise_for_status()
    if "RateLimit-Limit" not in response.headers:
        raise RuntimeError("the hub answered without RateLimit-Limit: the rate limit is off")
    return {
        "ratelimit_limit": response.headers["RateLimit-Limit"],
        "body_bytes": len(response.content),
        "x_cache": response.headers.get("X-Cache"),
    }


def body_sizes(hub: str, headers: dict[str, str]) -> dict[str, int]:
    """The body size of each cached hub answer the rounds measure."""
    return {
        name: len(httpx.get(hub + path, headers=headers, timeout=10).content)
        for name, path in ENDPOINTS
        if name not in ("bare", "uncached scan")
    }


def sized_name(size: int) -> str:
    return f"bare {size / 1024:.0f} KB"


def measure_round(
    servers: dict[str, tuple[str, int]],
    headers: dict[str, str],
    args: argparse.Namespace,
    lua: Path,
    sizes: dict[str, int],
) -> list[Measured]:
    found = []
    plan = [(name, "bare" if name == "bare" else "hub", path) for name, path in ENDPOINTS]
    plan += [(sized_name(size), "bare", f"/json/{size}") for size in sorted(set(sizes.values()))]
    for name, server, path in plan:
        base, pid = servers[server]
        script = lua if name == "uncached scan" else None
        if args.warmup > 0:
            wrk(base + path, seconds=args.warmup, headers=headers, script=script)
        cpu_before = cpu_seconds(pid)
        output = wrk(base + path, seconds=args.seconds, headers=headers, script=script)
        found.append(parse_wrk(name, output, cpu_seconds(pid) - cpu_before))
        m = found[-1]
        print(
            f"    {name:<14} {m.requests_per_s:>9,.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms"
            f"  non-2xx {m.non_2xx}",
            flush=True,
        )
    return found


# -- the profile --------------------------------------------------------------------------------------

AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("token verification (joserfc, cryptography)", ("joserfc", "cryptography", "api/auth.py:verify")),
    ("rate limiter", ("api/ratelimit.py",)),
    ("redis client", ("redis/",)),
    ("response cache", ("store/cache.py", "api/cache.py", "api/etags.py", "api/hot.py")),
    ("query validation (pydantic)", ("pydantic", "api/validation.py")),
    ("postgres (psycopg)", ("psycopg",)),
    ("JSON", ("json/",)),
    ("starlette routing, requests, responses", ("starlette/",)),
    ("uvicorn, httptools", ("uvicorn/", "httptools")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
]


def _area(stack: list[str]) -> str:
    """The innermost frame's area, looking outwards: the first frame (from the leaf) that belongs to one."""
    for frame in reversed(stack):
        for area, needles in AREAS:
            if any(n in frame for n in needles):
                return area
    return "other"


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Areas and functions of py-spy's collapsed stacks (``--format raw``), as shares of busy samples
    (samples whose leaf is not the event loop waiting for I/O)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    idle = busy = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        leaf = frames[-1]
        if re.search(r"\b(select|poll|epoll_wait|run_forever|_run_once)\b", leaf) and "uvloop" not in leaf:
            idle += count
            continue
        busy += count
        self_time[_short(leaf)] += count
        for frame in set(map(_short, frames)):
            inclusive[frame] += count
        areas[_area(frames)] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / busy, 1)) for k, v in counter.most_common(top)] if busy else []

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "areas": share(areas),
        "self": share(self_time),
        "inclusive": share(inclusive),
    }


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``."""
    match = re.fullmatch(r"(.*) \((.*?):\d+\)", frame)
    if not match:
        return frame
    name, path = match.groups()
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def profile(
    hub: str, hub_pid: int, headers: dict[str, str], seconds: float, path: str = "/api/patterns/scan?limit=50"
) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp:
        out = Path(tmp) / "profile.txt"
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(hub_pid),
                "-d",
                str(int(seconds)),
                "-r",
                "250",
                "--nonblocking",
                "--subprocesses",  # with --workers the hub's pid is the supervisor's; its workers serve
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1)  # py-spy attaches
        before = cpu_seconds(hub_pid)
        output = wrk(hub + path, seconds=seconds, headers=headers)
        cpu = cpu_seconds(hub_pid) - before
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        found = summarize_profile(out.read_text())
    found["load"] = asdict(parse_wrk(f"{path} (profiled)", output, cpu))
    return found


def print_profile(found: dict[str, Any]) -> None:
    load = found["load"]
    print(
        f"\n== where the hub's CPU goes under {load['endpoint'].removesuffix(' (profiled)')} ({load['requests_per_s']:,.0f} req/s while "
        f"sampled, {load['cpu_us_per_request']} µs CPU per request; {found['busy_samples']} busy samples)"
    )
    print("  by area (innermost frame that belongs to one):")
    for name, pct in found["areas"]:
        print(f"    {pct:5.1f} %  {name}")
    print("  by function, inclusive:")
    for name, pct in found["inclusive"][:20]:
        print(f"    {pct:5.1f} %  {name}")
    print("  by function, self:")
    for name, pct in found["self"][:15]:
        print(f"    {pct:5.1f} %  {name}")


# -- the run ------------------------------------------------------------------------------------------


def table(rounds: list[list[Measured]], sizes: dict[str, int]) -> list[dict[str, Any]]:
    """One row per endpoint and round, with its ratios to the bare endpoints of the same round."""
    rows = []
    for index, measured in enumerate(rounds, 1):
        by_name = {m.endpoint: m.requests_per_s for m in measured}
        for m in measured:
            same = by_name.get(sized_name(sizes[m.endpoint])) if m.endpoint in sizes else None
            rows.append(
                {
                    "round": index,
                    **asdict(m),
                    "ratio_to_bare": round(m.requests_per_s / by_name["bare"], 3),
                    "ratio_to_same_size_bare": round(m.requests_per_s / same, 3) if same else None,
                }
            )
    return rows


def report(rows: list[dict[str, Any]], setup: dict[str, Any], *, targets: bool = True) -> bool:
    print(
        f"\n== REST throughput, wrk -t2 -c64, {setup['seconds']:g} s per endpoint after {setup['warmup']:g} s warm-up;"
        f" {setup['cpus']} cores shared by wrk, hub, bare endpoint, PostgreSQL, Redis, NATS;"
        f" hub and bare endpoint on {setup.get('workers', 1)} process(es) each (--workers)"
    )
    print(
        f"   hub: auth on (one HS256 token), rate limit {setup['rate_limit']}/s (enforced: RateLimit-Limit "
        f"{setup['limits']['ratelimit_limit']}), cache on, {setup['events']:,} events, demo feed {setup['feed_rate']:g}/s"
    )
    head = (
        f"{'round':>5} {'endpoint':<14} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'× bare':>7}"
        f" {'× same size':>11} {'CPU µs/req':>10} {'non-2xx':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu = "" if r["cpu_us_per_request"] is None else f"{r['cpu_us_per_request']:.0f}"
        same = "" if r["ratio_to_same_size_bare"] is None else f"{r['ratio_to_same_size_bare']:.3f}"
        print(
            f"{r['round']:>5} {r['endpoint']:<14} {r['requests_per_s']:>9,.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
            f" {r['ratio_to_bare']:>7.3f} {same:>11} {cpu:>10} {r['non_2xx']:>8}"
        )
    ok = True
    rounds = max(r["round"] for r in rows)
    print(f"\n== over {rounds} round(s): median [min – max]")
    for name in dict.fromkeys(r["endpoint"] for r in rows):
        mine = [r for r in rows if r["endpoint"] == name]
        rps = [r["requests_per_s"] for r in mine]
        ratio = [r["ratio_to_bare"] for r in mine]
        p99 = [r["p99_ms"] for r in mine]
        verdict = ""
        if targets and name in TARGETS:
            want_ratio, want_p99 = TARGETS[name]
            met = statistics.median(ratio) >= want_ratio and (
                want_p99 is None or statistics.median(p99) < want_p99
            )
            ok &= met
            verdict = f"  target ≥ {want_ratio}×" + (f", p99 < {want_p99:g} ms" if want_p99 else "")
            verdict += ": met" if met else ": MISSED"
        same = [r["ratio_to_same_size_bare"] for r in mine if r["ratio_to_same_size_bare"] is not None]
        print(
            f"  {name:<14} {statistics.median(rps):>9,.0f} req/s [{min(rps):,.0f} – {max(rps):,.0f}]"
            f"  × bare {statistics.median(ratio):.3f} [{min(ratio):.3f} – {max(ratio):.3f}]"
            + (f"  × same size {statistics.median(same):.3f}" if same else "")
            + f"  p99 {statistics.median(p99):.2f} ms [{min(p99):.2f} – {max(p99):.2f}]{verdict}"
        )
    errors = sum(r["non_2xx"] + r["socket_errors"] for r in rows)
    if errors:
        print(f"  {errors} non-2xx answers or socket errors: see the table")
    return ok


def start_hub_in(stack: Stack, root: Path, timeout_s: float = 60) -> tuple[subprocess.Popen[bytes], int]:
    """``tickstock serve`` from the source tree at ``root`` (``--before``: the code before a change)."""
    if root == ROOT:
        return start_hub(stack)
    port = free_port()
    env = {**stack.env(port), "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.hubs.append(proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the hub from {root} exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the hub from {root} did not become ready")


def wait_for_workers(base: str, workers: int, timeout_s: float = 60) -> None:
    """Until every worker answers (``X-TickStock-Worker``), each request on a new connection."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} answered")
        worker = httpx.get(f"{base}/health", timeout=2).headers.get("x-tickstock-worker")
        if worker is not None:
            seen.add(worker.split()[0])


def run_phase(
    stack: Stack,
    root: Path,
    bare: tuple[str, int],
    headers: dict[str, str],
    args: argparse.Namespace,
    lua: Path,
    sized: bool,
) -> dict[str, Any]:
    """One hub (from ``root``) measured for ``args.rounds`` rounds (with the bare endpoint in each), then
    profiled; the hub is stopped at the end."""
    hub_proc, hub_port = start_hub_in(stack, root)
    feed = start_feed(stack, args.feed_rate)
    try:
        hub = f"http://127.0.0.1:{hub_port}"
        if args.workers > 1:
            wait_for_workers(hub, args.workers)
        limits = check_limits(hub, headers)
        sizes = body_sizes(hub, headers) if sized else {}
        servers = {"bare": bare, "hub": (hub, hub_proc.pid)}
        rounds = []
        for index in range(1, args.rounds + 1):
            print(f"  round {index}", flush=True)
            before = cache_counts(hub)
            rounds.append(measure_round(servers, headers, args, lua, sizes))
            after = cache_counts(hub)
            print(
                "    cache:",
                {
                    route: {k: v - before.get(route, {}).get(k, 0) for k, v in counts.items()}
                    for route, counts in after.items()
                    if counts != before.get(route)
                },
                flush=True,
            )
        found = profile(hub, hub_proc.pid, headers, args.profile, args.profile_path) if args.profile else None
    finally:
        if feed is not None:
            stop_hub(feed)
        stop_hub(hub_proc)
    return {"rows": table(rounds, sizes), "profile": found, "limits": limits, "body_bytes": sizes}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    with open_stack(args.data_dir) as stack, tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp:
        lua = Path(tmp) / "uncached.lua"
        lua.write_text(UNCACHED_LUA)
        stack.extra_env.update(
            {
                "TICKSTOCK_MAINTENANCE_INTERVAL_S": "3600",
                "TICKSTOCK_RATE_LIMIT_PER_S": str(args.rate_limit),
                "TICKSTOCK_RATE_LIMIT_BURST": str(args.rate_limit * 2),
                "TICKSTOCK_CACHE_ENABLED": "true",
                "TICKSTOCK_STATEMENT_TIMEOUT_MS": "60000",
                "TICKSTOCK_WORKERS": str(args.workers),
                **dict(item.split("=", 1) for item in args.hub_env),
            }
        )
        generated = asyncio.run(ensure_events(stack.database_url, args.events))
        print(generated.line() if generated else f"{args.events:,} generated events already stored")
        bare_proc, bare_port = start_bare(args.workers)
        token = mint_token(OPS_SECRET, subject="bench-hotpath", scopes=["patterns:read"], ttl_s=7200)
        headers = {"Authorization": f"Bearer {token}"}
        bare = (f"http://127.0.0.1:{bare_port}", bare_proc.pid)
        phases: dict[str, Any] = {}
        try:
            if args.before is not None:
                print(f"== before: the hub from {args.before}", flush=True)
                phases["before"] = run_phase(stack, args.before, bare, headers, args, lua, sized=False)
                print("== after: the hub from this tree", flush=True)
            phases["after"] = run_phase(stack, ROOT, bare, headers, args, lua, sized=True)
        finally:
            stop_hub(bare_proc)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "cpus": os.cpu_count(),
            "seconds": args.seconds,
            "warmup": args.warmup,
            "events": args.events,
            "feed_rate": args.feed_rate,
            "rate_limit": args.rate_limit,
            "limits": phases["after"]["limits"],
            "body_bytes": phases["after"]["body_bytes"],
            "hub_env": args.hub_env,
            "workers": args.workers,
            "before": str(args.before) if args.before else None,
        },
        "phases": phases,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per endpoint and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--events", type=int, default=100_000, help="generated events in the store")
    parser.add_argument("--feed-rate", type=float, default=2.0, help="demo feed events/s (0: no feed)")
    parser.add_argument("--rate-limit", type=int, default=100_000, help="the token's limit per second")
    parser.add_argument("--profile", type=float, default=0.0, help="seconds of py-spy under cached-scan load")
    parser.add_argument(
        "--profile-path", default="/api/patterns/scan?limit=50", help="the path --profile loads"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the hub (`tickstock serve --workers`) and, for a fair ratio, the bare endpoint",
    )
    parser.add_argument("--hub-env", action="append", default=[], help="NAME=value for the hub (repeatable)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep embedded servers here between runs")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a source tree of the hub before the change (e.g. `git archive main`): measured first, same run",
    )
    args = parser.parse_args()
    result = bench(args)
    ok = True
    for name, phase in result["phases"].items():
        if len(result["phases"]) > 1:
            print(f"\n######## {name}")
        ok = report(phase["rows"], result["setup"], targets=name == "after")
        if phase["profile"]:
            print_profile(phase["profile"])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_hotpath-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
