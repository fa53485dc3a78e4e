"""Failure drills for the pipeline, on a fresh embedded stack with real hub processes.

    python ops/chaos.py kill --events 50000        # kill -9 the hub mid-publish, restart, verify
    python ops/chaos.py pg-outage --seconds 20     # stop PostgreSQL while events flow, restart, verify

``kill``: publishes ``--events`` events; when about a fifth are stored the hub gets SIGKILL; the
publisher carries on (JetStream keeps everything); a new hub starts and drains the backlog. Checks: no
loss, no duplicate row, no duplicate clean event.

``pg-outage``: events flow at ``--rate``/s; PostgreSQL is stopped for ``--seconds`` and started
again on the same port. It listens to the hub's acknowledgements on ``$JS.ACK.TICKSTOCK_INGEST.>``
and prints how often each message was handed back and with which delays, so the back-off can be
seen. Checks: nothing lost, nothing dead-lettered, the backlog drains.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import defaultdict

import psycopg
from harness import (
    connected,
    embedded_stack,
    make_events,
    publish,
    start_hub,
    stop_hub,
    verify,
    wait_stored,
)


async def _stored(database_url: str, run: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM pattern_events WHERE id LIKE %s", (run + "-%",))
        ).fetchone()
    return int(row[0]) if row else 0


async def kill(events: int) -> dict[str, object]:
    with embedded_stack() as stack:
        stack.extra_env["TICKSTOCK_INGEST_ACK_WAIT_S"] = "5"  # redeliver the killed hub's batch sooner
        hub, _ = start_hub(stack)
        run = f"kill{int(time.time())}"
        batch = make_events(events, run=run)
        async with connected(stack.nats_url) as nc:
            publisher = asyncio.create_task(publish(nc, batch, rate=events / 10))  # spread over ~10 s
            while await _stored(stack.database_url, run) < events // 5:
                await asyncio.sleep(0.05)
            stored_at_kill = await _stored(stack.database_url, run)
            stop_hub(hub, kill=True)
            killed_at = time.monotonic()
            print(f"kill -9 of the hub with {stored_at_kill:,} of {events:,} stored; publishing goes on")
            await publisher
        start_hub(stack)
        print(f"hub restarted {time.monotonic() - killed_at:.1f} s after the kill")
        drained = await wait_stored(stack.database_url, run, events)
        checks = await verify(stack.database_url, stack.nats_url, run, events)
    return {
        "scenario": "kill -9",
        "stored_at_kill": stored_at_kill,
        "drain_seconds": round(drained, 1),
        **checks,
    }


async def pg_outage(seconds: float, rate: float, events: int) -> dict[str, object]:
    with embedded_stack() as stack:
        hub, port = start_hub(stack)
        run = f"pg{int(time.time())}"
        batch = make_events(events, run=run)
        naks: dict[str, list[tuple[float, float]]] = defaultdict(list)
        async with connected(stack.nats_url) as nc:

            async def on_ack(msg) -> None:  # type: ignore[no-untyped-def]
                if msg.data.startswith(b"-NAK"):
                    body = msg.data[4:].strip()
                    delay = json.loads(body)["delay"] / 1e9 if body else 0.0
                    stream_seq = msg.subject.split(".")[
                        -4
                    ]  # $JS.ACK.<stream>.<consumer>.<dlv>.<sseq>.<cseq>.<ts>.<pending>
                    naks[stream_seq].append((time.monotonic(), delay))

            await nc.subscribe("$JS.ACK.TICKSTOCK_INGEST.>", cb=on_ack)
            publisher = asyncio.create_task(publish(nc, batch, rate=rate))
            await asyncio.sleep(3)
            before = await _stored(stack.database_url, run)
            assert stack.postgres is not None
            stack.postgres.stop()
            down_at = time.monotonic()
            print(f"PostgreSQL stopped with {before:,} stored")
            await asyncio.sleep(seconds)
            stack.postgres.start()
            print(f"PostgreSQL started again after {time.monotonic() - down_at:.1f} s")
            await publisher
            drained = await wait_stored(stack.database_url, run, events)
            await asyncio.sleep(1)
            probes = await _probes(port)
        checks = await verify(stack.database_url, stack.nats_url, run, events)
        stop_hub(hub)
    per_message = [len(v) for v in naks.values()]
    gaps = [round(b[0] - a[0], 2) for v in naks.values() for a, b in itertools.pairwise(v)]
    delays = sorted({round(d, 2) for v in naks.values() for _, d in v})
    return {
        "scenario": f"PostgreSQL down {seconds:g} s",
        "rate": rate,
        "drain_seconds_after_publish": round(drained, 1),
        "messages_handed_back": len(naks),
        "naks_total": sum(per_message),
        "naks_per_message_max": max(per_message, default=0),
        "nak_delays_s": delays,
        "gap_between_naks_s_max": max(gaps, default=0.0),
        "writer_database_probes": probes,
        **checks,
    }


async def _probes(port: int) -> dict[str, int]:
    """The writer's database probes during the outage, from the hub's /metrics."""
    import httpx

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("tickstock_writer_database_probes_total{"):
            name, value = line.rsplit(" ", 1)
            found[name.split('"')[1]] = int(float(value))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="scenario", required=True)
    k = sub.add_parser("kill")
    k.add_argument("--events", type=int, default=50_000)
    o = sub.add_parser("pg-outage")
    o.add_argument("--seconds", type=float, default=20)
    o.add_argument("--rate", type=float, default=500)
    o.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    if args.scenario == "kill":
        result = asyncio.run(kill(args.events))
        ok = result["exactly_once"]
    else:
        result = asyncio.run(pg_outage(args.seconds, args.rate, args.events))
        ok = result["exactly_once"] and result["dead_letters"] == 0
    print(json.dumps(result, indent=2))
    print("\nOK" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
