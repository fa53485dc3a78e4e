"""Dead letters in PostgreSQL: recorded idempotently, listed, shown, marked replayed, purged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "DeadLetter",
    "count_dead_letters",
    "get_dead_letter",
    "list_dead_letters",
    "mark_replayed",
    "note_failed_replay",
    "pending_dead_letters",
    "purge_dead_letters",
    "record_dead_letter",
]


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source_key: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    reason: str
    detail: str
    errors: list[dict[str, Any]]
    event_id: str | None
    deliveries: int
    first_seen: datetime
    last_seen: datetime
    replayed_at: datetime | None
    replay_count: int
    conflict_payload: bytes | None = None  # id_conflict: the payload already stored under the id

    def summary(self, *, preview: int = 200) -> dict[str, Any]:
        """A JSON-able view; the payload as text when it is UTF-8, cut to ``preview`` characters."""
        try:
            text: str | None = self.payload.decode()
        except UnicodeDecodeError:
            text = None
        return {
            "id": self.id,
            "source_key": self.source_key,
            "subject": self.subject,
            "reason": self.reason,
            "detail": self.detail,
            "errors": self.errors,
            "event_id": self.event_id,
            "deliveries": self.deliveries,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_count": self.replay_count,
            "payload_bytes": len(self.payload),
            "payload_preview": None if text is None else text[:preview],
            "payload_truncated": text is not None and len(text) > preview,
        }


_COLUMNS = (
    "id, source_key, subject, payload, headers, reason, detail, errors, event_id, deliveries, "
    "first_seen, last_seen, replayed_at, replay_count, conflict_payload"
)


def _row(r: Mapping[str, Any]) -> DeadLetter:
    fields: dict[str, Any] = {
        k: (bytes(v) if k in ("payload", "conflict_payload") and v is not None else v) for k, v in r.items()
    }
    return DeadLetter(**fields)


async def record_dead_letter(
    conn: psycopg.AsyncConnection[Any],
    *,
    source_key: str,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str],
    reason: str,
    detail: str = "",
    errors: Sequence[Mapping[str, Any]] = (),
    event_id: str | None = None,
    deliveries: int = 1,
    first_seen: datetime | None = None,
    conflict_payload: bytes | None = None,
) -> int:
    """Insert a dead letter, or update ``last_seen``/``deliveries`` if ``source_key`` is already
    recorded (a crash between recording and acknowledging re-records the same message). Returns its id."""
    cur = await conn.execute(
        "INSERT INTO dead_letters (source_key, subject, payload, headers, reason, detail, errors, event_id,"
        " deliveries, first_seen, conflict_payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()), %s) "
        "ON CONFLICT (source_key) DO UPDATE SET last_seen = now(), "
        " deliveries = greatest(dead_letters.deliveries, EXCLUDED.deliveries) RETURNING id",
        (
            source_key,
            subject,
            payload,
            Jsonb(dict(headers)),
            reason,
            detail,
            Jsonb(list(map(dict, errors))),
            event_id,
            deliveries,
            first_seen,
            conflict_payload,
        ),
    )
    row = await cur.fetchone()
    return int(row["id"])  # type: ignore[index]


async def get_dead_letter(conn: psycopg.AsyncConnection[Any], dead_letter_id: int) -> DeadLetter | None:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = %s", (dead_letter_id,))
    row = await cur.fetchone()
    return _row(row) if row else None


async def list_dead_letters(
    conn: psycopg.AsyncConnection[Any],
    *,
    reason: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
    replayed: bool | None = None,
) -> list[DeadLetter]:
    """Newest first; page with ``before_id`` (the last id of the previous page)."""
    where: list[str] = ["true"]
    params: list[Any] = []
    if reason is not None:
        where.append("reason = %s")
        params.append(reason)
    if before_id is not None:
        where.append("id < %s")
        params.append(before_id)
    if replayed is not None:
        where.append("replayed_at IS NOT NULL" if replayed else "replayed_at IS NULL")
    params.append(limit)
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM dead_letters WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s",
        params,
    )
    return [_row(r) for r in await cur.fetchall()]


async def count_dead_letters(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Dead letters not yet replayed, per reason."""
    cur = await conn.execute(
        "SELECT reason, count(*) AS n FROM dead_letters WHERE replayed_at IS NULL GROUP BY reason ORDER BY reason"
    )
    return {r["reason"]: int(r["n"]) for r in await cur.fetchall()}


async def pending_dead_letters(
    conn: psycopg.AsyncConnection[Any], *, reason: str, limit: int
) -> tuple[list[DeadLetter], int]:
    """The oldest ``limit`` dead letters with ``reason`` not yet replayed (oldest first, so a replay
    keeps their order), and how many more such letters there are."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM dead_letters WHERE reason = %s AND replayed_at IS NULL ORDER BY id LIMIT %s",
        (reason, limit),
    )
    letters = [_row(r) for r in await cur.fetchall()]
    if len(letters) < limit:
        return letters, 0
    cur = await conn.execute(
        "SELECT count(*) AS n FROM dead_letters WHERE reason = %s AND replayed_at IS NULL AND id > %s",
        (reason, letters[-1].id),
    )
    row = await cur.fetchone()
    return letters, int(row["n"]) if row else 0


async def note_failed_replay(
    conn: psycopg.AsyncConnection[Any],
    dead_letter_id: int,
    *,
    reason: str,
    detail: str,
    errors: Sequence[Mapping[str, Any]] = (),
) -> None:
    """A replay found the payload would be rejected again: the dead letter stays, not replayed, with
    the reason, detail and errors of this rejection, ``last_seen`` now."""
    await conn.execute(
        "UPDATE dead_letters SET reason = %s, detail = %s, errors = %s, last_seen = now() WHERE id = %s",
        (reason, detail, Jsonb(list(map(dict, errors))), dead_letter_id),
    )


async def mark_replayed(conn: psycopg.AsyncConnection[Any], dead_letter_id: int) -> None:
    await conn.execute(
        "UPDATE dead_letters SET replayed_at = now(), replay_count = replay_count + 1 WHERE id = %s",
        (dead_letter_id,),
    )


async def purge_dead_letters(
    conn: psycopg.AsyncConnection[Any],
    *,
    ids: Sequence[int] | None = None,
    reason: str | None = None,
    replayed_only: bool = False,
    everything: bool = False,
) -> int:
    """Delete dead letters matching every given condition; returns how many. Refuses an
    unconditional purge unless ``everything`` is set."""
    where: list[str] = []
    params: list[Any] = []
    if ids is not None:
        where.append("id = ANY(%s)")
        params.append(list(ids))
    if reason is not None:
        where.append("reason = %s")
        params.append(reason)
    if replayed_only:
        where.append("replayed_at IS NOT NULL")
    if not where and not everything:
        raise ValueError("purge needs ids, a reason, replayed_only, or everything=True")
    cur = await conn.execute(f"DELETE FROM dead_letters WHERE {' AND '.join(where) or 'true'}", params)
    return cur.rowcount
