"""Partitioned ingest on several hub nodes: stored events/s beside one node's, and the per-symbol order.

    python ops/bench_partitions.py                            # 3 nodes and 1 node, 100,000 events, 500 symbols
    python ops/bench_partitions.py --events 20000 --nodes 3   # a short run
    python ops/bench_partitions.py --partitions 0             # the old layout: one consumer shared by all

For each node count (1, then ``--nodes``) it starts a fresh embedded stack (NATS, PostgreSQL, Redis) and
that many ``tickstock serve`` processes with ``TICKSTOCK_INGEST_PARTITIONS`` set, publishes the events
(``i`` rising per symbol, pipelined acks) from this process, waits until every one is stored and on the
clean stream, and checks: each stored once, each on the clean stream once, the per-symbol order (an
inversion is an event of a symbol after one of the same symbol published later). Everything shares
this machine's cores, so the figures say what the nodes cost each other here, not what more machines give.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

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

SYMBOL_COUNT = 500


async def run(events: int, nodes: int, partitions: int) -> dict[str, Any]:
    """One run on a fresh stack: ``nodes`` hub processes, ``events`` events over 500 symbols."""
    symbols = [f"S{k:03d}" for k in range(SYMBOL_COUNT)]
    with embedded_stack() as stack:
        stack.extra_env["TICKSTOCK_INGEST_PARTITIONS"] = str(partitions)
        ports = [start_hub(stack)[1] for _ in range(nodes)]
        name = f"part{nodes}n{int(time.time())}"
        batch = make_events(events, run=name, symbols=symbols)
        started = time.monotonic()
        async with connected(stack.nats_url) as nc:
            publish_s = await publish(nc, batch, stamp=True)
        await wait_stored(stack.database_url, name, events)
        total_s = time.monotonic() - started
        checks = await verify(stack.database_url, stack.nats_url, name, events)
        batches = [(await hub_metrics(port))["pipeline"]["writer_batches"] for port in ports]
    return {
        "nodes": nodes,
        "partitions": partitions,
        "events": events,
        "symbols": SYMBOL_COUNT,
        "cpus": os.cpu_count(),
        "publish_rate": round(events / publish_s),
        "stored_seconds": round(total_s, 2),
        "stored_per_s": round(events / total_s),
        "writer_batches_per_node": batches,
        **checks,
    }


def line(result: dict[str, Any]) -> str:
    exact = (
        result["stored_rows"] == result["stored_distinct"] == result["events"]
        and result["clean_messages"] == result["clean_distinct"] == result["events"]
    )
    return (
        f"{result['nodes']} node(s), {result['partitions']} partitions: {result['stored_per_s']:,} stored/s "
        f"({result['events']:,} events in {result['stored_seconds']} s; published at {result['publish_rate']:,}/s); "
        f"stored once and published once: {exact}; per-symbol order inversions: {result['order_inversions']}; "
        f"batches per node {result['writer_batches_per_node']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--partitions", type=int, default=8, help="TICKSTOCK_INGEST_PARTITIONS (0: the old layout)"
    )
    parser.add_argument("--skip-single", action="store_true", help="run the --nodes figure only")
    args = parser.parse_args()
    counts = [args.nodes] if args.skip_single else [1, args.nodes]
    results = [asyncio.run(run(args.events, n, args.partitions)) for n in counts]
    print(json.dumps(results, indent=2))
    print()
    for result in results:
        print(line(result))
    ok = all(
        r["order_inversions"] == 0 and r["stored_distinct"] == r["clean_distinct"] == r["events"]
        for r in results
    )
    return 0 if ok or args.partitions == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
