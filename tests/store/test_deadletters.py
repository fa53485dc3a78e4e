"""Dead letters in PostgreSQL: record, get, list, count, mark replayed, purge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from store.deadletters import (
    DeadLetter,
    count_dead_letters,
    get_dead_letter,
    list_dead_letters,
    mark_replayed,
    purge_dead_letters,
    record_dead_letter,
)

Conn = psycopg.AsyncConnection[Any]


@pytest_asyncio.fixture(loop_scope="session")
async def conn(pool: AsyncConnectionPool) -> AsyncIterator[Conn]:
    """A connection on an empty ``dead_letters`` table."""
    async with pool.connection() as c:
        await c.execute("DELETE FROM dead_letters")
        yield c


async def _record(
    conn: Conn, key: str, *, reason: str = "not_json", payload: bytes = b"{oops", **extra: Any
) -> int:
    return await record_dead_letter(
        conn,
        source_key=key,
        subject="tickstock.ingest.daily.AAPL",
        payload=payload,
        headers={"Nats-Msg-Id": key},
        reason=reason,
        **extra,
    )


async def _ids(conn: Conn, **filters: Any) -> list[int]:
    return [d.id for d in await list_dead_letters(conn, **filters)]


async def test_record_keeps_everything_and_get_returns_it(conn: Conn) -> None:
    seen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    payload = b'{"id": "ev-1", "confidence": 85}'
    dead_letter_id = await record_dead_letter(
        conn,
        source_key="ingest:1",
        subject="tickstock.ingest.daily.AAPL",
        payload=payload,
        headers={"Nats-Msg-Id": "ev-1", "X-Trace": "abc"},
        reason="confidence_out_of_range",
        detail="confidence: must be at most 1",
        errors=[{"loc": "confidence", "msg": "too big"}],
        event_id="ev-1",
        deliveries=3,
        first_seen=seen,
    )
    letter = await get_dead_letter(conn, dead_letter_id)
    assert letter is not None
    assert letter.id == dead_letter_id
    assert letter.source_key == "ingest:1"
    assert letter.subject == "tickstock.ingest.daily.AAPL"
    assert letter.payload == payload and isinstance(letter.payload, bytes)
    assert letter.headers == {"Nats-Msg-Id": "ev-1", "X-Trace": "abc"}
    assert letter.reason == "confidence_out_of_range"
    assert letter.detail == "confidence: must be at most 1"
    assert letter.errors == [{"loc": "confidence", "msg": "too big"}]
    assert letter.event_id == "ev-1"
    assert letter.deliveries == 3
    assert letter.first_seen == seen
    assert letter.last_seen > seen
    assert letter.replayed_at is None and letter.replay_count == 0


async def test_record_defaults(conn: Conn) -> None:
    letter = await get_dead_letter(conn, await _record(conn, "ingest:defaults"))
    assert letter is not None
    assert (letter.detail, letter.errors, letter.event_id, letter.deliveries) == ("", [], None, 1)
    assert letter.first_seen == letter.last_seen  # both now() of the one statement


async def test_recording_the_same_source_key_again_updates_the_one_row(conn: Conn) -> None:
    first_id = await _record(conn, "ingest:7", deliveries=2, detail="first")
    first = await get_dead_letter(conn, first_id)
    again_id = await _record(conn, "ingest:7", deliveries=5, detail="second", reason="other")
    assert again_id == first_id
    again = await get_dead_letter(conn, first_id)
    assert first is not None and again is not None
    assert again.deliveries == 5
    assert again.last_seen > first.last_seen
    assert again.first_seen == first.first_seen
    assert (again.reason, again.detail) == ("not_json", "first")  # the original record stands
    # A lower delivery count (an older redelivery recorded late) never lowers it.
    await _record(conn, "ingest:7", deliveries=1)
    latest = await get_dead_letter(conn, first_id)
    assert latest is not None and latest.deliveries == 5
    assert await _ids(conn) == [first_id]


async def test_get_unknown_is_none(conn: Conn) -> None:
    assert await get_dead_letter(conn, 987_654_321) is None


async def test_list_is_newest_first_with_filters_and_paging(conn: Conn) -> None:
    ids = [
        await _record(conn, f"ingest:list-{i}", reason="not_json" if i % 2 else "unknown_pattern")
        for i in range(7)
    ]
    assert await _ids(conn) == ids[::-1]
    assert await _ids(conn, reason="not_json") == [ids[5], ids[3], ids[1]]
    assert await _ids(conn, reason="nothing_like_this") == []
    page1 = await _ids(conn, limit=3)
    page2 = await _ids(conn, limit=3, before_id=page1[-1])
    page3 = await _ids(conn, limit=3, before_id=page2[-1])
    assert page1 + page2 + page3 == ids[::-1]
    assert len(page3) == 1
    assert await _ids(conn, limit=3, before_id=ids[0]) == []
    assert await _ids(conn, reason="unknown_pattern", before_id=ids[4], limit=1) == [ids[2]]
    await mark_replayed(conn, ids[3])
    await mark_replayed(conn, ids[6])
    assert await _ids(conn, replayed=True) == [ids[6], ids[3]]
    assert await _ids(conn, replayed=False) == [ids[5], ids[4], ids[2], ids[1], ids[0]]
    assert await _ids(conn, replayed=True, reason="not_json") == [ids[3]]


async def test_count_per_reason_leaves_out_replayed(conn: Conn) -> None:
    assert await count_dead_letters(conn) == {}
    a = [await _record(conn, f"ingest:count-a{i}", reason="not_json") for i in range(3)]
    await _record(conn, "ingest:count-b", reason="too_large")
    assert await count_dead_letters(conn) == {"not_json": 3, "too_large": 1}
    await mark_replayed(conn, a[0])
    assert await count_dead_letters(conn) == {"not_json": 2, "too_large": 1}


async def test_mark_replayed_stamps_and_counts(conn: Conn) -> None:
    dead_letter_id = await _record(conn, "ingest:replay")
    await mark_replayed(conn, dead_letter_id)
    once = await get_dead_letter(conn, dead_letter_id)
    await mark_replayed(conn, dead_letter_id)
    twice = await get_dead_letter(conn, dead_letter_id)
    assert once is not None and twice is not None
    assert once.replay_count == 1 and once.replayed_at is not None
    assert twice.replay_count == 2 and twice.replayed_at is not None and twice.replayed_at > once.replayed_at
    await mark_replayed(conn, 987_654_321)  # unknown: nothing to mark, no error


async def test_purge_by_ids_reason_replayed_and_everything(conn: Conn) -> None:
    ids = [
        await _record(conn, f"ingest:purge-{i}", reason=("not_json", "too_large", "unknown_type")[i % 3])
        for i in range(9)
    ]
    assert await purge_dead_letters(conn, ids=[ids[0], ids[1], 987_654_321]) == 2
    assert await purge_dead_letters(conn, ids=[]) == 0
    assert await purge_dead_letters(conn, reason="unknown_type") == 3  # 2, 5, 8
    assert await _ids(conn) == [ids[7], ids[6], ids[4], ids[3]]
    # Conditions combine: only those with the reason *and* among the ids.
    assert await purge_dead_letters(conn, ids=[ids[3], ids[4]], reason="not_json") == 1
    assert await _ids(conn) == [ids[7], ids[6], ids[4]]
    await mark_replayed(conn, ids[6])
    await mark_replayed(conn, ids[7])
    assert await purge_dead_letters(conn, replayed_only=True, reason="too_large") == 1  # 7
    assert await purge_dead_letters(conn, replayed_only=True) == 1  # 6
    assert await _ids(conn) == [ids[4]]
    await _record(conn, "ingest:purge-last")
    assert await purge_dead_letters(conn, everything=True) == 2
    assert await _ids(conn) == []


async def test_purge_without_a_condition_is_refused(conn: Conn) -> None:
    dead_letter_id = await _record(conn, "ingest:keep")
    with pytest.raises(ValueError, match="everything=True"):
        await purge_dead_letters(conn)
    with pytest.raises(ValueError):
        await purge_dead_letters(conn, replayed_only=False, everything=False)
    assert await _ids(conn) == [dead_letter_id]


def _letter(payload: bytes, **changes: Any) -> DeadLetter:
    seen = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": 1,
        "source_key": "ingest:1",
        "subject": "tickstock.ingest.daily.AAPL",
        "payload": payload,
        "headers": {"Nats-Msg-Id": "m"},
        "reason": "not_json",
        "detail": "d",
        "errors": [],
        "event_id": None,
        "deliveries": 1,
        "first_seen": seen,
        "last_seen": seen,
        "replayed_at": None,
        "replay_count": 0,
    }
    fields.update(changes)
    return DeadLetter(**fields)


def test_summary_is_json_ready_with_a_text_preview() -> None:
    replayed = datetime(2026, 3, 2, tzinfo=UTC)
    summary = _letter(b'{"id": "x"}', replayed_at=replayed, replay_count=1).summary()
    json.dumps(summary)
    assert summary["payload_preview"] == '{"id": "x"}'
    assert summary["payload_bytes"] == 11
    assert summary["payload_truncated"] is False
    assert summary["first_seen"] == "2026-03-01T12:00:00+00:00"
    assert summary["replayed_at"] == "2026-03-02T00:00:00+00:00"
    assert "payload" not in summary and "headers" not in summary


def test_summary_cuts_long_text_by_characters() -> None:
    letter = _letter("é".encode() * 300)
    summary = letter.summary()
    assert summary["payload_bytes"] == 600
    assert summary["payload_preview"] == "é" * 200
    assert summary["payload_truncated"] is True
    exact = letter.summary(preview=300)
    assert exact["payload_preview"] == "é" * 300 and exact["payload_truncated"] is False
    assert summary["replayed_at"] is None


def test_summary_of_a_binary_payload_has_no_preview() -> None:
    summary = _letter(b"\xff\xfe\x00binary" * 100).summary(preview=10)
    assert summary["payload_preview"] is None
    assert summary["payload_truncated"] is False
    assert summary["payload_bytes"] == 900
