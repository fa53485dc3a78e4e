"""Partitioned ingest on several hub nodes: stored events/s beside one node's, and the per-symbol order.

    python ops/bench_partitions.py                            # 3 nodes and 1 node, 100,000 events, 500 symbols
    python ops/bench_partitions.py --events 20000 --nodes 3   # a short run
    python ops/bench_partitions.py --partitions 0             # the old layout: one consumer shared by all
    python ops/bench_partitions.py --cluster                  # on a local 3-node NATS cluster, streams at R3
    python ops/bench_partitions.py --kill-at 0.3 --skip-single # kill -9 one node at 30 %: the takeover time
    python ops/bench_partitions.py --cluster --skip-single --events 50000 --kill-leader-at 0.3
                                  # kill -9 the ingest stream's leader at 30 %: the longest ingest pause

For each node count (1, then ``--nodes``) it starts a fresh embedded stack (NATS, PostgreSQL, Redis) and
that many ``tickstock serve`` processes with ``TICKSTOCK_INGEST_PARTITIONS`` set, publishes the events
(``i`` rising per symbol, pipelined acks) from this process, waits until every one is stored and on the
clean stream, and checks: each stored once, each on the clean stream once, the per-symbol order (an
inversion is an event of a symbol after one of the same symbol published later). Everything shares
this machine's cores, so the figures say what the nodes cost each other here, not what more machines give.

``--kill-leader-at F`` (with ``--cluster``): the ingest stream's leadership is moved to the member the
hubs connect to (the harshest place: they lose their server and the leader at once), that member is
killed with ``kill -9`` when share F is stored, and the run reports the longest ingest pause after it (the
longest time between growths of the stored count, sampled every 50 ms) and the new leader. The checks
are the same: every event stored once, published once, in per-symbol order. Exit status 1 if one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from harness import (
    Stack,
    StderrTail,
    connected,
    embedded_stack,
    growth_moments,
    hub_counters,
    hub_metrics,
    longest_pause,
    make_events,
    publish,
    start_hub,
    stop_hub,
    verify,
    wait_stored,
)

from hub.embedded import lead_on, stream_leader
from hub.jetstream import INGEST_STREAM

SYMBOL_COUNT = 500
WRITERS_SUBJECT = "tickstock.hub.writers"


async def writers(nc: Any) -> dict[str, list[int]]:
    """Every hub node's answer on tickstock.hub.writers: node id -> its pinned partitions."""
    inbox = nc.new_inbox()
    answers: dict[str, list[int]] = {}

    async def heard(msg: Any) -> None:
        body = json.loads(msg.data)
        answers[body["node"]] = body["partitions"]

    sub = await nc.subscribe(inbox, cb=heard)
    await nc.publish(WRITERS_SUBJECT, b"", reply=inbox)
    await asyncio.sleep(0.3)
    await sub.unsubscribe()
    return answers


async def stored(database_url: str, name: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM pattern_events WHERE id LIKE %s", (name + "-%",))
        ).fetchone()
    return int(row[0]) if row else 0


async def kill_one(stack: Any, nc: Any, name: str, at: int) -> dict[str, Any]:
    """When ``at`` events are stored, ``kill -9`` the first hub node; returns how long until the
    partitions it was pinned on are pinned by the others."""
    while await stored(stack.database_url, name) < at:
        await asyncio.sleep(0.1)
    before = await writers(nc)
    stop_hub(stack.hubs[0], kill=True)
    killed = time.monotonic()
    while time.monotonic() - killed < 120:
        now = await writers(nc)
        gone = [n for n in before if n not in now]
        if len(gone) == 1 and set(before[gone[0]]) <= {p for ps in now.values() for p in ps}:
            return {
                "killed_at_stored": at,
                "killed_node_partitions": sorted(before[gone[0]]),
                "taken_over_after_s": round(time.monotonic() - killed, 2),
                "survivors_partitions": sorted(now.values()),
            }
    return {"killed_at_stored": at, "taken_over_after_s": None}


