"""The writer: ingest batch → validate → store (one transaction) → clean publish → ack.

A writer pulls one durable consumer: an ingest partition's, pinned to one node at a time (see
:mod:`hub.partitions`), or ``hub-writer``, shared by every node. Batches are handled one after the
other, so a partition's events reach the clean stream in ingest order. Crash safety comes from the
order of the steps and from idempotency at each of them:

1. Invalid messages are dead-lettered (table, then DLQ stream) and *terminated*: no retry.
2. Valid events are inserted in one transaction, idempotent on the event id.
3. Every stored event without a clean-stream sequence is published to
   ``tickstock.patterns.<timeframe>.<symbol>`` with ``Nats-Msg-Id`` = event id (JetStream drops a
   repeat inside its window) and its CloudEvents headers (:mod:`hub.cloudevent`); its seq is recorded.
4. Only then are the ingest messages acknowledged.

Fault isolation (:mod:`hub.isolation`): one event the database refuses is dead-lettered alone
(``store_rejected``); its batch-mates are stored on the same delivery.

Partitions: only the months present in the batch, at most ``partitions_per_batch`` new ones per batch
(the maintenance task creates the coming days ahead). Events of further months are *carried* to the
next batch: kept in hand with ``in_progress`` (which restarts the ack wait without counting a
delivery), so waiting for a partition never burns ``max_deliver``; each batch creates the carried
months first, so they are served in order, and at most twice ``batch`` messages are in hand.

A crash anywhere before 4 redelivers the batch; step 2 finds the ids already stored, step 3
publishes only what has no sequence yet. Transient failures (PostgreSQL down, NATS timeouts) hand
the batch back with ``nak(delay)``, the delay doubling with each delivery, so an outage does not burn
``max_deliver`` in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType

import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from hub.clean_publish import publish_in_order
from hub.cloudevent import CloudEvents
from hub.deadletters import (
    ID_CONFLICT,
    STORE_REJECTED,
    TRANSIENT_ERRORS,
    DeadLetterer,
    is_transient,
)
from hub.isolation import Outcome, Pending, insert_isolating
from hub.jetstream import INGEST_STREAM, WRITER_CONSUMER
from hub.metrics import Metrics
from hub.model import EventError, PatternEvent
from hub.outage import DEFAULT_RETRY_BASE_S, DEFAULT_RETRY_MAX_S, Outage, wait_for_database
from hub.parsing import parse_event
from hub.producer import PRODUCER_HEADER, producer_of
from hub.pull import Puller, in_progress, nak
from hub.redelivery import published_elsewhere
from hub.subjects import check_subject, producer_subject
from hub.text import first_line
from hub.window import EventWindow
from store.patterns import StoredEvent, ensure_month_list, lock_instances, month_start, set_stream_seqs
from store.secrets import deployment_secret

__all__ = ["Writer"]

log = logging.getLogger("tickstock.writer")

DEFAULT_BATCH = 1000
DEFAULT_FETCH_TIMEOUT_S = 0.5
DEFAULT_STOP_TIMEOUT_S = 10.0
DEFAULT_PARTITIONS_PER_BATCH = 4
# Called after each batch commits with the events in it (e.g. the cache bumping generations); it must
# return quickly and not raise (a failure is logged and ingest goes on).
OnStored = Callable[[Sequence[PatternEvent]], Awaitable[None]]
# At least the ingest stream's largest message (or that message could never be fetched), and well
# under what the server buffers for one client (max_pending, 64 MB by default).
DEFAULT_FETCH_MAX_BYTES = 9 * 1024 * 1024


class Writer:
    """Runs the writer loop from ``__aenter__`` until ``__aexit__`` (which finishes the batch in
    hand, up to ``stop_timeout_s``, then cancels)."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        nc: NATS,
        catalog: CatalogCache,
        dead_letters: DeadLetterer,
        metrics: Metrics,
        batch: int = DEFAULT_BATCH,
        fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        on_stored: OnStored | None = None,
        window: EventWindow | None = None,
        partitions_per_batch: int = DEFAULT_PARTITIONS_PER_BATCH,
        cloud_events: CloudEvents | None = None,
        consumer: str = WRITER_CONSUMER,
        group: str | None = None,
    ) -> None:
        if partitions_per_batch < 1:
            raise ValueError("partitions_per_batch must be at least 1")
        self._window = window if window is not None else EventWindow()
        self._cloud_events = cloud_events if cloud_events is not None else CloudEvents()
        self._partitions_per_batch = partitions_per_batch
        self._producer_secret: bytes | None = None
        self.carried: list[Msg] = []  # kept for the next batch (see handle)
        self._pool, self._nc, self._js = pool, nc, nc.jetstream()
        self._fetch_max_bytes = fetch_max_bytes
        self._on_stored = on_stored
        self._catalog, self._dead_letters, self._metrics = catalog, dead_letters, metrics
        self._batch = batch
        self._consumer, self._group = consumer, group
        self.puller: Puller | None = None  # while the loop runs (its pin: this node holds the partition)
        self._fetch_timeout_s = fetch_timeout_s
        self._retry_base_s, self._retry_max_s = retry_base_s, retry_max_s
        self._stop_timeout_s = stop_timeout_s
        self._months: set[datetime] = set()
        self._outage = Outage(base_s=retry_base_s, max_s=retry_max_s)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    # -- one batch ---------------------------------------------------------------------------------
    async def _nak(self, msgs: Sequence[Msg], *, delay: float) -> float:
        """Hand ``msgs`` back with one delay. Within an outage the delay only grows, so whatever was
        handed back earlier is due earlier: redelivery keeps the ingest order. Returns the delay."""
        await nak(msgs, delay=delay)
        self._metrics.retries.inc(len(msgs))
        return delay

    async def _dead_letter(
        self,
        msg: Msg,
        *,
        reason: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        conflict_payload: bytes | None = None,
    ) -> bool:
        """Dead-letter and terminate ``msg``; False (and the message handed back) if that failed."""
        try:
            await self._dead_letters.record_ingest(
                msg, reason=reason, detail=detail, errors=errors, conflict_payload=conflict_payload
            )
        except TRANSIENT_ERRORS as exc:
            await self._nak([msg], delay=self._outage.failed(exc))
            return False
        with contextlib.suppress(NatsError):  # if lost, the redelivery re-records the same source key
            await msg.term()
        self._metrics.rejected.inc(reason=reason)
        return True

    def _parse(self, msg: Msg) -> PatternEvent:
        event = parse_event(
            msg.data, catalog=self._catalog.current, window=self._window, rules=self._dead_letters.rules
        )
        check_subject(event, producer_subject(msg.subject))
        return event

    async def _secret(self, msgs: Sequence[Msg]) -> bytes | None:
        """The producer-header key, read once, and only when some message claims a producer."""
        if self._producer_secret is None and any(PRODUCER_HEADER in (m.headers or {}) for m in msgs):
            self._producer_secret = await deployment_secret(self._pool, "producer")
        return self._producer_secret

    async def _ensure_partitions(self, events: Sequence[PatternEvent]) -> set[datetime]:
        """Create the partitions of the months in ``events`` that are not known to exist, at most
        ``partitions_per_batch`` of them, the months of the earliest events first. Returns the months
        that exist (their events can be stored now)."""
        wanted = list(dict.fromkeys(month_start(e.detected_at) for e in events))
        missing = [m for m in wanted if m not in self._months]
        if missing:
            async with self._pool.connection() as conn, conn.transaction():
                self._months |= await ensure_month_list(conn, missing, max_new=self._partitions_per_batch)
        return {m for m in wanted if m in self._months}

    async def _store(self, batch: list[Pending], msgs: Sequence[Msg]) -> Outcome:
        async with self._pool.connection() as conn, conn.transaction():
            await lock_instances(conn, [p.event for p in batch])  # before the savepoints: kept to the end
            outcome = await insert_isolating(conn, batch, heartbeat=lambda: in_progress(msgs))
            if (
                outcome.failed
                and not outcome.stored
                and all(isinstance(exc, psycopg.errors.QueryCanceled) for _, exc in outcome.failed)
                and any(m.metadata.num_delivered < 2 for p, _ in outcome.failed for m in p.msgs)
            ):
                # Nothing stored and every statement timed out: the database may be slow rather
                # than the events at fault. Transient on the first delivery; from the second on
                # (after a back-off) the events are judged alone.
                raise outcome.failed[0][1]
        return outcome

    async def _publish(self, events: Sequence[PatternEvent], stored: dict[str, StoredEvent]) -> None:
        # The hook (the cache's generation bump) runs while the batch is published, not before:
        # it must follow the commit closely, but the clean stream (and the websockets) need not wait.
        hooked = asyncio.ensure_future(self._stored(events))
        try:
            pending = [(stored[e.id], e) for e in events if stored[e.id].stream_seq is None]
            # Only headers the hub sets: a producer's (Nats-*, ce-*) never travel on. In segments: a symbol's
            # events stay in order even when a NATS server is lost mid-batch (hub.clean_publish).
            acks = await publish_in_order(
                self._js, [e for _, e in pending], headers=self._cloud_events.headers
            )
        finally:
            await hooked
        if pending:
            async with self._pool.connection() as conn, conn.transaction():
                await lock_instances(conn, [e for _, e in pending])
                await set_stream_seqs(conn, [(s, ack.seq) for (s, _), ack in zip(pending, acks, strict=True)])
            await self._stored([e for _, e in pending])  # their seq changed
        self._metrics.published.inc(sum(1 for a in acks if not a.duplicate))

    async def _stored(self, events: Sequence[PatternEvent]) -> None:
        if self._on_stored is None:
            return
        try:
            await self._on_stored(events)
        except Exception:
            log.exception("writer: on_stored hook failed")

    async def handle(self, msgs: Sequence[Msg], *, carried: Sequence[Msg] = ()) -> float:
        """Process one fetched batch. Returns 0, or the back-off in seconds when a transient failure
        handed the batch back (the loop then pauses as long, so that the batch is redelivered before
        anything newer is fetched and the ingest order is kept).

        Messages that cannot be settled in this batch without burning a delivery (their month's
        partition is over the per-batch bound, a second payload under an id of this batch, what was
        left when the timeout budget ran out) are kept for the next batch (:attr:`carried`, with
        ``in_progress`` so their ack wait restarts and no delivery is counted); pass them back as
        ``carried``, they are handled before ``msgs``."""
        started = time.perf_counter()
        self._metrics.batch_size.observe(len(msgs))
        self._metrics.ingested.inc(len(msgs))
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                self._metrics.redeliveries.inc()
        msgs = [*carried, *msgs]
        events: dict[str, Pending] = {}
        carry: list[Msg] = []
        for msg in msgs:
            try:
                event = self._parse(msg)
            except EventError as error:
                await self._dead_letter(msg, reason=error.reason, detail=error.detail, errors=error.fields)
                continue
            first = events.get(event.id)
            if first is None:
                events[event.id] = Pending(event, [msg])
            elif first.event.to_json_bytes() == event.to_json_bytes():
                first.msgs.append(msg)  # the same event twice in one batch: store once
            else:
                carry.append(msg)  # another payload under the same id: judged against the stored one next
        if not events and not carry:
            return 0.0
        batch = list(events.values())
        try:
            secret = await self._secret([m for p in batch for m in p.msgs])
            for p in batch:
                p.producer = producer_of(p.event, p.msgs[0].headers, secret)
            ready = await self._ensure_partitions([p.event for p in batch])
            deferred = [p for p in batch if month_start(p.event.detected_at) not in ready]
            batch = [p for p in batch if month_start(p.event.detected_at) in ready]
            outcome = await self._store(batch, msgs) if batch else Outcome()
            if deferred:
                self._metrics.partitions_deferred.inc(sum(len(p.msgs) for p in deferred))
            carry += [m for p in (*deferred, *outcome.unresolved) for m in p.msgs]
            stored = outcome.stored
            accepted = [p for p in batch if p.event.id in stored and stored[p.event.id].conflict is None]
            await self._publish([p.event for p in accepted], stored)
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, psycopg.errors.QueryCanceled):
                raise
            held = [m for p in events.values() for m in p.msgs] + [m for m in msgs if m in carry]
            return await self._nak(held, delay=self._outage.failed(exc))
        self._outage.recovered()
        await in_progress(carry)
        self.carried = carry
        for p, refusal in outcome.failed:
            detail = f"the database refused the event: {first_line(refusal)}"
            for msg in p.msgs:
                await self._dead_letter(msg, reason=STORE_REJECTED, detail=detail)
        for p in batch:
            result = stored.get(p.event.id)
            if result is None or result.conflict is None:
                continue
            for msg in p.msgs:
                self._metrics.id_conflicts.inc()
                await self._dead_letter(
                    msg,
                    reason=ID_CONFLICT,
                    conflict_payload=result.conflict,
                    detail=f"id {p.event.id} is already stored with a different payload "
                    f"(stored by {result.producer or 'unknown'}; this one from {p.producer})",
                )
        now = datetime.now(UTC)
        for p in accepted:
            result = stored[p.event.id]
            (self._metrics.stored if result.new else self._metrics.duplicates).inc()
            self._metrics.duplicates.inc(len(p.msgs) - 1)
            for msg in p.msgs:
                await msg.ack()
                self._metrics.store_latency.observe(max(0.0, (now - msg.metadata.timestamp).total_seconds()))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        self.batches += 1
        return 0.0

    # -- the loop ----------------------------------------------------------------------------------
    async def _fetch(self, puller: Puller, n: int) -> list[Msg]:
        if n < 1:
            return []
        try:
            return await puller.fetch(n, timeout=self._fetch_timeout_s)
        except TRANSIENT_ERRORS as exc:
            await asyncio.sleep(self._outage.failed(exc))
            return []

    async def _loop(self) -> None:
        async with Puller(
            self._nc,
            stream=INGEST_STREAM,
            consumer=self._consumer,
            max_bytes=self._fetch_max_bytes,
            group=self._group,
            settled=lambda msgs: published_elsewhere(self._pool, self._parse, msgs),
        ) as puller:
            self.puller = puller
            # The next batch is fetched while this one is stored and published (the waits overlap);
            # batches are still handled one after the other.
            ahead = asyncio.create_task(self._fetch(puller, self._batch))
            try:
                while not self._stopping.is_set():
                    msgs = await ahead
                    carried, self.carried = self.carried, []
                    # Nothing more is fetched while a full batch is carried: at most 2 x batch in hand.
                    ahead = asyncio.create_task(
                        self._fetch(puller, self._batch if len(carried) < self._batch else 0)
                    )
                    if not msgs and not carried:
                        continue
                    try:
                        backoff = await self.handle(msgs, carried=carried)
                    except Exception:  # a bug must not stop ingest: unacked messages are redelivered
                        log.exception("writer: batch failed unexpectedly; it will be redelivered")
                        backoff = self._retry_base_s
                    if backoff:
                        puller.refence()
                        # The batch fetched ahead is newer than the one handed back: hand it back
                        # with the same delay, then fetch nothing until the database answers again.
                        # Messages left in the stream meanwhile are not delivered, so an outage of
                        # any length costs each message one or two deliveries, not max_deliver.
                        await self._nak(await ahead, delay=backoff)
                        await wait_for_database(
                            self._pool,
                            delay=backoff,
                            max_s=self._retry_max_s,
                            stopping=self._stopping,
                            probed=lambda up: self._metrics.probes.inc(result="up" if up else "down"),
                        )
                        ahead = asyncio.create_task(self._fetch(puller, self._batch))
            finally:
                # Hand a batch fetched ahead (and what was carried) straight back for another node.
                leftover = (await ahead if not ahead.cancelled() else []) + self.carried
                self.carried = []
                for msg in leftover:
                    with contextlib.suppress(NatsError):
                        await msg.nak()

    async def __aenter__(self) -> Writer:
        self._task = asyncio.create_task(self._loop(), name="tickstock-writer")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self._stop_timeout_s)
        except TimeoutError:
            log.warning(
                "writer: batch not finished within %.0f s; cancelling (it will be redelivered)",
                self._stop_timeout_s,
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
