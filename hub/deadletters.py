"""Dead letters: recording them (table, then the DLQ stream), turning max-deliveries advisories into
dead letters, and replaying them into ingest.

A dead letter keeps the original payload and headers byte for byte, the reason (one of
:data:`hub.model.REASONS`, or ``max_deliveries_exceeded`` / ``store_rejected``), a human detail,
field errors, the delivery count and when it was first and last seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from hub.errors import ReplayError
from hub.jetstream import ADVISORY_STREAM, DEADLETTER_CONSUMER, INGEST_STREAM
from hub.metrics import Metrics
from hub.model import EventError
from hub.parsing import parse_event
from hub.producer import Published, publish_to_ingest
from hub.subjects import DLQ_PREFIX, ingest_subject
from store.deadletters import get_dead_letter, mark_replayed, record_dead_letter

__all__ = ["TRANSIENT_ERRORS", "AdvisoryWatcher", "DeadLetterer", "ReplayError", "ReplayResult"]

log = logging.getLogger("tickstock.deadletters")

MAX_DELIVERIES = "max_deliveries_exceeded"
STORE_REJECTED = "store_rejected"
RETRY_DELAY_S = 2.0

# Failures that say "try again later", never "this message is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, NatsError, OSError, TimeoutError)


def _event_id(payload: bytes) -> str | None:
    """The producer's id when the payload is a JSON object with a string id (best effort)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
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


class DeadLetterer:
    """Records dead letters: first in the ``dead_letters`` table (the record), then on the DLQ stream
    (``tickstock.dlq.<reason>``, deduplicated by source key) for subscribers. Raises on failure so
    the caller can hand the message back instead of losing it."""

    def __init__(self, *, pool: AsyncConnectionPool, js: JetStreamContext, metrics: Metrics) -> None:
        self._pool = pool
        self._js = js
        self._metrics = metrics

    async def record(self, *, source_key: str, subject: str, payload: bytes, headers: dict[str, str] | None,
                     reason: str, detail: str = "", errors: list[dict[str, Any]] | None = None,
                     deliveries: int = 1, first_seen: datetime | None = None) -> int:
        headers = {k: str(v) for k, v in (headers or {}).items()}
        async with self._pool.connection() as conn:
            dead_letter_id = await record_dead_letter(
                conn, source_key=source_key, subject=subject, payload=payload, headers=headers, reason=reason,
                detail=detail, errors=errors or [], event_id=_event_id(payload), deliveries=deliveries,
                first_seen=first_seen)
        dlq_headers = {
            **headers, "Nats-Msg-Id": f"dlq-{source_key}", "TickStock-DLQ-Id": str(dead_letter_id),
            "TickStock-DLQ-Reason": reason, "TickStock-DLQ-Detail": detail[:500],
            "TickStock-Original-Subject": subject, "TickStock-Deliveries": str(deliveries),
        }
        await self._js.publish(f"{DLQ_PREFIX}.{reason}", payload, headers=dlq_headers, timeout=5)
        self._metrics.dead_letters.inc(reason=reason)
        log.info("dead letter %s: %s (%s) from %s", dead_letter_id, reason, detail[:200], subject)
        return dead_letter_id

    async def record_invalid(self, *, source_key: str, subject: str, payload: bytes, headers: dict[str, str] | None,
                             error: EventError, deliveries: int = 1, first_seen: datetime | None = None) -> int:
        return await self.record(source_key=source_key, subject=subject, payload=payload, headers=headers,
                                 reason=error.reason, detail=error.detail, errors=[dict(f) for f in error.fields],
                                 deliveries=deliveries, first_seen=first_seen)

    async def replay(self, dead_letter_id: int, *, catalog: CatalogCache, payload: bytes | None = None) -> ReplayResult:
        """Publish the dead letter's payload (or a corrected ``payload``) to ingest and mark it replayed.

        The payload is validated first: one that would be rejected again raises :class:`ReplayError`
        with the reason, and nothing is published.
        """
        async with self._pool.connection() as conn:
            letter = await get_dead_letter(conn, dead_letter_id)
        if letter is None:
            raise ReplayError(f"no dead letter {dead_letter_id}", kind="not_found")
        body = letter.payload if payload is None else payload
        try:
            event = parse_event(body, catalog=catalog.current)
        except EventError as exc:
            raise ReplayError(f"the payload would be rejected again: {exc.reason}: {exc.detail}",
                              kind="rejected", reason=exc.reason) from None
        # A replay gets its own message id: the rejected original's id is still in JetStream's
        # duplicate window, and the store is idempotent on the event id anyway.
        msg_id = f"{event.id}#replay-{dead_letter_id}-{letter.replay_count + 1}"
        published: Published = await publish_to_ingest(self._js, event, msg_id=msg_id)
        async with self._pool.connection() as conn:
            await mark_replayed(conn, dead_letter_id)
        log.info("replayed dead letter %s as event %s (ingest seq %s)", dead_letter_id, event.id, published.seq)
        return ReplayResult(dead_letter_id, event.id, ingest_subject(event.timeframe, event.symbol), published.seq,
                            published.duplicate)


class AdvisoryWatcher:
    """Consumes the writer's max-deliveries advisories (kept in their own stream, so none is missed
    while the hub is down): fetches the original message by stream sequence, records it as a dead
    letter with its headers, then removes it from the ingest work queue."""

    def __init__(self, *, js: JetStreamContext, dead_letters: DeadLetterer, batch: int = 50) -> None:
        self._js = js
        self._dead_letters = dead_letters
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.handled = 0

    async def _handle(self, advisory: dict[str, Any]) -> None:
        seq = int(advisory["stream_seq"])
        deliveries = int(advisory.get("deliveries", 0))
        try:
            original = await self._js.get_msg(INGEST_STREAM, seq)
        except NotFoundError:
            log.info("advisory for ingest seq %s: message already gone", seq)
            return
        await self._dead_letters.record(
            source_key=f"ingest:{seq}", subject=original.subject or "", payload=original.data or b"",
            headers=original.headers, reason=MAX_DELIVERIES,
            detail=f"not stored after {deliveries} deliveries (consumer {advisory.get('consumer')})",
            deliveries=deliveries, first_seen=original.time)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(INGEST_STREAM, seq)
        self.handled += 1

    async def _loop(self) -> None:
        sub = await self._js.pull_subscribe_bind(DEADLETTER_CONSUMER, stream=ADVISORY_STREAM)
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self._batch, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except TRANSIENT_ERRORS as exc:
                    log.warning("advisory fetch failed: %s", exc)
                    await asyncio.sleep(RETRY_DELAY_S)
                    continue
                for msg in msgs:
                    try:
                        await self._handle(json.loads(msg.data))
                    except TRANSIENT_ERRORS as exc:
                        log.warning("advisory %s not handled yet: %s", msg.metadata.sequence.stream, exc)
                        await msg.nak(delay=RETRY_DELAY_S)
                        continue
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("unreadable advisory dropped: %s (%r)", exc, msg.data[:200])
                    await msg.ack()
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def __aenter__(self) -> AdvisoryWatcher:
        self._task = asyncio.create_task(self._loop(), name="tickstock-advisories")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:  # pragma: no cover - the loop checks the flag every second
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
