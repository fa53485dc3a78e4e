"""Ingest benchmark: sustained events/s stored and publish→stored latency, with exactly-once checks.

    python ops/bench_ingest.py                 # 100,000 events, as fast as the publisher can
    python ops/bench_ingest.py --events 20000 --rate 5000

Starts a fresh embedded stack and ``--hubs`` hub processes (``tickstock serve``), publishes with
nats-py (pipelined acks) from this process, waits until every event is stored and on the clean
stream, then checks: each event stored exactly once (count by id), each on the clean stream exactly
once, per-symbol order kept. Publisher, hub, PostgreSQL and NATS share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from harness import (
    connected,
    embedded_stack,
    hub_metrics,
    make_events,
    publish,
    start_hub,
    verify,
    wait_stored,
)


async def bench(events: int, rate: float | None, hubs: int) -> dict[str, object]:
    with embedded_stack() as stack:
        ports = [start_hub(stack)[1] for _ in range(hubs)]
        run = f"bench{int(time.time())}"
        batch = make_events(events, run=run)
        started = time.monotonic()
        async with connected(stack.nats_url) as nc:
            publish_s = await publish(nc, batch, rate=rate)
        await wait_stored(stack.database_url, run, events)
        total_s = time.monotonic() - started
        checks = await verify(stack.database_url, stack.nats_url, run, events)
        ready = await hub_metrics(ports[0])
    return {
        "events": events,
        "hubs": hubs,
        "cpus": os.cpu_count(),
        "publish_seconds": round(publish_s, 2),
        "publish_rate": round(events / publish_s),
        "stored_seconds": round(total_s, 2),
        "sustained_stored_per_s": round(events / total_s),
        **checks,
        "writer_batches_node0": ready["pipeline"]["writer_batches"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--rate", type=float, default=None, help="publish rate (default: as fast as possible)"
    )
    parser.add_argument("--hubs", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(bench(args.events, args.rate, args.hubs))
    print(json.dumps(result, indent=2))
    print(
        f"\n{result['events']:,} events: {result['sustained_stored_per_s']:,} stored/s sustained "
        f"(published at {result['publish_rate']:,}/s); publish→stored latency {result['latency_ms']}; "
        f"exactly once: {result['exactly_once']}; per-symbol order kept: {result['per_symbol_order_kept']}"
    )
    return 0 if result["exactly_once"] and result["per_symbol_order_kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
