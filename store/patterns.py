"""Pattern events in PostgreSQL: the writer's idempotent batch insert and the pattern catalog."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = [
    "StoredEvent",
    "ensure_month_list",
    "ensure_months",
    "instance_lock_keys",
    "load_pattern_aliases",
    "lock_instances",
    "month_start",
    "published_ids",
    "set_stream_seqs",
    "store_events",
]


@dataclass(frozen=True)
class StoredEvent:
    """What the store holds for an event id after a batch: ``new`` is false when the id was already
    stored (a redelivery or a producer's duplicate); ``stream_seq`` is its clean-stream sequence once
    published. ``conflict`` holds the stored canonical payload when the id was already stored with a
    *different* payload (an ``id_conflict``: nothing was written for this event); ``producer`` is who
    produced the stored row."""

    id: str
    new: bool
    detected_at: datetime
    stream_seq: int | None
    conflict: bytes | None = None
    producer: str | None = None


# The batch travels as one JSON array (the events' canonical v1 encodings, already built for the
# clean stream): the server parses it in C, which is far cheaper than adapting 14 arrays client-side.
_INPUT = """
    SELECT e->>'id' AS id, e->>'type' AS type, e->>'symbol' AS symbol, e->>'pattern' AS pattern,
           e->>'timeframe' AS timeframe, (e->>'confidence')::real AS confidence,
           (e->>'detected_at')::timestamptz AS detected_at, (e->>'expires_at')::timestamptz AS expires_at,
           (e->>'price')::float8 AS price, (e->>'volume')::float8 AS volume,
           coalesce(e->'levels', '{}') AS levels, coalesce(e->'indicators', '{}') AS indicators,
           coalesce(e->>'source', 'unknown') AS source, e AS payload,
           tickstock_event_rank(e->>'type') AS rank, a.n
    FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(e, n)
"""
_INSTANCE = "(symbol, pattern, timeframe, detected_at)"

# The insert. Of the new events of one instance, the one with the highest rank (then the last in the
# batch) is the latest: inserted so when the instance has no stored latest row; inserted superseded
# and reported in ``promote`` when it outranks (or equals: the later one wins) the stored latest row,
# which _RETIRE and _PROMOTE then swap; inserted superseded for good when the stored row outranks it.
# The swap takes separate statements because the unique index on the latest rows is checked row by
# row: the old latest row must be superseded before the new one is not. Pure detections of new
# instances, the common case, need the one statement.
_INSERT = f"""
WITH input AS ({_INPUT}), who AS (
    SELECT producer, n FROM unnest(%s::text[]) WITH ORDINALITY AS p(producer, n)
), fresh AS (
    INSERT INTO pattern_event_ids (id, detected_at)
    SELECT id, detected_at FROM input ORDER BY id  -- one order for every writer: no cycle on a shared id
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), winners AS (
    SELECT DISTINCT ON {_INSTANCE} i.id, i.symbol, i.pattern, i.timeframe, i.detected_at, i.rank
    FROM input i JOIN fresh USING (id)
    ORDER BY i.symbol, i.pattern, i.timeframe, i.detected_at, i.rank DESC, i.n DESC
), judged AS (
    -- LATERAL ... LIMIT 1: one index lookup per instance, whatever the planner thinks of the batch size
    SELECT w.id, stored.rank IS NULL AS latest, stored.rank <= w.rank AS promote FROM winners w
    LEFT JOIN LATERAL (
        SELECT tickstock_event_rank(e.type) AS rank FROM pattern_events e
        WHERE {_INSTANCE} = (w.symbol, w.pattern, w.timeframe, w.detected_at) AND NOT e.superseded
        LIMIT 1
    ) stored ON true
), inserted AS (
    INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, expires_at,
                                price, volume, levels, indicators, source, payload, producer, superseded)
    SELECT i.id, i.type, i.symbol, i.pattern, i.timeframe, i.confidence, i.detected_at, i.expires_at,
           i.price, i.volume, i.levels, i.indicators, i.source, i.payload, who.producer,
           i.id NOT IN (SELECT id FROM judged WHERE latest)
    FROM input i JOIN fresh USING (id) LEFT JOIN who USING (n)
    RETURNING id, detected_at
)
SELECT i.id,
       ins.id IS NOT NULL AS new,
       coalesce(ins.detected_at, old.detected_at) AS detected_at,
       e.stream_seq,
       CASE WHEN ins.id IS NULL AND e.payload IS DISTINCT FROM i.payload THEN e.payload::text END AS conflict,
       coalesce(e.producer, who.producer) AS producer,
       coalesce(j.promote, false) AS promote
