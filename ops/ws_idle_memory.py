"""What an idle, subscribed ``/ws`` connection costs the hub: Python objects by file:line, and RSS.

    .venv/bin/python ops/ws_idle_memory.py --connections 1000

Starts an embedded stack (NATS, PostgreSQL, Redis: :func:`harness.embedded_stack`), then the hub
(``open_hub`` + ``create_app`` + :func:`api.cli.serving.server_config`, one process, as ``tickstock
serve`` builds it) in a child process, twice: once plain, for the RSS delta per connection, and once
under ``tracemalloc``, for the bytes per connection grouped by file:line (tracemalloc's own bookkeeping
would inflate RSS). Each time, 100 connections come and go first (lazy imports, first-use caches), then
``--connections`` open with a token, subscribe and stay idle; the child collects garbage before each
sample. The clients (``websockets``, no compression) run in this process, so none of their memory is
counted. ``--loop``: the hub's event loop (uvloop, as production, or asyncio's own).

    .venv/bin/python ops/ws_idle_memory.py --connections 1000 --churn 5

``--churn``: what connections leave behind once they are gone. Rounds of ``--connections`` opening,
subscribing and all closing; after each, the hub's RSS with no collection forced (the workers collect
the old generation rarely, ``api.cli.serving._tune_gc``), then the objects that only the cyclic
garbage collector frees (reference cycles), per closed connection, by type.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "ops"))

FILTERS: list[dict[str, Any]] = [
    {"symbols": ["AAPL", "NVDA", "TSLA"]},
    {"timeframes": ["1min", "5min"]},
    {"confidence_min": 0.75},
    {},
]
WARMUP = 100
SETTLE_S = 2.0
TOP = 30


# -- the hub (child process) ---------------------------------------------------------------------------


def serve_main(trace: bool, loop_name: str) -> None:
    if trace:
        tracemalloc.start(1)
    from api.cli.serving import _Server, _tune_gc, server_config
    from api.settings import Settings

    settings = Settings.from_env()
    out = sys.stdout

    async def main() -> None:
        from api.app import create_app, open_hub

        loop = asyncio.get_running_loop()
        async with open_hub(settings) as hub:
            app = create_app(settings, hub=hub)
            config = server_config(app, settings, registry=hub.metrics.registry)
            config.host, config.port = "127.0.0.1", settings.port
            server = _Server(config)
            serving = asyncio.ensure_future(server.serve())
            await server.accepting.wait()
            _tune_gc()
            done = asyncio.Event()

            def command(line: str) -> None:
                verb, _, arg = line.strip().partition(" ")
                if verb == "rss":
                    answer(out, {"rss": _rss()})
                elif verb == "cycles":
                    answer(out, _cyclic_garbage())
                elif verb == "snap":
                    gc.collect()
                    if trace:
                        tracemalloc.take_snapshot().dump(arg)
                    answer(
                        out, {"rss": _rss(), "traced": tracemalloc.get_traced_memory()[0] if trace else None}
                    )
                else:
                    server.should_exit = True
                    done.set()

            threading.Thread(target=_commands, args=(sys.stdin, loop, command), daemon=True).start()
            answer(out, {"ready": True, "pid": os.getpid()})
            await done.wait()
            await serving

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _cyclic_garbage() -> dict[str, Any]:
    """Collect, keeping what the collector found unreachable (only it could free those: they are in
    reference cycles, or held by objects that are), and count it by type."""
    from collections import Counter

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return {"collected": found, "kinds": kinds.most_common(TOP), "rss": _rss()}


def _commands(stream: IO[str], loop: asyncio.AbstractEventLoop, handle: Any) -> None:
    for line in stream:
        loop.call_soon_threadsafe(handle, line)
    loop.call_soon_threadsafe(handle, "stop")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def answer(out: IO[str], body: dict[str, Any]) -> None:
    out.write(json.dumps(body) + "\n")
    out.flush()


# -- the clients and the figures (this process) ---------------------------------------------------------


async def open_conns(url: str, tokens: list[str], n: int, *, concurrency: int = 50) -> list[Any]:
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with gate:
            ws = await connect(f"{url}?token={tokens[i % len(tokens)]}", compression=None, max_queue=4)
            await ws.send(json.dumps({"op": "subscribe", "id": "s", "filter": FILTERS[i % len(FILTERS)]}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("op") == "subscribed":
                    return ws
                if frame.get("op") == "error":
                    raise RuntimeError(f"subscribe refused: {frame}")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def close_conns(conns: list[Any]) -> None:
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


class Hub:
    def __init__(self, env: dict[str, str], trace: bool, loop: str) -> None:
        args = [sys.executable, str(Path(__file__).resolve()), "--serve", "--loop", loop]
        self.proc = subprocess.Popen(
            [*args, *(["--trace"] if trace else [])],
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        ready = self.read()
        if not ready.get("ready"):
            raise RuntimeError(f"hub did not start: {ready}")

    def read(self) -> dict[str, Any]:
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"hub exited ({self.proc.wait()})")
        return dict(json.loads(line))

    def ask(self, verb: str) -> dict[str, Any]:
        self.stdin.write(f"{verb}\n")
        self.stdin.flush()
        return self.read()

    def snap(self, path: str = "") -> dict[str, Any]:
        return self.ask(f"snap {path}")

    def stop(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


def measure(
    env: dict[str, str], url: str, tokens: list[str], n: int, *, trace: bool, loop: str
) -> dict[str, Any]:
    import tempfile

    hub = Hub(env, trace, loop)
    try:
        with tempfile.TemporaryDirectory() as tmp:

            async def run() -> dict[str, Any]:
                await close_conns(await open_conns(url, tokens, WARMUP))
                await asyncio.sleep(SETTLE_S)
                before = hub.snap(f"{tmp}/before")
                conns = await open_conns(url, tokens, n)
                await asyncio.sleep(SETTLE_S)
                after = hub.snap(f"{tmp}/after")
                await close_conns(conns)
                return {"before": before, "after": after}

            found = asyncio.run(run())
            result: dict[str, Any] = {"rss_per_conn": (found["after"]["rss"] - found["before"]["rss"]) / n}
            if trace:
                old = tracemalloc.Snapshot.load(f"{tmp}/before")
                new = tracemalloc.Snapshot.load(f"{tmp}/after")
                stats = new.compare_to(old, "lineno")
                result["traced_per_conn"] = sum(s.size_diff for s in stats) / n
                result["top"] = [
                    (
                        f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                        s.size_diff / n,
                        s.count_diff / n,
                    )
                    for s in sorted(stats, key=lambda s: -s.size_diff)[:TOP]
                ]
            return result
    finally:
        hub.stop()


def churn(
    env: dict[str, str], url: str, tokens: list[str], n: int, rounds: int, *, loop: str
) -> dict[str, Any]:
    """``rounds`` times ``n`` connections open, subscribe and all close: the hub's RSS after each
    round (no collection forced), then what is left for the cyclic collector after the last one."""
    hub = Hub(env, False, loop)
    try:

        async def run() -> dict[str, Any]:
            await close_conns(await open_conns(url, tokens, WARMUP))
            await asyncio.sleep(SETTLE_S)
            hub.ask("cycles")  # what start-up and the warm-up left: not counted
            rss = [hub.ask("rss")["rss"]]
            for _ in range(rounds):
                await close_conns(await open_conns(url, tokens, n))
                await asyncio.sleep(SETTLE_S)
                rss.append(hub.ask("rss")["rss"])
            return {"rss": rss, "cycles": hub.ask("cycles")}

        return asyncio.run(run())
    finally:
        hub.stop()


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--rss-runs", type=int, default=1, help="plain runs for the RSS figure (median)")
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run")
    parser.add_argument("--compression", default="off", help="TICKSTOCK_WS_COMPRESSION for the hub")
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead: rounds of --connections opening and all closing; what they leave behind",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.trace, args.loop)
        return 0

    from harness import embedded_stack
    from wsload import raise_fd_limit

    from api.minting import mint_token
    from hub.embedded import free_port

    raise_fd_limit(4 * args.connections + 1024)
    with embedded_stack() as stack:
        port = free_port()
        env = {
            **stack.env(port),
            "TICKSTOCK_WS_MAX_CONNECTIONS": str(args.connections + WARMUP + 100),
            "TICKSTOCK_WS_PING_INTERVAL_S": "600",  # nothing but the connections' idle state is sampled
            "TICKSTOCK_WS_IDLE_TIMEOUT_S": "1200",
            "TICKSTOCK_WS_COMPRESSION": args.compression,
        }
        secret = env["TICKSTOCK_JWT_SECRET"]
        tokens = [
            mint_token(secret, subject=f"idle-{k}", scopes=["patterns:read"], ttl_s=3600) for k in range(50)
        ]
        url = f"ws://127.0.0.1:{port}/ws"
        if args.churn:
            left = churn(env, url, tokens, args.connections, args.churn, loop=args.loop)
            closed = args.connections * args.churn
            cycles = left["cycles"]
            print(
                f"{args.churn} rounds of {args.connections:,} connections opening and all closing, loop {args.loop}"
            )
            print(
                "RSS after each round, no collection forced (MB): "
                + " ".join(f"{r / 2**20:.1f}" for r in left["rss"])
            )
            print(
                f"then {cycles['collected']:,} objects waited for the cyclic collector, "
                f"{cycles['collected'] / closed:.1f} per closed connection (those it collected during the "
                f"rounds not counted); RSS once they were collected {cycles['rss'] / 2**20:.1f} MB; by type, "
                "per closed connection:"
            )
            for kind, count in cycles["kinds"]:
                print(f"  {count / closed:6.2f}  {kind}")
            return 0
        rss = []
        for _ in range(args.rss_runs):
            rss.append(
                measure(env, url, tokens, args.connections, trace=False, loop=args.loop)["rss_per_conn"]
            )
        rss.sort()
        print(f"connections: {args.connections}  loop: {args.loop}  compression: {args.compression}")
        print(
            f"RSS per connection: {rss[len(rss) // 2] / 1024:.1f} KB  (runs: {', '.join(f'{r / 1024:.1f}' for r in rss)})"
        )
        if not args.no_trace:
            traced = measure(env, url, tokens, args.connections, trace=True, loop=args.loop)
            print(f"tracemalloc per connection: {traced['traced_per_conn']:.0f} B")
            for where, size, count in traced["top"]:
                print(f"  {size:8.0f} B  {count:6.2f} blocks  {where}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    if not any(a == "--serve" for a in sys.argv):
        print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
