"""Fill a database with generated pattern events, fast, for benchmarks and load tests.

Rows are made server-side (``INSERT … SELECT FROM generate_series``) in chunks: S&P 500 symbols (a
few much busier than the rest, as in a real feed), the seeded pattern names (some far more common),
every timeframe (short ones busier), confidences clustered around 0.6, ``detected_at`` spread over
``--days`` days in insertion order, ``expires_at`` a timeframe-dependent horizon later (so most old
events have expired; one in ten has none), a few ``pattern_updated`` / ``pattern_expired`` events.
Each event gets its ``pattern_event_ids`` row, as the writer does. Then ANALYZE and a refresh of the
materialized views. The values depend only on ``--seed`` and the row number.

    python ops/gen_events.py --events 2000000                       # a fresh embedded stack (thrown away)
    python ops/gen_events.py --data-dir /tmp/tickstock-bench        # embedded servers kept in that folder
    TICKSTOCK_DATABASE_URL=postgresql://... python ops/gen_events.py --events 2000000

Replaces events this script generated before (ids ``gen-…``); leaves every other event alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import sql

from store.maintenance import MATERIALIZED_VIEWS
from store.migrate import migrate
from store.pool import open_pool
from store.reference import load_reference_data

if TYPE_CHECKING:
    from harness import Stack

DEFAULT_EVENTS = 2_000_000
DEFAULT_DAYS = 120
DEFAULT_SEED = 1
DEFAULT_CHUNK = 250_000
ID_PREFIX = "gen-"


def _u(salt: int) -> str:
    """A uniform value in [0, 1) from the row number ``g``, the seed and ``salt`` (SQL text)."""
    return f"(mod(abs(hashint8(g * 1000003 + %(seed)s * 7919 + {salt})), 1000000) / 1000000.0)"


# Busy symbols and common patterns come first in their arrays' order of a hash, and u^k skews the pick
# towards the front; timeframes are picked from a weighted array.
GENERATE = f"""
WITH syms AS (SELECT array_agg(symbol ORDER BY md5(symbol || %(seed)s)) AS a
              FROM universe_members WHERE universe = 'sp500'),
     pats AS (SELECT array_agg(name ORDER BY md5(name || %(seed)s)) AS a FROM pattern_definitions),
     tfs  AS (SELECT ARRAY['1min','1min','1min','5min','5min','5min','15min','15min','30min','30min',
                           'hourly','hourly','daily','daily','weekly','monthly'] AS a),
     gen AS (
        SELECT g,
               syms.a[1 + floor(array_length(syms.a, 1) * power({_u(1)}, 1.6))::int] AS symbol,
               pats.a[1 + floor(array_length(pats.a, 1) * power({_u(2)}, 2.0))::int] AS pattern,
               tfs.a[1 + floor(16 * {_u(3)})::int] AS timeframe,
               least(0.999, greatest(0.05, ({_u(4)} + {_u(5)} + {_u(6)}) / 3 * 0.9 + 0.18))::real AS confidence,
               now() - (%(days)s * interval '1 day') * ((%(n)s - g + {_u(7)}) / %(n)s) AS detected_at,
               {_u(8)} AS u_type, {_u(9)} AS u_exp, {_u(10)} AS u_price
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g, syms, pats, tfs
     ),
     ins AS (
        INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at,
                                    price, volume, levels, indicators, payload, source, stream_seq, received_at)
        SELECT '{ID_PREFIX}' || g,
               CASE WHEN u_type < 0.92 THEN 'pattern_detected'
                    WHEN u_type < 0.97 THEN 'pattern_updated' ELSE 'pattern_expired' END,
               symbol, pattern, timeframe, confidence, detected_at,
               CASE WHEN u_exp < 0.1 THEN NULL
                    ELSE detected_at + CASE timeframe
                        WHEN '1min' THEN interval '1 hour' WHEN '5min' THEN interval '4 hours'
                        WHEN '15min' THEN interval '12 hours' WHEN '30min' THEN interval '1 day'
                        WHEN 'hourly' THEN interval '2 days' WHEN 'daily' THEN interval '5 days'
                        WHEN 'weekly' THEN interval '21 days' ELSE interval '60 days' END END,
               round((5 + 495 * u_price)::numeric, 2)::float8,
               floor(1000 + 5000000 * u_price * u_price)::float8,
               jsonb_build_object('support', round((5 + 490 * u_price)::numeric, 2),
                                  'resistance', round((10 + 500 * u_price)::numeric, 2)),
               jsonb_build_object('rsi', round((20 + 60 * u_exp)::numeric, 1)),
               jsonb_build_object('data', jsonb_build_object('generator', 'gen_events')),
               'gen_events', g, detected_at + interval '150 milliseconds'
        FROM gen
        RETURNING id, detected_at
     )