FROM input i
LEFT JOIN who USING (n)
LEFT JOIN inserted ins ON ins.id = i.id
LEFT JOIN judged j ON j.id = ins.id
LEFT JOIN pattern_event_ids old ON old.id = i.id
LEFT JOIN pattern_events e ON e.id = old.id AND e.detected_at = old.detected_at
"""
# The promoted events by their primary key: the ids are unique, so "id in ids and detected_at in times"
# is exactly those rows, and both arrays are index conditions (never a join the planner could hash
# against a whole partition).
_PROMOTED = "id = ANY(%(ids)s::text[]) AND detected_at = ANY(%(times)s::timestamptz[])"

# Only when the insert reported events to promote: their instances' stored latest rows, if they still
# do not outrank them, are superseded ...
_RETIRE = f"""
WITH promoted AS MATERIALIZED (
    SELECT id, symbol, pattern, timeframe, detected_at, tickstock_event_rank(type) AS rank
    FROM pattern_events WHERE {_PROMOTED}
), replaced AS MATERIALIZED (
    SELECT old.id, old.detected_at FROM promoted p
    CROSS JOIN LATERAL (
        SELECT c.id, c.detected_at FROM pattern_events c
        WHERE {_INSTANCE} = (p.symbol, p.pattern, p.timeframe, p.detected_at)
          AND NOT c.superseded AND c.id <> p.id AND tickstock_event_rank(c.type) <= p.rank
        LIMIT 1
    ) old
)
UPDATE pattern_events SET superseded = true
WHERE id = ANY(ARRAY(SELECT id FROM replaced)) AND detected_at = ANY(ARRAY(SELECT detected_at FROM replaced))
"""
# ... then the new events become the latest. A row the retire left (one stored meanwhile that outranks
# the new event) makes this a unique violation: the caller runs the batch again, which then sees it.
_PROMOTE = f"UPDATE pattern_events SET superseded = false WHERE {_PROMOTED}"


# Every write to a pattern instance's rows (the insert with its retire and promote, the stream sequence
# update after the publish) runs in a transaction that first takes the instance's advisory lock, a
# batch's locks in one global order (the sorted keys). Two hub nodes storing events of one instance at
# once then queue on the lock, instead of on each other's rows, which they would otherwise reach in
# different orders: one node's stream-sequence update and the other's retire of the same rows were a
# deadlock (a second of deadlock_timeout, the batch handed back). Keys are the two-int4 form in their
# own namespace, apart from every other advisory lock (those take one bigint key).
INSTANCE_LOCKS = 0x54494B49  # "TIKI"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instance_lock_keys(events: Iterable[Any]) -> list[int]:
    """The sorted, distinct advisory lock keys (int4) of the pattern instances of ``events`` (each with
    ``symbol``, ``pattern``, ``timeframe`` and an aware ``detected_at``). The same instance gives the
    same key in every process; two instances may share one (they are then serialised needlessly,
    never wrongly)."""
    keys: set[int] = set()
    for e in events:
        micros = (e.detected_at - _EPOCH) // timedelta(microseconds=1)
        name = f"{e.symbol}\x1f{e.pattern}\x1f{e.timeframe}\x1f{micros}".encode()
        keys.add(int.from_bytes(hashlib.blake2b(name, digest_size=4).digest(), "big", signed=True))
    return sorted(keys)


async def lock_instances(conn: psycopg.AsyncConnection[Any], events: Iterable[Any]) -> None:
    """Take the advisory locks of the instances of ``events`` for the rest of the caller's transaction
    (outside any savepoint: a savepoint rolled back would release them), waiting for any transaction
    that holds one. Call it before :func:`store_events` or :func:`set_stream_seqs` on those events."""
    keys = instance_lock_keys(events)
    if keys:
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(%s, k)) FROM unnest(%s::int4[]) AS k", (INSTANCE_LOCKS, keys)
        )


async def store_events(
    conn: psycopg.AsyncConnection[Any], events: Sequence[Any], producers: Sequence[str | None] | None = None
) -> dict[str, StoredEvent]:
    """Insert ``events`` (schema v1 :class:`hub.model.PatternEvent`, unique ids), each with its
    ``producers[i]`` (None: unknown), and keep each pattern instance's latest event (``superseded =
    false``; the rule is in migration 0009 and ``docs/nats-contract.md``). One statement, and two more
    when an event replaces a stored latest event (an update, an expiry, a detection sent again).

    Idempotent on the event id: an id stored before is left as it was and reported with
    ``new=False`` and its stored sequence; when the stored canonical payload differs from the event's
    (JSON equality, so key order does not matter) the result carries it in ``conflict``. Run it
    inside the caller's transaction (a savepoint), after :func:`lock_instances` on ``events`` when
    other writers may store the same instances. Raises psycopg's errors: a missing partition is
    ``CheckViolation`` (the caller creates partitions first); ``UniqueViolation`` means another
    transaction stored an event of the same instance meanwhile, and running it again (in a new
    savepoint) sees that event and succeeds.
    """
    if not events:
        return {}
    batch = (b"[" + b",".join(e.to_json_bytes() for e in events) + b"]").decode()
    who = list(producers) if producers is not None else [None] * len(events)
    cur = await conn.execute(_INSERT, (batch, who))
    rows: list[dict[str, Any]] = await cur.fetchall()  # pool rows are dicts
    promoted = [r for r in rows if r["promote"]]
    if promoted:
        keys = {"ids": [r["id"] for r in promoted], "times": [r["detected_at"] for r in promoted]}
        await conn.execute(_RETIRE, keys)
        await conn.execute(_PROMOTE, keys)
    return {
        r["id"]: StoredEvent(
            r["id"],
            r["new"],
            r["detected_at"],
            r["stream_seq"],
            None if r["conflict"] is None else r["conflict"].encode(),
            r["producer"],
        )
        for r in rows
    }


async def set_stream_seqs(
    conn: psycopg.AsyncConnection[Any], published: Sequence[tuple[StoredEvent, int]]
) -> None:
    """Record the clean-stream sequence of each published event; in a transaction that holds the
    events' :func:`lock_instances` when other writers may store the same instances."""
    if not published:
        return
    await conn.execute(
        "UPDATE pattern_events e SET stream_seq = u.seq "
        "FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[]) AS u(id, detected_at, seq) "
        "WHERE e.id = u.id AND e.detected_at = u.detected_at",
        ([s.id for s, _ in published], [s.detected_at for s, _ in published], [seq for _, seq in published]),
    )


