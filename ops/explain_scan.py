"""EXPLAIN the typical scan queries on generated pattern events.

Generates ``--events`` events over the last ``--days`` days (symbols from the S&P 500, the seeded
pattern names, all timeframes) into a database, ANALYZEs, then prints for each typical scan shape the
plan (EXPLAIN ANALYZE, BUFFERS), which indexes it used, how many partitions it read out of how many
exist, and its execution time.

    python ops/explain_scan.py --events 1000000            # embedded PostgreSQL in a temp folder
    TICKSTOCK_DATABASE_URL=postgresql://... python ops/explain_scan.py --events 1000000 --keep

Every twentieth generated event gets a ``pattern_updated`` of its instance, which supersedes it, so the
default shapes (each instance's latest event: ``NOT superseded``) filter real rows out.

Then the writer's statements (:mod:`store.patterns`) for a batch of 1,000 updates of the newest
instances (the insert, and the retire and promote that updates need), executed in a transaction that
is rolled back: each must find rows by index lookups, never by reading a partition whole.

Exit status 1 when a shape does not use the index it was designed for or does not prune partitions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.embedded import EmbeddedPostgres
from store.migrate import migrate
from store.patterns import _INSERT, _PROMOTE, _RETIRE
from store.pool import open_pool
from store.reference import load_reference_data

GENERATE = """
WITH syms AS (SELECT array_agg(symbol ORDER BY symbol) AS a FROM universe_members WHERE universe = 'sp500'),
     pats AS (SELECT array_agg(name ORDER BY name) AS a FROM pattern_definitions),
     tfs  AS (SELECT ARRAY['1min','5min','15min','30min','hourly','daily','weekly','monthly'] AS a)
INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at,
                            price, volume, payload, source, stream_seq)
SELECT 'gen-' || g,
       'pattern_detected',
       syms.a[1 + mod(hashint(g, 1), array_length(syms.a, 1))],
       pats.a[1 + mod(hashint(g, 2), array_length(pats.a, 1))],
       tfs.a[1 + mod(hashint(g, 3), 8)],
       mod(hashint(g, 4), 1000) / 1000.0,
       now() - (%(days)s * interval '1 day') * (g::float8 / %(n)s),
       now() - (%(days)s * interval '1 day') * (g::float8 / %(n)s) + interval '3 days',
       10 + mod(hashint(g, 5), 50000) / 100.0,
       mod(hashint(g, 6), 10000000),
       '{}'::jsonb, 'explain', g
FROM generate_series(1, %(n)s) AS g, syms, pats, tfs
"""

# Every 20th event is updated: the detection is superseded, the update is its instance's latest row.
UPDATES = """
WITH updated AS (
    UPDATE pattern_events SET superseded = true
    WHERE id LIKE 'gen-%%' AND mod(hashint(substr(id, 5)::bigint, 7), 20) = 0
    RETURNING *
)
INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at,
                            price, volume, payload, source, stream_seq)
SELECT 'upd-' || substr(id, 5), 'pattern_updated', symbol, pattern, timeframe, least(confidence + 0.1, 1),
       detected_at, expires_at, price, volume, payload, source, stream_seq + %(n)s
FROM updated
"""

WRITER_BATCH = """
SELECT jsonb_agg(jsonb_build_object(
           'id', 'explain-' || id, 'type', 'pattern_updated', 'symbol', symbol, 'pattern', pattern,
           'timeframe', timeframe, 'confidence', confidence, 'detected_at', detected_at, 'source', 'explain'
       ))::text AS batch,
       array_agg('explain-' || id) AS ids, array_agg(detected_at) AS times
