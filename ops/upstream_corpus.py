"""``python -m ops.upstream_corpus``: TickStock's upstream corpus through the Redis bridge, end to end.

Starts embedded NATS, PostgreSQL and Redis, migrates and loads the reference data, opens the hub with the
bridge inside (``TICKSTOCK_BRIDGE_REDIS_URL``), publishes every message of :mod:`ops.upstream_messages` on
its Redis channel, twice, and prints ``layout → stored symbol, pattern, timeframe, confidence,
detected_at`` with the dead letters. Exits 1 when a row is missing or doubled or a dead letter is not
one the corpus expects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

from ops.upstream_messages import CORPUS, Case, Row, z  # noqa: E402

__all__ = ["dead_letters", "main", "publish", "report", "stored_rows", "subscribed"]

Key = tuple[str, str, str, str, str]  # type, symbol, pattern, timeframe, detected_at


async def publish(client: aioredis.Redis, cases: list[Case], *, subscribers: int = 1) -> None:
    """Publish each case on its channel; raises ``RuntimeError`` if fewer than ``subscribers`` got it."""
    for case in cases:
        got = await client.publish(case.channel, case.message)
        if got < subscribers:
            raise RuntimeError(f"{got} subscriber(s) on {case.channel}, expected {subscribers}")


async def stored_rows(pool: AsyncConnectionPool) -> Counter[tuple[Key, float]]:
    """Every stored event as ((type, symbol, pattern, timeframe, detected_at), confidence), counted."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT type, symbol, pattern, timeframe, detected_at, (payload->>'confidence')::float8 AS c"
            " FROM pattern_events"
        )
        rows: list[dict[str, Any]] = await cur.fetchall()  # type: ignore[assignment]
    return Counter(
        ((r["type"], r["symbol"], r["pattern"], r["timeframe"], z(r["detected_at"])), r["c"]) for r in rows
    )


async def dead_letters(pool: AsyncConnectionPool) -> list[tuple[bytes, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT payload, reason FROM dead_letters ORDER BY id")
        rows: list[dict[str, Any]] = await cur.fetchall()  # type: ignore[assignment]
    return [(bytes(r["payload"]), r["reason"]) for r in rows]


async def subscribed(client: aioredis.Redis, channels: tuple[str, ...], *, n: int = 1) -> bool:
    """True when every channel has at least ``n`` subscribers."""
    counts = await client.pubsub_numsub(*channels)
    return all(int(c) >= n for _, c in counts)


def _key(row: Row) -> tuple[Key, float]:
    return (row.type, row.symbol, row.pattern, row.timeframe, row.detected_at), row.confidence


def report(
    cases: list[Case], stored: Counter[tuple[Key, float]], letters: list[tuple[bytes, str]]
) -> tuple[str, list[str]]:
    """The table, and what is wrong (empty when every row is stored once and every dead letter expected)."""
    problems: list[str] = []
    lines = [
        "| layout | channel | type | symbol | pattern | timeframe | confidence | detected_at | stored |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    expected: Counter[tuple[Key, float]] = Counter()
    for case in cases:
        for row in case.rows:
            expected[_key(row)] += 1
            n = stored[_key(row)]
            lines.append(
                f"| {case.layout} | `{case.channel}` | {row.type} | {row.symbol} | {row.pattern} | {row.timeframe} "
                f"| {row.confidence:g} | {row.detected_at} | {n}× |"
            )
    for key, n in stored.items():
        if n != 1 or key not in expected:
            problems.append(f"stored {n}×, expected {expected[key]}×: {key}")
    for key in expected:
        if key not in stored:
            problems.append(f"not stored: {key}")
    wanted = {case.message: case.reason for case in cases if case.reason}
    lines += ["", "| dead letter reason | layout | why |", "|---|---|---|"]
    for payload, reason in letters:
        case_reason = wanted.pop(payload, None)
        if case_reason != reason:
            problems.append(f"unexpected dead letter {reason}: {payload[:80]!r}")
            continue
        why = next(c.why for c in cases if c.message == payload)
        layout = next(c.layout for c in cases if c.message == payload)
        lines.append(f"| {reason} | {layout} | {why} |")
    problems += [f"no dead letter {reason} for {payload[:80]!r}" for payload, reason in wanted.items()]
    rows = sum(len(c.rows) for c in cases)
    lines.append("")
    lines.append(
        f"{len(cases)} messages, {rows} rows expected, {sum(stored.values())} stored, "
        f"{len(letters)} dead letters ({sum(1 for c in cases if c.reason)} expected)"
    )
    return "\n".join(lines), problems


async def main() -> int:
    from api.app import open_hub
    from api.cli.resources import embedded_servers, prepare_database
    from api.settings import Settings
    from store.pool import open_pool
    from tests.support import wait_for, wait_settled

    with tempfile.TemporaryDirectory(prefix="tickstock-corpus-") as tmp:
        base = Settings(data_dir=Path(tmp), maintenance_interval_s=3600)
        async with embedded_servers(base, durable=False) as full:
            await prepare_database(full, reference=True)
            settings = dataclasses.replace(full, bridge_redis_url=full.redis_url)
            client = aioredis.Redis.from_url(settings.redis_url or "")
            async with (
                open_pool(settings.database_url or "", min_size=1, max_size=2) as pool,
                open_hub(settings) as hub,
            ):
                metrics = hub.metrics.bridge_messages
                items = sum(max(1, len(c.rows)) for c in CORPUS)
                await wait_for(lambda: subscribed(client, settings.bridge_channel_list), what="subscribed")
                for round_ in (1, 2):  # the second round must not add a row
                    await publish(client, CORPUS)
                    await wait_for(lambda r=round_: metrics.total() >= r * items, timeout=60, what="bridged")
                    await wait_settled(hub.js, timeout=60)
                stored, letters = await stored_rows(pool), await dead_letters(pool)
            await client.aclose()
    text, problems = report(CORPUS, stored, letters)
    print(text)
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
