"""Pattern instances in the store: which event of an instance is the latest, late and replayed events,
two writers storing one instance at once, and migration 0009 on events stored before it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from hub.catalog import PatternCatalog
from hub.isolation import MAX_RACE_RETRIES, Pending, insert_isolating
from hub.model import PatternEvent
from hub.parsing import parse_event
from store.migrate import available_migrations, migrate
from store.patterns import (
    ensure_months,
    instance_lock_keys,
    lock_instances,
    set_stream_seqs,
    store_events,
)
from tests.conftest import Servers
from tests.support import admin_url_for, database_url_for, wait_for

DETECTED_AT = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
CATALOG = PatternCatalog.permissive()


def event(
    event_id: str, kind: str, *, symbol: str = "AAPL", confidence: float = 0.5, **extra: Any
) -> PatternEvent:
    body = {
        "id": event_id,
        "type": kind,
        "symbol": symbol,
        "pattern": "price_gap",
        "timeframe": "daily",
        "confidence": confidence,
        "detected_at": DETECTED_AT.isoformat(),
        **extra,
    }
    return parse_event(body, catalog=CATALOG)


async def store(pool: AsyncConnectionPool, *events: PatternEvent) -> dict[str, bool]:
    """Store ``events`` as one batch; returns id -> new."""
    async with pool.connection() as conn, conn.transaction():
        await ensure_months(conn, DETECTED_AT, DETECTED_AT)
        stored = await store_events(conn, list(events))
    return {i: s.new for i, s in stored.items()}


async def instance(pool: AsyncConnectionPool, symbol: str) -> dict[str, bool]:
    """id -> superseded for every stored event of ``symbol``'s instance."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, superseded FROM pattern_events WHERE symbol = %s AND detected_at = %s ORDER BY id",
            (symbol, DETECTED_AT),
        )
        return {r["id"]: r["superseded"] for r in await cur.fetchall()}


async def test_an_update_supersedes_the_detection_and_an_expiry_the_update(pool: AsyncConnectionPool) -> None:
    await store(pool, event("a-1", "pattern_detected", symbol="AA"))
    assert await instance(pool, "AA") == {"a-1": False}
    await store(pool, event("a-2", "pattern_updated", symbol="AA", confidence=0.7))
    assert await instance(pool, "AA") == {"a-1": True, "a-2": False}
    await store(pool, event("a-3", "pattern_updated", symbol="AA", confidence=0.8))  # a later update wins
    assert await instance(pool, "AA") == {"a-1": True, "a-2": True, "a-3": False}
    await store(pool, event("a-4", "pattern_expired", symbol="AA"))
    assert await instance(pool, "AA") == {"a-1": True, "a-2": True, "a-3": True, "a-4": False}


async def test_late_and_replayed_events_never_displace_a_stronger_one(pool: AsyncConnectionPool) -> None:
    await store(pool, event("b-upd", "pattern_updated", symbol="BB"))
    # The detection arrives after its update (late), under its own id: kept as history only.
    assert await store(pool, event("b-det", "pattern_detected", symbol="BB")) == {"b-det": True}
    assert await instance(pool, "BB") == {"b-det": True, "b-upd": False}
    await store(pool, event("b-exp", "pattern_expired", symbol="BB"))
    # An update after the expiry, and the first update redelivered: the expiry stays the latest.
    assert await store(
        pool, event("b-late", "pattern_updated", symbol="BB"), event("b-upd", "pattern_updated", symbol="BB")
    ) == {
        "b-late": True,
        "b-upd": False,
    }
    assert await instance(pool, "BB") == {"b-det": True, "b-exp": False, "b-late": True, "b-upd": True}


async def test_in_one_batch_the_rank_then_the_batch_order_decides(pool: AsyncConnectionPool) -> None:
    batch = [
        event("c-1", "pattern_detected", symbol="CC"),
        event("c-2", "pattern_updated", symbol="CC"),
        event("c-3", "pattern_detected", symbol="CC"),  # a replayed detection, after its update
        event("c-4", "pattern_updated", symbol="CC"),
        event("d-1", "pattern_detected", symbol="DD"),
        event("d-2", "pattern_detected", symbol="DD"),  # the same detection re-sent under a new id
    ]
    await store(pool, *batch)
    assert await instance(pool, "CC") == {"c-1": True, "c-2": True, "c-3": True, "c-4": False}
    assert await instance(pool, "DD") == {"d-1": True, "d-2": False}