FROM (SELECT * FROM pattern_events WHERE id LIKE 'gen-%%' ORDER BY detected_at DESC LIMIT %(n)s) recent
"""
WRITER_BATCH_SIZE = 1000
# The writer looks an instance's latest row up by the instance key; the planner may take the time or
# symbol index for the same point lookup (detected_at is part of every key): any of them will do.
WRITER_INDEXES = (
    "pattern_events_instance_key",
    "pattern_events_time_idx",
    "pattern_events_symbol_idx",
    "pattern_events_pkey",
)
# A partition this small (the ones created ahead) is read whole: that is the cheap plan.
SMALL_PARTITION = 1000

HASHINT = """
CREATE OR REPLACE FUNCTION hashint(g bigint, salt int) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT abs(hashint8(g * 1000003 + salt))::bigint $$
"""

# name -> (sql, indexes of which it must use one, whether it must prune partitions)
SHAPES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "universe, confidence, last 7 days, newest first": (
        "SELECT * FROM pattern_events WHERE detected_at >= now() - interval '7 days' "
        "AND symbol = ANY (ARRAY(SELECT symbol FROM universe_members WHERE universe = 'dow30')) "
        "AND confidence >= 0.7 AND superseded IS NOT TRUE ORDER BY detected_at DESC, id DESC LIMIT 50",
        # Walking the newest-first time index and filtering is as good as merging per-symbol index
        # scans when the universe is large; the planner picks by the data.
        ("pattern_events_symbol_idx", "pattern_events_time_idx"),
        True,
    ),
    "one symbol, newest first": (
        "SELECT * FROM pattern_events WHERE symbol = 'AAPL' AND superseded IS NOT TRUE "
        "ORDER BY detected_at DESC, id DESC LIMIT 50",
        ("pattern_events_symbol_idx",),
        False,
    ),
    "pattern + timeframe, last 30 days": (
        "SELECT * FROM pattern_events WHERE pattern = 'hammer' AND timeframe = 'daily' "
        "AND detected_at >= now() - interval '30 days' AND superseded IS NOT TRUE ORDER BY detected_at DESC, id DESC LIMIT 50",
        ("pattern_events_pattern_idx",),
        True,
    ),
    "timeframe, keyset page 2": (
        "SELECT * FROM pattern_events WHERE timeframe = 'hourly' AND detected_at >= now() - interval '14 days' "
        "AND (detected_at, id) < (now() - interval '2 days', 'gen-0') AND superseded IS NOT TRUE "
        "ORDER BY detected_at DESC, id DESC LIMIT 50",
        ("pattern_events_timeframe_idx", "pattern_events_time_idx"),
        True,
    ),
    "everything, last 24 hours": (
        "SELECT * FROM pattern_events WHERE detected_at >= now() - interval '1 day' AND superseded IS NOT TRUE "
        "ORDER BY detected_at DESC, id DESC LIMIT 100",
        ("pattern_events_time_idx",),
        True,
    ),
    "one symbol, active instances": (
        "SELECT * FROM pattern_events WHERE symbol = 'MSFT' AND superseded IS NOT TRUE "
        "AND type <> 'pattern_expired' "
        "AND (expires_at IS NULL OR expires_at > now()) ORDER BY detected_at DESC, id DESC LIMIT 50",
        ("pattern_events_symbol_idx",),
        False,
    ),
    "pattern + timeframe with history, last 30 days": (
        "SELECT * FROM pattern_events WHERE pattern = 'hammer' AND timeframe = 'daily' "
        "AND detected_at >= now() - interval '30 days' ORDER BY detected_at DESC, id DESC LIMIT 50",
        ("pattern_events_pattern_idx",),
        True,
    ),
}


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_walk(child))
    return found


async def _explain(
    conn: Any, sql: str, params: Any = None, *, json_plan: bool = True, text: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """The JSON plan and the text plan of ``sql``, each from its own EXPLAIN ANALYZE (which runs it)."""
    plan: Any = [{}]
    if json_plan:
        plan_row = await (
            await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        ).fetchone()
        assert plan_row is not None
        plan = next(iter(plan_row.values()))
        plan = json.loads(plan) if isinstance(plan, str) else plan
    lines = await (await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)).fetchall() if text else []
    return plan[0], [next(iter(line.values())) for line in lines]


def _verdict(
    name: str,
    plan: dict[str, Any],
    text: list[str],
    sql: str,
    wanted: tuple[str, ...],
    parents: dict[str, str],
    sizes: dict[str, float],
    *,
    prune: bool,
) -> bool:
    """Print the shape's verdict and plan; OK when it used one of ``wanted``, read no partition of
    :data:`SMALL_PARTITION` rows or more whole (a sequential scan) and, with ``prune``, read fewer
    partitions than exist."""
    total_parts = len(sizes)
    nodes = _walk(plan["Plan"])
    indexes = sorted({parents.get(n["Index Name"], n["Index Name"]) for n in nodes if "Index Name" in n})
    parts = sorted(
        {n["Relation Name"] for n in nodes if n.get("Relation Name", "").startswith("pattern_events_")}
    )
    whole = sorted(
        {
            n["Relation Name"]
            for n in nodes
            if n["Node Type"] == "Seq Scan" and sizes.get(n.get("Relation Name", ""), 0) >= SMALL_PARTITION
        }
    )
    ok = any(index in indexes for index in wanted) and not whole and (len(parts) < total_parts or not prune)
    print(
        f"== {name}: {'OK' if ok else 'FAIL'} — {plan['Execution Time']:.2f} ms, "
        f"indexes {indexes}, partitions read {len(parts)} of {total_parts}"
        + (f", read whole: {whole}" if whole else "")
    )
    print(f"   {sql}")
    for line in text:
        print("   " + line)
    print()
    return ok


async def run(url: str, events: int, days: int, generate: bool) -> int:
    failures = 0
    async with open_pool(url, min_size=1, max_size=2, statement_timeout_ms=0) as pool:
        async with pool.connection() as conn:
            await migrate(conn)
        await load_reference_data(pool)
        async with pool.connection() as conn:
            await conn.execute(
                "SELECT tickstock_ensure_partitions(now() - %s * interval '1 day', now() + interval '7 days')",
                (days,),
            )
            if generate:
                started = time.monotonic()
                await conn.execute(HASHINT)
                await conn.execute("TRUNCATE pattern_events")
                await conn.execute(GENERATE, {"n": events, "days": days})  # type: ignore[arg-type]
                updates = (await conn.execute(UPDATES, {"n": events})).rowcount  # type: ignore[arg-type]
                await conn.execute("TRUNCATE pattern_event_ids")
                await conn.execute(
                    "INSERT INTO pattern_event_ids (id, detected_at) SELECT id, detected_at FROM pattern_events"
                )
                await conn.execute("ANALYZE pattern_events")
                await conn.execute("ANALYZE pattern_event_ids")
                print(
                    f"generated {events:,} events over {days} days in {time.monotonic() - started:.1f} s "
                    f"({updates:,} of them updated: their detections superseded)"
                )
            row = await (
                await conn.execute(
                    "SELECT count(*) AS n, (SELECT count(*) FROM pg_inherits "
                    "WHERE inhparent = 'pattern_events'::regclass) AS parts FROM pattern_events"
                )
            ).fetchone()
            assert row is not None
            total_parts = row["parts"]
            # A partition's index is named after its columns; map it back to the parent index.
            parents = {
                r["child"]: r["parent"]
                for r in await (
                    await conn.execute(
                        "SELECT c.relname AS child, p.relname AS parent FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                        "WHERE p.relkind = 'I'"
                    )
                ).fetchall()
            }
            sizes = {
                r["relname"]: r["reltuples"]
                for r in await (
                    await conn.execute(
                        "SELECT c.relname, c.reltuples FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'pattern_events'::regclass"
                    )
                ).fetchall()
            }
            print(f"pattern_events: {row['n']:,} rows in {total_parts} partitions\n")
            for name, (sql, wanted, prune) in SHAPES.items():
                plan, text = await _explain(conn, sql)
                failures += not _verdict(name, plan, text, sql, wanted, parents, sizes, prune=prune)
            row = await (await conn.execute(WRITER_BATCH, {"n": WRITER_BATCH_SIZE})).fetchone()
            assert row is not None
            promoted = {"ids": row["ids"], "times": row["times"]}
            async with conn.transaction(force_rollback=True):
                for name, sql, params in (
                    ("writer: insert the batch", _INSERT, [row["batch"], [None] * WRITER_BATCH_SIZE]),
                    ("writer: retire the latest rows the batch replaces", _RETIRE, promoted),
                    ("writer: promote the batch's events", _PROMOTE, promoted),
                ):
                    # Each statement once for the JSON plan (undone), once for the text plan (kept: the
                    # statements run in the writer's order).
                    async with conn.transaction(force_rollback=True):
                        plan, _ = await _explain(conn, sql, params, text=False)
                    _, text = await _explain(conn, sql, params, json_plan=False)
                    failures += not _verdict(
                        f"{name} ({WRITER_BATCH_SIZE:,} updates of the newest instances)",
                        plan,
                        text,
                        sql.strip().splitlines()[0] + " ...",
                        WRITER_INDEXES,
                        parents,
                        sizes,
                        prune=False,
                    )
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--no-generate", action="store_true", help="explain what is already stored")
    args = parser.parse_args()
    url = os.environ.get("TICKSTOCK_DATABASE_URL")
    if url:
        return asyncio.run(run(url, args.events, args.days, not args.no_generate))
    with (
        tempfile.TemporaryDirectory(prefix="tickstock-explain-") as tmp,
        EmbeddedPostgres(Path(tmp), durable=False) as pg,
    ):
        return asyncio.run(run(pg.url, args.events, args.days, not args.no_generate))


if __name__ == "__main__":
    sys.exit(main())