async def kill_leader(stack: Stack, nc: Any, name: str, at: int, total: int) -> dict[str, Any]:
    """Move the ingest stream's leadership to the member the hubs connect to and ``kill -9`` it when ``at``
    events are stored; returns the longest pause of the stored count after it and the new leader."""
    cluster = stack.nats_cluster
    assert cluster is not None, "--kill-leader-at needs --cluster"
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:

        async def count() -> int:
            sql = "SELECT count(*) FROM pattern_events WHERE id LIKE %s"
            row = await (await conn.execute(sql, (name + "-%",))).fetchone()
            return int(row[0]) if row else 0

        while await count() < at:
            await asyncio.sleep(0.1)
        leader = await lead_on(nc, INGEST_STREAM, cluster.members[0].server_name)  # still there
        at_kill = await count()
        progress = asyncio.create_task(growth_moments(count, total, interval_s=0.05))
        await asyncio.sleep(0.1)  # the sampler's first look comes before the kill
        killed = time.monotonic()
        cluster.member(leader).kill()
        moments = await progress
    new_leader = None
    while time.monotonic() - killed < 120 and new_leader in (None, leader):
        new_leader = await stream_leader(nc, INGEST_STREAM)
        await asyncio.sleep(0.2)
    return {
        "leader_killed": leader,
        "leader_killed_at_stored": at_kill,
        "longest_ingest_pause_s": round(longest_pause(killed, moments), 2),
        "all_stored_after_kill_s": round((moments[-1] if moments else killed) - killed, 2),
        "new_leader": new_leader,
    }


async def run(
    events: int,
    nodes: int,
    partitions: int,
    *,
    cluster: bool = False,
    kill_at: float | None = None,
    kill_leader_at: float | None = None,
) -> dict[str, Any]:
    """One run on a fresh stack: ``nodes`` hub processes, ``events`` events over 500 symbols."""
    symbols = [f"S{k:03d}" for k in range(SYMBOL_COUNT)]
    with embedded_stack(cluster=cluster) as stack, ExitStack() as tails:
        stack.extra_env["TICKSTOCK_INGEST_PARTITIONS"] = str(partitions)
        ports = []
        for _ in range(nodes):
            proc, port = start_hub(stack)
            tails.enter_context(StderrTail(proc))  # read all along: a full pipe would stall the hub
            ports.append(port)
        name = f"part{nodes}n{int(time.time())}"
        batch = make_events(events, run=name, symbols=symbols)
        drill: dict[str, Any] = {}
        async with connected(stack.client_url) as nc:
            if kill_leader_at is not None and stack.nats_cluster is not None:
                # Before the ingest (a step-down drops the publishes in hand), so the kill comes at F.
                drill["leader_before_move"] = await stream_leader(nc, INGEST_STREAM)
                await lead_on(nc, INGEST_STREAM, stack.nats_cluster.members[0].server_name)
            started = time.monotonic()
            killer = (
                asyncio.create_task(kill_one(stack, nc, name, int(events * kill_at)))
                if kill_at is not None and nodes > 1
                else None
            )
            leader_killer = (
                asyncio.create_task(kill_leader(stack, nc, name, int(events * kill_leader_at), events))
                if kill_leader_at is not None
                else None
            )
            acks: dict[str, int] = {}
            publish_s = await publish(nc, batch, stamp=True, acks=acks)
            await wait_stored(stack.database_url, name, events)
            if killer is not None:
                drill.update(await killer)
            if leader_killer is not None:
                drill.update(await leader_killer)
        total_s = time.monotonic() - started
        checks = await verify(stack.database_url, stack.client_url, name, events, acks=acks)
        alive = ports[1:] if "killed_at_stored" in drill else ports
        batches = [(await hub_metrics(port))["pipeline"]["writer_batches"] for port in alive]
        counters = [await hub_counters(port) for port in alive]
    return {
        "nodes": nodes,
        "partitions": partitions,
        "nats": "3-node cluster, R3" if cluster else "one server",
        "events": events,
        "symbols": SYMBOL_COUNT,
        "cpus": os.cpu_count(),
        "publish_rate": round(events / publish_s),
        "stored_seconds": round(total_s, 2),
        "stored_per_s": round(events / total_s),
        "writer_batches_per_node": batches,
        "writer_counters_per_node": [
            {name.removeprefix("tickstock_"): int(value) for name, value in c.items()} for c in counters
        ],
        **checks,
        **drill,
    }