INSERT INTO pattern_event_ids (id, detected_at) SELECT id, detected_at FROM ins
"""


@dataclass(frozen=True)
class Generated:
    events: int
    total_events: int
    expired: int
    partitions: int
    seconds: float
    insert_seconds: float
    analyze_seconds: float
    refresh_seconds: float

    def line(self) -> str:
        return (
            f"generated {self.events:,} events in {self.seconds:.1f} s (insert {self.insert_seconds:.1f} s, "
            f"analyze {self.analyze_seconds:.1f} s, views {self.refresh_seconds:.1f} s); "
            f"pattern_events holds {self.total_events:,} rows ({self.expired:,} expired) "
            f"in {self.partitions} partitions"
        )


async def count_generated(url: str) -> int:
    """How many generated events the database at ``url`` holds (0 if it is not migrated yet)."""
    async with (
        open_pool(url, min_size=1, max_size=1, statement_timeout_ms=0) as pool,
        pool.connection() as conn,
    ):
        exists = await (
            await conn.execute("SELECT to_regclass('pattern_events') IS NOT NULL AS ok")
        ).fetchone()
        if not exists or not exists["ok"]:
            return 0
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM pattern_event_ids WHERE id LIKE %s", (ID_PREFIX + "%",)
            )
        ).fetchone()
        return int(row["n"]) if row else 0


async def generate(
    url: str,
    *,
    events: int = DEFAULT_EVENTS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    chunk: int = DEFAULT_CHUNK,
    prepare: bool = True,
    progress: bool = True,
) -> Generated:
    """Replace the generated events in the database at ``url`` with ``events`` new ones.

    With ``prepare`` the database is migrated and the reference data loaded first (both idempotent).
    Statements run without a statement timeout; a 2,000,000-event run takes a few minutes on two cores.
    """
    if events < 1 or days < 1 or chunk < 1:
        raise ValueError("events, days and chunk must be positive")
    started = time.monotonic()
    async with open_pool(url, min_size=1, max_size=1, statement_timeout_ms=0) as pool:
        if prepare:
            async with pool.connection() as conn:
                await migrate(conn)
            await load_reference_data(pool)
        async with pool.connection() as conn:
            # Bulk load: losing it in a crash costs nothing, so skip waiting for each commit's flush.
            await conn.execute("SET synchronous_commit = off")
            await conn.execute("SET maintenance_work_mem = '256MB'")
            await conn.execute(
                "SELECT tickstock_ensure_partitions(now() - %s * interval '1 day' - interval '1 day', "
                "now() + interval '7 days')",
                (days,),
            )
            await conn.execute("DELETE FROM pattern_events WHERE id LIKE %s", (ID_PREFIX + "%",))
            await conn.execute("DELETE FROM pattern_event_ids WHERE id LIKE %s", (ID_PREFIX + "%",))
            insert_started = time.monotonic()
            for lo in range(1, events + 1, chunk):
                hi = min(events, lo + chunk - 1)
                await conn.execute(GENERATE, {"n": events, "days": days, "seed": seed, "lo": lo, "hi": hi})  # type: ignore[arg-type]
                if progress:
                    rate = hi / (time.monotonic() - insert_started)
                    print(f"  {hi:>12,} / {events:,} events ({rate:,.0f}/s)", flush=True)
            insert_s = time.monotonic() - insert_started
            analyze_started = time.monotonic()
            await conn.execute("ANALYZE pattern_events")
            await conn.execute("ANALYZE pattern_event_ids")
            analyze_s = time.monotonic() - analyze_started
            refresh_started = time.monotonic()
            for view in MATERIALIZED_VIEWS:
                await conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(view)))
                await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(view)))
            refresh_s = time.monotonic() - refresh_started
            row: dict[str, Any] | None = await (
                await conn.execute(
                    "SELECT count(*) AS n, count(*) FILTER (WHERE expires_at <= now()) AS expired, "
                    "(SELECT count(*) FROM pg_inherits WHERE inhparent = 'pattern_events'::regclass) AS parts "
                    "FROM pattern_events"
                )
            ).fetchone()
    assert row is not None
    return Generated(
        events=events,
        total_events=int(row["n"]),
        expired=int(row["expired"]),
        partitions=int(row["parts"]),
        seconds=time.monotonic() - started,
        insert_seconds=insert_s,
        analyze_seconds=analyze_s,
        refresh_seconds=refresh_s,
    )


async def ensure_events(url: str, events: int, **kwargs: Any) -> Generated | None:
    """Generate ``events`` events unless exactly that many generated ones are already stored; returns
    what was generated, or ``None`` when nothing had to be."""
    if await count_generated(url) == events:
        return None
    return await generate(url, events=events, **kwargs)


@contextmanager
def open_stack(data_dir: Path | None = None) -> Iterator[Stack]:
    """The servers the ops scripts drive: ``TICKSTOCK_DATABASE_URL``/``_NATS_URL``/``_REDIS_URL`` when all
    three are set; else embedded ones in ``data_dir`` (kept, so generated events survive between runs);
    else a fresh embedded stack in a temporary folder. Hub processes started on it are stopped on exit."""
    import subprocess

    from harness import ROOT, Stack, embedded_stack, stop_hub

    from hub.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis

    urls = [os.environ.get(f"TICKSTOCK_{name}_URL") for name in ("DATABASE", "NATS", "REDIS")]
    if all(urls):
        stack = Stack(*urls)  # type: ignore[arg-type]
    elif data_dir is None:
        with embedded_stack() as stack:
            yield stack
        return
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        servers = (
            EmbeddedNats(data_dir / "nats"),
            EmbeddedPostgres(data_dir / "postgres"),
            EmbeddedRedis(data_dir / "redis"),
        )
        with servers[0] as nats_server, servers[1] as postgres, servers[2] as redis:
            stack = Stack(postgres.url, nats_server.url, redis.url, root=data_dir)
            subprocess.run(
                [sys.executable, "-m", "api.cli", "load-reference-data"],
                env=stack.env(8000),
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            try:
                yield stack
            finally:
                for hub in stack.hubs:
                    stop_hub(hub)
        return
    try:
        yield stack
    finally:
        for hub in stack.hubs:
            stop_hub(hub)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="rows per INSERT statement")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep embedded servers here (default: a temporary folder, removed on exit)",
    )
    args = parser.parse_args()
    kwargs = {"events": args.events, "days": args.days, "seed": args.seed, "chunk": args.chunk}
    url = os.environ.get("TICKSTOCK_DATABASE_URL")
    if url:
        print(asyncio.run(generate(url, **kwargs)).line())
        return 0
    with open_stack(args.data_dir) as stack:
        print(f"embedded stack in {stack.root}")
        print(asyncio.run(generate(stack.database_url, prepare=False, **kwargs)).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