async def test_other_instances_are_not_touched(pool: AsyncConnectionPool) -> None:
    await store(pool, event("e-1", "pattern_detected", symbol="EE"))
    other_time = event(
        "e-2", "pattern_updated", symbol="EE", detected_at=(DETECTED_AT + timedelta(seconds=1)).isoformat()
    )
    other_frame = event("e-3", "pattern_updated", symbol="EE", timeframe="weekly")
    await store(pool, other_time, other_frame)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, superseded FROM pattern_events WHERE symbol = 'EE' ORDER BY id")
        assert {r["id"]: r["superseded"] for r in await cur.fetchall()} == {
            "e-1": False,
            "e-2": False,
            "e-3": False,
        }


async def test_the_database_refuses_two_latest_events_of_one_instance(pool: AsyncConnectionPool) -> None:
    await store(pool, event("f-1", "pattern_detected", symbol="FF"))
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(
                "INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at, payload) "
                "VALUES ('f-2', 'pattern_updated', 'FF', 'price_gap', 'daily', 0.5, %s, '{}')",
                (DETECTED_AT,),
            )


async def _waiting_on_a_lock(pool: AsyncConnectionPool, pid: int) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
    return row is not None and row["wait_event_type"] == "Lock"


@pytest.mark.parametrize(("second", "latest"), [("pattern_updated", "two"), ("pattern_detected", "one")])
async def test_two_writers_storing_one_instance_at_once_leave_one_latest_event(
    pool: AsyncConnectionPool, database_url: str, second: str, latest: str
) -> None:
    """The first writer's update is not committed yet when the second stores its event: the second's
    insert waits for it, loses the race (a unique violation), is run again and sees it."""
    symbol = f"G{second[8]}".upper()
    first = event(f"{symbol}-one", "pattern_updated", symbol=symbol)
    other = event(f"{symbol}-two", second, symbol=symbol)
    async with pool.connection() as conn, conn.transaction():
        await ensure_months(conn, DETECTED_AT, DETECTED_AT)
    async with (
        await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as one,
        await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as two,
    ):
        async with one.transaction():
            await store_events(one, [first])

            async def writer_two() -> Any:
                async with two.transaction():
                    return await insert_isolating(
                        two, [Pending(other, [])], heartbeat=lambda: asyncio.sleep(0)
                    )

            racing = asyncio.create_task(writer_two())
            await wait_for(
                lambda: _waiting_on_a_lock(pool, two.info.backend_pid), timeout=20, what="the wait"
            )
        outcome = await racing
    assert outcome.races == 1 and not outcome.failed and outcome.stored[other.id].new
    assert await instance(pool, symbol) == {first.id: latest != "one", other.id: latest != "two"}
    assert MAX_RACE_RETRIES >= 1


def test_an_instance_has_one_lock_key_in_every_process_and_a_batch_sorts_them() -> None:
    one = event("K-1", "pattern_detected", symbol="KEYA")
    same = parse_event(  # the same instance, its moment written in another offset
        {**one.model_dump(mode="json"), "id": "K-2", "detected_at": "2026-11-20T10:00:00-05:00"},
        catalog=CATALOG,
    )
    others = [event(f"K-{s}", "pattern_detected", symbol=s) for s in ("KEYB", "KEYC", "KEYD")]
    keys = instance_lock_keys([one, same, *others])
    assert instance_lock_keys([same]) == instance_lock_keys([one])
    assert keys == sorted(keys) and len(keys) == 4
    assert all(-(2**31) <= k < 2**31 for k in keys)  # int4, the advisory lock's two-key form
    assert instance_lock_keys([event("K-3", "pattern_detected", symbol="KEYA", timeframe="hourly")]) != (
        instance_lock_keys([one])
    )


async def _wait_event(pool: AsyncConnectionPool, pid: int) -> tuple[str, str] | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cur.fetchone()
    return None if row is None else (row["wait_event_type"], row["wait_event"])


