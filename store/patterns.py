"""Pattern events in PostgreSQL: the writer's idempotent batch insert and the pattern catalog."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = ["StoredEvent", "ensure_months", "load_pattern_aliases", "month_start", "set_stream_seqs", "store_events"]


@dataclass(frozen=True)
class StoredEvent:
    """What the store holds for an event id after a batch: ``new`` is false when the id was already
    stored (a redelivery or a producer's duplicate); ``stream_seq`` is its clean-stream sequence once
    published."""

    id: str
    new: bool
    detected_at: datetime
    stream_seq: int | None


_INSERT = """
WITH input AS (
    SELECT * FROM unnest(
        %(id)s::text[], %(type)s::text[], %(symbol)s::text[], %(pattern)s::text[], %(timeframe)s::text[],
        %(confidence)s::real[], %(detected_at)s::timestamptz[], %(expires_at)s::timestamptz[],
        %(price)s::float8[], %(volume)s::float8[], %(levels)s::jsonb[], %(indicators)s::jsonb[],
        %(source)s::text[], %(payload)s::jsonb[]
    ) AS t(id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at, price, volume,
           levels, indicators, source, payload)
), fresh AS (
    INSERT INTO pattern_event_ids (id, detected_at)
    SELECT id, detected_at FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), inserted AS (
    INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at,
                                price, volume, levels, indicators, source, payload)
    SELECT i.id, i.type, i.symbol, i.pattern, i.timeframe, i.confidence, i.detected_at, i.expires_at,
           i.price, i.volume, i.levels, i.indicators, i.source, i.payload
    FROM input i JOIN fresh USING (id)
    RETURNING id, detected_at
)
SELECT i.id,
       ins.id IS NOT NULL AS new,
       coalesce(ins.detected_at, old.detected_at) AS detected_at,
       e.stream_seq
FROM input i
LEFT JOIN inserted ins ON ins.id = i.id
LEFT JOIN pattern_event_ids old ON old.id = i.id
LEFT JOIN pattern_events e ON e.id = old.id AND e.detected_at = old.detected_at
"""


def _columns(events: Sequence[Any]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "id", "type", "symbol", "pattern", "timeframe", "confidence", "detected_at", "expires_at", "price",
        "volume", "levels", "indicators", "source", "payload")}
    for e in events:
        cols["id"].append(e.id)
        cols["type"].append(e.type)
        cols["symbol"].append(e.symbol)
        cols["pattern"].append(e.pattern)
        cols["timeframe"].append(e.timeframe)
        cols["confidence"].append(e.confidence)
        cols["detected_at"].append(e.detected_at)
        cols["expires_at"].append(e.expires_at)
        cols["price"].append(e.price)
        cols["volume"].append(e.volume)
        cols["levels"].append(json.dumps(e.levels))
        cols["indicators"].append(json.dumps(e.indicators))
        cols["source"].append(e.source)
        cols["payload"].append(e.to_json_bytes().decode())
    return cols


async def store_events(conn: psycopg.AsyncConnection[Any], events: Sequence[Any]) -> dict[str, StoredEvent]:
    """Insert ``events`` (schema v1 :class:`hub.events.PatternEvent`, unique ids) in one statement.

    Idempotent on the event id: an id stored before is left as it was and reported with
    ``new=False`` and its stored sequence. Run it inside the caller's transaction. Raises psycopg's
    errors (a missing partition is ``CheckViolation``; the caller creates partitions first).
    """
    if not events:
        return {}
    cur = await conn.execute(_INSERT, _columns(events))
    rows = await cur.fetchall()
    return {r["id"]: StoredEvent(r["id"], r["new"], r["detected_at"], r["stream_seq"]) for r in rows}


async def set_stream_seqs(conn: psycopg.AsyncConnection[Any], published: Sequence[tuple[StoredEvent, int]]) -> None:
    """Record the clean-stream sequence of each published event."""
    if not published:
        return
    await conn.execute(
        "UPDATE pattern_events e SET stream_seq = u.seq "
        "FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[]) AS u(id, detected_at, seq) "
        "WHERE e.id = u.id AND e.detected_at = u.detected_at",
        ([s.id for s, _ in published], [s.detected_at for s, _ in published], [seq for _, seq in published]),
    )


async def ensure_months(conn: psycopg.AsyncConnection[Any], lo: datetime, hi: datetime) -> None:
    """Make sure the partitions for [lo, hi] exist (idempotent, concurrency-safe)."""
    await conn.execute("SELECT tickstock_ensure_partitions(%s, %s)", (lo, hi))


async def load_pattern_aliases(pool: AsyncConnectionPool) -> list[tuple[str, list[str]]]:
    """``(canonical name, aliases)`` of every pattern definition, for :class:`hub.events.PatternCatalog`."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT name, aliases FROM pattern_definitions ORDER BY name")
        return [(r["name"], list(r["aliases"])) for r in await cur.fetchall()]


def month_start(value: datetime) -> datetime:
    value = value.astimezone(timezone.utc)
    return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