def lost(result: dict[str, Any]) -> int:
    """Events not stored, or stored but not on the clean stream."""
    return int(result["events"] - min(result["stored_distinct"], result["clean_distinct"]))


def duplicated(result: dict[str, Any]) -> int:
    """Extra copies: rows stored more than once plus clean-stream messages published more than once."""
    return int(
        result["stored_rows"]
        - result["stored_distinct"]
        + result["clean_messages"]
        - result["clean_distinct"]
    )


def passed(result: dict[str, Any]) -> bool:
    """Every check of the run: exactly once, in order, and the drill's own (a takeover, a new leader)."""
    return (
        result["exactly_once"]
        and result["order_inversions"] == 0
        and ("killed_at_stored" not in result or result["taken_over_after_s"] is not None)
        and ("leader_killed" not in result or result["new_leader"] not in (None, result["leader_killed"]))
    )


def line(result: dict[str, Any]) -> str:
    exact = (
        result["stored_rows"] == result["stored_distinct"] == result["events"]
        and result["clean_messages"] == result["clean_distinct"] == result["events"]
    )
    return (
        f"{result['nodes']} node(s), {result['partitions']} partitions, {result['nats']}: "
        f"{result['stored_per_s']:,} stored/s "
        f"({result['events']:,} events in {result['stored_seconds']} s; published at {result['publish_rate']:,}/s); "
        f"stored once and published once: {exact}; per-symbol order inversions: {result['order_inversions']}; "
        f"batches per node {result['writer_batches_per_node']}"
        + (
            f"; kill -9 of a node at {result['killed_at_stored']:,} stored: its partitions "
            f"{result.get('killed_node_partitions')} taken over after {result['taken_over_after_s']} s"
            if "killed_at_stored" in result
            else ""
        )
        + (
            f"; kill -9 of the ingest stream's leader {result['leader_killed']} (the hubs' member) at "
            f"{result['leader_killed_at_stored']:,} stored: longest ingest pause {result['longest_ingest_pause_s']} s, "
            f"new leader {result['new_leader']}, all stored {result['all_stored_after_kill_s']} s after the kill; "
            f"lost {lost(result)}, duplicated {duplicated(result)}, out of order {result['order_inversions']} "
            f"(in the ingest stream already, by the publisher's re-sends: {result['ingest_inversions']}; "
            f"against the ingest stream's order: {result['hub_inversions']})"
            if "leader_killed" in result
            else ""
        )
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
    parser.add_argument(
        "--cluster", action="store_true", help="a local 3-node NATS cluster, every stream at R3"
    )
    parser.add_argument(
        "--kill-at", type=float, default=None, help="kill -9 one node when this share is stored"
    )
    parser.add_argument(
        "--kill-leader-at",
        type=float,
        default=None,
        help="kill -9 the ingest stream's leader when this share is stored (needs --cluster)",
    )
    args = parser.parse_args()
    if args.kill_leader_at is not None and not args.cluster:
        parser.error("--kill-leader-at needs --cluster")
    counts = [args.nodes] if args.skip_single else [1, args.nodes]
    results = [
        asyncio.run(
            run(
                args.events,
                n,
                args.partitions,
                cluster=args.cluster,
                kill_at=args.kill_at,
                kill_leader_at=args.kill_leader_at,
            )
        )
        for n in counts
    ]
    print(json.dumps(results, indent=2))
    print()
    for result in results:
        print(line(result))
    ok = all(passed(r) for r in results)
    return 0 if ok or args.partitions == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
