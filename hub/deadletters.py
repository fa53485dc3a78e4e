"""Dead letters: recording them (table, then the DLQ stream), turning max-deliveries advisories into
dead letters, and replaying them into ingest: one by id, or every one with a reason at once
(:meth:`DeadLetterer.replay_reason`, e.g. each ``unknown_pattern`` once its name is defined).

A dead letter keeps the original payload byte for byte and the original headers (escaped: no control
characters), the reason (one of :data:`hub.model.REASONS`, or ``max_deliveries_exceeded`` /
``store_rejected`` / ``id_conflict``), a human detail (escaped, one line), field errors, the delivery
count and when it was first and last seen; an ``id_conflict`` also keeps the payload stored under the id.

What the hub re-publishes carries only headers the hub sets itself (:data:`DLQ_HEADERS`): a producer's
``Nats-*`` header (``Nats-Expected-Stream``, ``Nats-Msg-Id`` …) would change what JetStream does with
the hub's own publish. A JetStream 4xx answer is permanent: it is counted and logged, never retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from hub.errors import HubError, ReplayError
from hub.metrics import Metrics
from hub.model import EventError
from hub.parsing import parse_event
from hub.producer import Published, publish_to_ingest
from hub.subjects import DLQ_PREFIX, ingest_subject, producer_subject
from hub.text import escape_control
from hub.upstream import DEFAULT_RULES, UpstreamRules
from hub.window import EventWindow
from store.deadletters import (
    DeadLetter,
    get_dead_letter,
    mark_replayed,
    note_failed_replay,
    pending_dead_letters,
    record_dead_letter,
)

__all__ = [
    "DLQ_HEADERS",
    "EVENT_CAUSED_ERRORS",
    "ID_CONFLICT",
    "MAX_REPLAY_BATCH",
    "TRANSIENT_ERRORS",
    "BulkReplay",
    "DeadLetterer",
    "ReplayError",
    "ReplayResult",
    "ingest_source_key",
    "is_permanent_api_error",
    "is_transient",
]

log = logging.getLogger("tickstock.deadletters")

MAX_DELIVERIES = "max_deliveries_exceeded"
STORE_REJECTED = "store_rejected"
ID_CONFLICT = "id_conflict"
MAX_REPLAY_BATCH = 10_000  # dead letters one bulk replay handles; the next run takes the rest
DETAIL_HEADER_LIMIT = 500  # characters of TickStock-DLQ-Detail
MAX_STORED_HEADERS = 64  # original headers kept in dead_letters.headers
MAX_STORED_HEADER_CHARS = 1024  # per name or value
# The only headers on a DLQ message; all are set by the hub.
DLQ_HEADERS = (
    "Nats-Msg-Id",
    "TickStock-DLQ-Id",
    "TickStock-DLQ-Reason",
    "TickStock-DLQ-Detail",
    "TickStock-Original-Subject",
    "TickStock-Deliveries",
)

# Failures that say "try again later", never "this message is bad". Use :func:`is_transient`: by
# class alone this tuple also holds errors one event causes (a statement timeout is an
# OperationalError), which are that event's fault and permanent for it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    NatsError,
    OSError,
    TimeoutError,
)
# Database errors a statement raises because of the rows it was given, although they are
# OperationalErrors: the statement timeout (QueryCanceled) and a program limit (e.g. an index row too
# large). The writer finds the event that causes them and dead-letters it alone.
EVENT_CAUSED_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.errors.QueryCanceled,
    psycopg.errors.ProgramLimitExceeded,
)


def is_permanent_api_error(exc: BaseException) -> bool:
    """A JetStream API answer in the 4xx range (bad request, wrong expected stream …): retrying the
    same request cannot succeed. 404 (not found) included."""
    return isinstance(exc, APIError) and exc.code is not None and 400 <= int(exc.code) < 500


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says "the infrastructure is not answering, try the whole batch later": a lost
    connection, a pool or NATS timeout, JetStream 5xx/503. False for what an input caused: a
    statement timeout or program limit on its row (:data:`EVENT_CAUSED_ERRORS`), a JetStream 4xx, and
    every other database error."""
    if isinstance(exc, EVENT_CAUSED_ERRORS) or is_permanent_api_error(exc):
        return False
    return isinstance(exc, TRANSIENT_ERRORS)


def ingest_source_key(stream_seq: int, payload: bytes) -> str:
    """The key that makes dead-lettering one ingest message idempotent: its stream sequence and a digest
    of its payload. The digest keeps a recreated stream (whose sequences start again at 1) from
    folding a new message into an old dead letter; the writer and the advisory watcher build the same
    key for the same message."""
    return f"ingest:{stream_seq}:{hashlib.sha256(payload).hexdigest()[:16]}"