_PUBLISHED = f"""
WITH input AS ({_INPUT})
SELECT i.id FROM input i
JOIN pattern_event_ids old ON old.id = i.id
JOIN pattern_events e ON e.id = old.id AND e.detected_at = old.detected_at
WHERE e.stream_seq IS NOT NULL AND e.payload = i.payload
"""


async def published_ids(conn: psycopg.AsyncConnection[Any], events: Sequence[Any]) -> set[str]:
    """The ids of ``events`` stored with the same payload and already published (a clean-stream
    sequence recorded): their work is done, whoever did it."""
    if not events:
        return set()
    batch = (b"[" + b",".join(e.to_json_bytes() for e in events) + b"]").decode()
    cur = await conn.execute(_PUBLISHED, (batch,))
    return {r["id"] for r in await cur.fetchall()}


async def ensure_months(conn: psycopg.AsyncConnection[Any], lo: datetime, hi: datetime) -> None:
    """Make sure the partitions for [lo, hi] exist (idempotent, concurrency-safe)."""
    await conn.execute("SELECT tickstock_ensure_partitions(%s, %s)", (lo, hi))


async def ensure_month_list(
    conn: psycopg.AsyncConnection[Any], months: Sequence[datetime], *, max_new: int
) -> set[datetime]:
    """Make sure the partitions of ``months`` (month starts, most urgent first) exist, creating at most
    ``max_new``; returns the months that exist afterwards (all of them on a hypertable). Never creates
    a month that was not asked for."""
    if not months:
        return set()
    cur = await conn.execute(
        "SELECT tickstock_ensure_months(%s::timestamptz[], %s) AS ready", (list(months), max_new)
    )
    row: dict[str, Any] | None = await cur.fetchone()  # pool rows are dicts
    return {month_start(m) for m in (row["ready"] if row else [])}


async def load_pattern_aliases(pool: AsyncConnectionPool) -> list[tuple[str, list[str]]]:
    """``(canonical name, aliases)`` of every pattern definition, for :class:`hub.catalog.PatternCatalog`."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT name, aliases FROM pattern_definitions ORDER BY name")
        rows: list[dict[str, Any]] = await cur.fetchall()  # type: ignore[assignment]  # pool rows are dicts
        return [(r["name"], list(r["aliases"])) for r in rows]


def month_start(value: datetime) -> datetime:
    value = value.astimezone(UTC)
    return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