async def test_a_stream_sequence_update_waits_for_the_node_retiring_its_rows_on_the_instance_lock(
    pool: AsyncConnectionPool, database_url: str
) -> None:
    """One node records the stream sequences of the events it just stored while another node stores
    newer events of the same instances, which retire those rows. Both take the instances' locks first,
    so the update waits on the lock and touches no row meanwhile; waiting on the rows instead, the two
    statements could lock them in opposite orders (the deadlock two hubs showed under load)."""
    published = [event(f"SEQ{n}-old", "pattern_detected", symbol=f"SEQ{n}") for n in (1, 2)]
    newer = [event(f"SEQ{n}-new", "pattern_updated", symbol=f"SEQ{n}") for n in (2, 1)]
    async with pool.connection() as conn, conn.transaction():
        await ensure_months(conn, DETECTED_AT, DETECTED_AT)
        stored = await store_events(conn, published)
    async with (
        await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as storing,
        await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as recording,
    ):
        async with storing.transaction():
            await lock_instances(storing, newer)
            await store_events(storing, newer)

            async def record() -> None:
                async with recording.transaction():
                    await lock_instances(recording, published)
                    await set_stream_seqs(
                        recording, [(stored[e.id], 100 + n) for n, e in enumerate(published)]
                    )

            racing = asyncio.create_task(record())
            await wait_for(
                lambda: _waiting_on_a_lock(pool, recording.info.backend_pid), timeout=20, what="the wait"
            )
            assert await _wait_event(pool, recording.info.backend_pid) == ("Lock", "advisory")
        await racing
    assert await instance(pool, "SEQ1") == {"SEQ1-new": False, "SEQ1-old": True}
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, stream_seq FROM pattern_events WHERE id = ANY(%s) ORDER BY id",
            ([e.id for e in published],),
        )
        assert [(r["id"], r["stream_seq"]) for r in await cur.fetchall()] == [
            ("SEQ1-old", 100),
            ("SEQ2-old", 101),
        ]


@pytest.fixture
def empty_database_url(servers: Servers) -> Iterator[str]:
    admin = admin_url_for(servers.database_url)
    name = f"t{os.getpid()}_instances_{os.urandom(4).hex()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url_for(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migration_0009_marks_the_events_stored_before_it(empty_database_url: str) -> None:
    before, rest = (
        [m for m in available_migrations() if m.version < 9],
        [m for m in available_migrations() if m.version >= 9],
    )
    rows = [  # id, type, symbol, received_at offset (s), stream_seq
        ("h-1", "pattern_detected", "HH", 0, 1),
        ("h-2", "pattern_updated", "HH", 10, 2),
        ("h-3", "pattern_detected", "HH", 20, 3),  # late: stays history
        ("h-4", "pattern_updated", "HH", 5, 4),  # an earlier update (received before h-2)
        ("i-1", "pattern_expired", "II", 0, 5),
        ("i-2", "pattern_updated", "II", 30, 6),
        ("j-1", "pattern_detected", "JJ", 0, None),
    ]
    async with await psycopg.AsyncConnection.connect(
        empty_database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        await migrate(conn, migrations=before)
        await conn.execute("SELECT tickstock_ensure_partitions(%s, %s)", (DETECTED_AT, DETECTED_AT))
        for event_id, kind, symbol, offset, seq in rows:
            await conn.execute(
                "INSERT INTO pattern_events (id, type, symbol, pattern, timeframe, confidence, detected_at,"
                " payload, stream_seq, received_at) VALUES (%s, %s, %s, 'price_gap', 'daily', 0.5, %s, '{}', %s, %s)",
                (event_id, kind, symbol, DETECTED_AT, seq, DETECTED_AT + timedelta(seconds=offset)),
            )
        assert [m.version for m in await migrate(conn, migrations=[*before, *rest])] == [
            m.version for m in rest
        ]
        cur = await conn.execute("SELECT id, superseded FROM pattern_events ORDER BY id")
        marks = {r["id"]: r["superseded"] for r in await cur.fetchall()}
        cur = await conn.execute("SELECT symbol, id FROM latest_patterns ORDER BY symbol")
        latest = {r["symbol"]: r["id"] for r in await cur.fetchall()}
    assert marks == {
        "h-1": True,
        "h-2": False,
        "h-3": True,
        "h-4": True,
        "i-1": False,
        "i-2": True,
        "j-1": False,
    }
    assert latest == {"HH": "h-2", "II": "i-1", "JJ": "j-1"}