def _stored_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """The original headers as kept for inspection: escaped, bounded in number and size."""
    kept: dict[str, str] = {}
    for key, value in list((headers or {}).items())[:MAX_STORED_HEADERS]:
        kept[escape_control(key, limit=MAX_STORED_HEADER_CHARS)] = escape_control(
            value, limit=MAX_STORED_HEADER_CHARS
        )
    return kept


def _event_id(payload: bytes) -> str | None:
    """The producer's id when the payload is a JSON object with a string id (best effort)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurd nesting
        return None
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])[:128]
    return None


@dataclass(frozen=True)
class ReplayResult:
    dead_letter_id: int
    event_id: str
    subject: str
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class BulkReplay:
    """What :meth:`DeadLetterer.replay_reason` did: the letters ``replayed``, those ``failed`` again
    (dead-letter id, the reason and detail of this rejection: they stay dead letters, not replayed),
    and how many letters with the reason are left ``beyond`` this batch."""

    reason: str
    replayed: list[ReplayResult]
    failed: list[tuple[int, str, str]]
    beyond: int

    def failed_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, reason, _ in self.failed:
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))


class DeadLetterer:
    """Records dead letters: first in the ``dead_letters`` table (the record), then on the DLQ stream
    (``tickstock.dlq.<reason>``, deduplicated by source key) for subscribers. Raises on failure so
    the caller can hand the message back instead of losing it."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        js: JetStreamContext,
        metrics: Metrics,
        window: EventWindow | None = None,
        rules: UpstreamRules = DEFAULT_RULES,
    ) -> None:
        self._pool = pool
        self._js = js
        self._metrics = metrics
        self._window = window
        self.rules = rules  # how an upstream message is read: by replays, the writer and the bridge alike

    async def record_ingest(
        self,
        msg: Msg,
        *,
        reason: str,
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        conflict_payload: bytes | None = None,
    ) -> int:
        """:meth:`record` for a message of the ingest stream: its source key (stream sequence and
        payload digest), subject, payload, headers, deliveries and first delivery time."""
        md = msg.metadata
        return await self.record(
            source_key=ingest_source_key(md.sequence.stream, msg.data),
            subject=msg.subject,
            payload=msg.data,
            headers=msg.headers,
            reason=reason,
            detail=detail,
            errors=list(errors or []),
            deliveries=md.num_delivered,
            first_seen=md.timestamp,
            conflict_payload=conflict_payload,
        )

    async def record(
        self,
        *,
        source_key: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        reason: str,
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        deliveries: int = 1,
        first_seen: datetime | None = None,
        conflict_payload: bytes | None = None,
    ) -> int:
        """Record the dead letter in the table, then publish it to ``tickstock.dlq.<reason>`` with the
        hub's own headers only. Raises the table's or NATS's transient errors (the caller hands the
        message back); a JetStream 4xx on the DLQ publish is permanent: logged, counted in
        ``tickstock_dlq_publish_refused_total``, and the table row stands as the record."""
        detail = escape_control(detail)
        subject = escape_control(producer_subject(subject))  # not the partition the stream stored it under
        async with self._pool.connection() as conn:
            dead_letter_id = await record_dead_letter(
                conn,
                source_key=source_key,
                subject=subject,
                payload=payload,
                headers=_stored_headers(headers),
                reason=reason,
                detail=detail,
                errors=errors or [],
                event_id=_event_id(payload),
                deliveries=deliveries,
                first_seen=first_seen,
                conflict_payload=conflict_payload,
            )
        dlq_headers = {
            "Nats-Msg-Id": escape_control(f"dlq-{source_key}", limit=DETAIL_HEADER_LIMIT),
            "TickStock-DLQ-Id": str(dead_letter_id),
            "TickStock-DLQ-Reason": escape_control(reason),
            "TickStock-DLQ-Detail": escape_control(detail, limit=DETAIL_HEADER_LIMIT),
            "TickStock-Original-Subject": escape_control(subject, limit=DETAIL_HEADER_LIMIT),
            "TickStock-Deliveries": str(deliveries),
        }
        try:
            await self._js.publish(f"{DLQ_PREFIX}.{reason}", payload, headers=dlq_headers, timeout=5)
        except APIError as exc:
            if not is_permanent_api_error(exc):
                raise
            self._metrics.dlq_publish_refused.inc(code=str(exc.code))
            log.warning(
                "dead letter %s: the DLQ stream refused it (%s %s); the table keeps it",
                dead_letter_id,
                exc.code,
                escape_control(exc.description or "", limit=200),
            )
        self._metrics.dead_letters.inc(reason=reason)
        log.info(
            "dead letter %s: %s (%s) from %s",
            dead_letter_id,
            reason,
            escape_control(detail, limit=200),
            escape_control(subject, limit=200),
        )
        return dead_letter_id

    async def record_invalid(
        self,
        *,
        source_key: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        error: EventError,
        deliveries: int = 1,
        first_seen: datetime | None = None,
    ) -> int:
        return await self.record(
            source_key=source_key,
            subject=subject,
            payload=payload,
            headers=headers,
            reason=error.reason,
            detail=error.detail,
            errors=[dict(f) for f in error.fields],
            deliveries=deliveries,
            first_seen=first_seen,
        )

    async def replay(
        self, dead_letter_id: int, *, catalog: CatalogCache, payload: bytes | None = None
    ) -> ReplayResult:
        """Publish the dead letter's payload (or a corrected ``payload``) to ingest and mark it replayed.

        The payload is validated first: one that would be rejected again raises :class:`ReplayError`
        with the reason, and nothing is published. NATS or PostgreSQL failing raises :class:`HubError`
        (a 503 on the API, where it was a 500).
        """
        try:
            async with self._pool.connection() as conn:
                letter = await get_dead_letter(conn, dead_letter_id)
            if letter is None:
                raise ReplayError(f"no dead letter {dead_letter_id}", kind="not_found")
            return await self._replay(letter, catalog=catalog, payload=payload)
        except EventError as exc:
            raise ReplayError(
                f"the payload would be rejected again: {exc.reason}: {exc.detail}",
                kind="rejected",
                reason=exc.reason,
            ) from None
        except TRANSIENT_ERRORS as exc:
            raise HubError(f"replay of dead letter {dead_letter_id} failed: {exc!r}") from exc

    async def replay_reason(self, reason: str, *, catalog: CatalogCache, limit: int) -> BulkReplay:
        """Replay the oldest ``limit`` (1..:data:`MAX_REPLAY_BATCH`) dead letters with ``reason`` not
        yet replayed, in the order they were recorded, each as :meth:`replay` does. A letter whose
        payload would be rejected again stays a dead letter, not replayed, now with the reason and
        detail of this rejection (and is reported in ``failed``). Running it twice replays nothing
        twice: what was replayed is marked so. Raises :class:`ValueError` for a bad ``limit`` and
        :class:`HubError` when NATS or PostgreSQL fail midway (what was done stays done; run it again)."""
        if not 1 <= limit <= MAX_REPLAY_BATCH:
            raise ValueError(f"limit must be between 1 and {MAX_REPLAY_BATCH}")
        try:
            async with self._pool.connection() as conn:
                letters, beyond = await pending_dead_letters(conn, reason=reason, limit=limit)
            replayed: list[ReplayResult] = []
            failed: list[tuple[int, str, str]] = []
            for letter in letters:
                try:
                    replayed.append(await self._replay(letter, catalog=catalog))
                except EventError as exc:
                    failed.append((letter.id, exc.reason, exc.detail))
                    async with self._pool.connection() as conn:
                        await note_failed_replay(
                            conn,
                            letter.id,
                            reason=exc.reason,
                            detail=escape_control(exc.detail),
                            errors=exc.fields,
                        )
        except TRANSIENT_ERRORS as exc:
            raise HubError(f"replay of {reason} dead letters stopped: {exc!r}") from exc
        log.info(
            "replayed %d %s dead letter(s), %d rejected again, %d left",
            len(replayed),
            reason,
            len(failed),
            beyond,
        )
        return BulkReplay(reason, replayed, failed, beyond)

    async def _replay(
        self, letter: DeadLetter, *, catalog: CatalogCache, payload: bytes | None = None
    ) -> ReplayResult:
        """Validate, publish to ingest, mark replayed; raises :class:`EventError` (nothing published)."""
        event = parse_event(
            letter.payload if payload is None else payload,
            catalog=catalog.current,
            window=self._window,
            rules=self.rules,
        )
        # A replay gets its own message id: the rejected original's id is still in JetStream's
        # duplicate window, and the store is idempotent on the event id anyway.
        msg_id = f"{event.id}#replay-{letter.id}-{letter.replay_count + 1}"
        published: Published = await publish_to_ingest(self._js, event, msg_id=msg_id)
        async with self._pool.connection() as conn:
            await mark_replayed(conn, letter.id)
        log.info("replayed dead letter %s as event %s (ingest seq %s)", letter.id, event.id, published.seq)
        return ReplayResult(
            letter.id,
            event.id,
            ingest_subject(event.timeframe, event.symbol),
            published.seq,
            published.duplicate,
        )
