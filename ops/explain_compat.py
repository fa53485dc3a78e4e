"""EXPLAIN ANALYZE the TickStock compatibility scan (store/scan_window.py) beside our own scan page.

Generates ``--events`` events (as ops/explain_scan.py does, plus indicator values), then for each
shape prints the execution time of our keyset page (``build_scan``, what ``/api/patterns/scan`` runs)
and of the page-numbered window with its total (``build_window``, what the compat scan runs), the rows
the window read and the buffers it touched. The window's cost is bounded by its size, whatever the page.

    python ops/explain_compat.py --events 5000           # embedded PostgreSQL in a temp folder
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.embedded import EmbeddedPostgres
from ops.explain_scan import GENERATE, HASHINT
from store.migrate import migrate
from store.pool import open_pool
from store.reference import load_reference_data
from store.scan_window import DEFAULT_WINDOW, IndicatorFilter, build_window
from store.scans import ScanFilter, Sort, build_scan

INDICATORS = """
UPDATE pattern_events SET indicators = jsonb_build_object(
    'relative_strength', mod(hashint(stream_seq, 7), 300) / 100.0,
    'relative_volume', mod(hashint(stream_seq, 8), 500) / 100.0,
    'rsi', mod(hashint(stream_seq, 9), 101))
"""
ACTIVE = ScanFilter(confidence_min=0.5, active_only=True)
# name -> (filter, the window's sort, indicator bounds, indicator sort, per_page, page)
SHAPES: dict[str, tuple[ScanFilter, Sort, IndicatorFilter, str | None, int, int]] = {
    "browser page: confidence >= 0.5, by confidence, page 1 of 30": (
        ACTIVE,
        Sort("confidence", "desc"),
        IndicatorFilter(),
        None,
        30,
        1,
    ),
    "deep page: page 100 by 100 (the window's last)": (
        ACTIVE,
        Sort("confidence", "desc"),
        IndicatorFilter(),
        None,
        100,
        100,
    ),
    "rs_min 1.5, rsi 30-70, by rs": (
        ACTIVE,
        Sort("detected_at", "desc"),
        IndicatorFilter(rs_min=1.5, rsi_min=30, rsi_max=70),
        "relative_strength",
        30,
        1,
    ),
    "timeframe daily, newest first": (
        ScanFilter(confidence_min=0.5, timeframes=("daily",), active_only=True),
        Sort("detected_at", "desc"),
        IndicatorFilter(),
        None,
        30,
        1,
    ),
}


async def _explain(conn: Any, query: Any, params: list[Any]) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of ``query``: the plan's top node and its execution time."""
    cur = await conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(query), params)
    row = await cur.fetchone()
    plan = next(iter(row.values()))
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]  # type: ignore[no-any-return]


def _buffers(node: dict[str, Any]) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


async def run(url: str, events: int, days: int, window: int) -> int:
    async with open_pool(url, min_size=1, max_size=2, statement_timeout_ms=0) as pool:
        async with pool.connection() as conn:
            await migrate(conn)
        await load_reference_data(pool)
        async with pool.connection() as conn:
            await conn.execute(
                "SELECT tickstock_ensure_partitions(now() - %s * interval '1 day', now() + interval '7 days')",
                (days,),
            )
            await conn.execute(HASHINT)
            await conn.execute("TRUNCATE pattern_events")
            await conn.execute(GENERATE, {"n": events, "days": days})  # type: ignore[arg-type]
            await conn.execute(INDICATORS)
            await conn.execute("ANALYZE pattern_events")
            print(f"pattern_events: {events:,} rows over {days} days; window {window:,} rows\n")
            for name, (filt, sort, bounds, by, per_page, page) in SHAPES.items():
                plain, plain_params = build_scan(filt, symbols=None, sort=sort, limit=per_page + 1)
                ours = await _explain(conn, plain, plain_params)
                query, params = build_window(
                    filt,
                    symbols=None,
                    sort=sort,
                    indicators=bounds,
                    by=by,
                    limit=per_page,
                    offset=(page - 1) * per_page,
                    window=window,
                )
                compat = await _explain(conn, query, params)
                counted = await (await conn.execute(query, params)).fetchone()
                print(
                    f"== {name}: our page {ours['Execution Time']:.2f} ms ({_buffers(ours['Plan'])} buffers); "
                    f"compat page + total {compat['Execution Time']:.2f} ms ({_buffers(compat['Plan'])} buffers), "
                    f"window read {counted['scanned'] if counted else 0:,} rows, total {counted['total'] if counted else 0:,}"
                )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    args = parser.parse_args()
    url = os.environ.get("TICKSTOCK_DATABASE_URL")
    if url:
        return asyncio.run(run(url, args.events, args.days, args.window))
    with (
        tempfile.TemporaryDirectory(prefix="tickstock-explain-") as tmp,
        EmbeddedPostgres(Path(tmp), durable=False) as pg,
    ):
        return asyncio.run(run(pg.url, args.events, args.days, args.window))


if __name__ == "__main__":
    sys.exit(main())
