"""The writer: ingest batch → validate → store (one transaction) → clean publish → ack.

Every hub node runs one writer on the same durable pull consumer, so JetStream spreads the work and
each message is handled by one node at a time. Crash safety comes from the order of the steps and
from idempotency at each of them:

1. Invalid messages are dead-lettered (table, then DLQ stream) and *terminated*: no retry.
2. Valid events are inserted in one transaction, idempotent on the event id.
3. Every stored event without a clean-stream sequence is published to
   ``tickstock.patterns.<timeframe>.<symbol>`` with ``Nats-Msg-Id`` = event id (JetStream drops a
   repeat inside its duplicate window), and its sequence is recorded.
4. Only then are the ingest messages acknowledged.

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
from hub.deadletters import STORE_REJECTED, TRANSIENT_ERRORS, DeadLetterer
from hub.jetstream import INGEST_STREAM, WRITER_CONSUMER
from hub.metrics import Metrics
from hub.model import EventError, PatternEvent
from hub.parsing import parse_event
from hub.pull import Puller
from hub.subjects import check_subject, clean_subject
from store.patterns import StoredEvent, ensure_months, month_start, set_stream_seqs, store_events
from store.pool import ping

__all__ = ["Writer", "retry_delay"]

log = logging.getLogger("tickstock.writer")

DEFAULT_BATCH = 1000
DEFAULT_FETCH_TIMEOUT_S = 0.5
DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_MAX_S = 15.0
DEFAULT_STOP_TIMEOUT_S = 10.0
REDELIVERY_MARGIN_S = 0.1
PROBE_TIMEOUT_S = 2.0
# Called after each batch commits with the events in it (e.g. the cache bumping generations); it must
# return quickly and not raise (a failure is logged and ingest goes on).
OnStored = Callable[[Sequence[PatternEvent]], Awaitable[None]]
# At least the ingest stream's largest message (or that message could never be fetched), and well
# under what the server buffers for one client (max_pending, 64 MB by default).
DEFAULT_FETCH_MAX_BYTES = 9 * 1024 * 1024


def retry_delay(deliveries: int, *, base_s: float = DEFAULT_RETRY_BASE_S, max_s: float = DEFAULT_RETRY_MAX_S) -> float:
    """Delay before the next delivery after ``deliveries`` failed ones: base · 2^(n-1), capped."""
    return min(max_s, base_s * 2 ** max(0, deliveries - 1))


class _Outage:
    """The current run of transient failures: logged once when it starts and once when it ends, and
    the back-off, which grows with each failure of the run and never shrinks within it."""

    def __init__(self, *, base_s: float, max_s: float) -> None:
        self.since: float | None = None
        self.failures = 0
        self._base_s = base_s
        self._max_s = max_s

    @property
    def delay(self) -> float:
        return retry_delay(self.failures, base_s=self._base_s, max_s=self._max_s)

    def failed(self, exc: BaseException) -> float:
        """Count a failure; returns the back-off for it."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("writer: transient failure, handing batches back with back-off: %s",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return self.delay

    def recovered(self) -> None:
        if self.since is not None:
            log.info("writer: recovered after %.1f s and %d failed attempt(s)", time.monotonic() - self.since,
                     self.failures)
            self.since = None
        self.failures = 0


class Writer:
    """Runs the writer loop from ``__aenter__`` until ``__aexit__`` (which finishes the batch in
    hand, up to ``stop_timeout_s``, then cancels)."""

    def __init__(
        self, *, pool: AsyncConnectionPool, nc: NATS, catalog: CatalogCache,
        dead_letters: DeadLetterer, metrics: Metrics, batch: int = DEFAULT_BATCH,
        fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S, retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S, stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES, on_stored: OnStored | None = None,
    ) -> None:
        self._pool = pool
        self._nc = nc
        self._js = nc.jetstream()
        self._fetch_max_bytes = fetch_max_bytes
        self._on_stored = on_stored
        self._catalog = catalog
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._batch = batch
        self._fetch_timeout_s = fetch_timeout_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._stop_timeout_s = stop_timeout_s
        self._months: set[datetime] = set()
        self._outage = _Outage(base_s=retry_base_s, max_s=retry_max_s)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    # -- one batch ---------------------------------------------------------------------------------
    async def _nak(self, msgs: Sequence[Msg], *, delay: float) -> float:
        """Hand ``msgs`` back with one delay. Within an outage the delay only grows, so whatever was
        handed back earlier is due earlier: redelivery keeps the ingest order. Returns the delay."""
        for msg in msgs:
            with contextlib.suppress(NatsError):
                await msg.nak(delay=delay)
        self._metrics.retries.inc(len(msgs))
        return delay

    async def _reject(self, msg: Msg, error: EventError) -> bool:
        """Dead-letter and terminate ``msg``; False (and the message handed back) if that failed."""
        md = msg.metadata
        try:
            await self._dead_letters.record_invalid(
                source_key=f"ingest:{md.sequence.stream}", subject=msg.subject, payload=msg.data,
                headers=msg.headers, error=error, deliveries=md.num_delivered, first_seen=md.timestamp)
        except TRANSIENT_ERRORS as exc:
            await self._nak([msg], delay=self._outage.failed(exc))
            return False
        with contextlib.suppress(NatsError):  # if lost, the redelivery re-records the same source key
            await msg.term()
        self._metrics.rejected.inc(reason=error.reason)
        return True

    def _parse(self, msg: Msg) -> PatternEvent:
        event = parse_event(msg.data, catalog=self._catalog.current)
        check_subject(event, msg.subject)
        return event

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection, events: Sequence[PatternEvent]) -> None:  # type: ignore[type-arg]
        months = {month_start(e.detected_at) for e in events} - self._months
        if months:
            await ensure_months(conn, min(months), max(months))
            self._months |= months

    async def _store_and_publish(self, events: Sequence[PatternEvent]) -> dict[str, StoredEvent]:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                await self._ensure_partitions(conn, events)
                stored = await store_events(conn, events)
        # The hook (the cache's generation bump) runs while the batch is published, not before:
        # it must follow the commit closely, but the clean stream (and the websockets) need not wait.
        hooked = asyncio.ensure_future(self._stored(events))
        try:
            pending = [(stored[e.id], e) for e in events if stored[e.id].stream_seq is None]
            futures = [
                await self._js.publish_async(clean_subject(e.timeframe, e.symbol), e.to_json_bytes(),
                                             headers={"Nats-Msg-Id": e.id})
                for _, e in pending
            ]
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        finally:
            await hooked
        if pending:
            async with self._pool.connection() as conn:
                await set_stream_seqs(conn, [(s, ack.seq) for (s, _), ack in zip(pending, acks, strict=True)])
            await self._stored([e for _, e in pending])  # their seq changed
        self._metrics.published.inc(sum(1 for a in acks if not a.duplicate))
        return stored

    async def _stored(self, events: Sequence[PatternEvent]) -> None:
        if self._on_stored is None:
            return
        try:
            await self._on_stored(events)
        except Exception:  # noqa: BLE001 - a hook never stops ingest
            log.exception("writer: on_stored hook failed")

    async def _isolate(self, events: dict[str, tuple[PatternEvent, list[Msg]]]) -> dict[str, StoredEvent]:
        """A non-transient database error on the batch: store one by one and dead-letter the events
        the database refuses (e.g. a NUL character in a JSON string)."""
        stored: dict[str, StoredEvent] = {}
        for event_id, (event, msgs) in list(events.items()):
            try:
                stored.update(await self._store_and_publish([event]))
            except TRANSIENT_ERRORS:
                raise
            except psycopg.Error as exc:
                error = EventError("invalid_field", f"the database refused the event: {str(exc).strip().splitlines()[0]}")
                for msg in msgs:
                    md = msg.metadata
                    await self._dead_letters.record(
                        source_key=f"ingest:{md.sequence.stream}", subject=msg.subject, payload=msg.data,
                        headers=msg.headers, reason=STORE_REJECTED, detail=error.detail,
                        deliveries=md.num_delivered, first_seen=md.timestamp)
                    await msg.term()
                    self._metrics.rejected.inc(reason=STORE_REJECTED)
                del events[event_id]
        return stored

    async def handle(self, msgs: Sequence[Msg]) -> float:
        """Process one fetched batch. Returns 0, or the back-off in seconds when a transient failure
        handed the batch back (the loop then pauses as long, so that the batch is redelivered before
        anything newer is fetched and the ingest order is kept)."""
        started = time.perf_counter()
        self._metrics.batch_size.observe(len(msgs))
        self._metrics.ingested.inc(len(msgs))
        events: dict[str, tuple[PatternEvent, list[Msg]]] = {}
        for msg in msgs:
            if msg.metadata.num_delivered > 1:
                self._metrics.redeliveries.inc()
            try:
                event = self._parse(msg)
            except EventError as error:
                await self._reject(msg, error)
                continue
            if event.id in events:
                events[event.id][1].append(msg)  # the same id twice in one batch: store once
            else:
                events[event.id] = (event, [msg])
        if not events:
            return 0.0
        try:
            try:
                stored = await self._store_and_publish([e for e, _ in events.values()])
            except TRANSIENT_ERRORS:
                raise
            except psycopg.Error as exc:
                log.warning("writer: batch refused by the database (%s); storing one by one",
                            str(exc).strip().splitlines()[0])
                stored = await self._isolate(events)
        except TRANSIENT_ERRORS as exc:
            return await self._nak([m for _, ms in events.values() for m in ms], delay=self._outage.failed(exc))
        self._outage.recovered()
        now = datetime.now(UTC)
        for event_id, (_, ms) in events.items():
            result = stored[event_id]
            (self._metrics.stored if result.new else self._metrics.duplicates).inc()
            self._metrics.duplicates.inc(len(ms) - 1)
            for msg in ms:
                await msg.ack()
                self._metrics.store_latency.observe(max(0.0, (now - msg.metadata.timestamp).total_seconds()))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        self.batches += 1
        return 0.0

    # -- the loop ----------------------------------------------------------------------------------
    async def _wait_for_database(self, delay: float) -> None:
        """Sleep ``delay`` (a little more, so what was handed back is due), then probe PostgreSQL,
        doubling the wait while it does not answer. Returns early when the writer is stopping."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay + REDELIVERY_MARGIN_S)
                return
            try:
                await asyncio.wait_for(ping(self._pool), timeout=PROBE_TIMEOUT_S)
            except (*TRANSIENT_ERRORS, psycopg.Error):  # type: ignore[misc]  # a tuple at runtime
                self._metrics.probes.inc(result="down")
                delay = min(delay * 2, self._retry_max_s)
            else:
                self._metrics.probes.inc(result="up")
                return

    async def _fetch(self, puller: Puller) -> list[Msg]:
        try:
            return await puller.fetch(self._batch, timeout=self._fetch_timeout_s)
        except TRANSIENT_ERRORS as exc:
            await asyncio.sleep(self._outage.failed(exc))
            return []

    async def _loop(self) -> None:
        async with Puller(self._nc, stream=INGEST_STREAM, consumer=WRITER_CONSUMER,
                          max_bytes=self._fetch_max_bytes) as puller:
            # The next batch is fetched while this one is stored and published: the wait for
            # PostgreSQL and NATS overlaps the network round trip of the fetch. Batches are still
            # handled one after the other, so the clean stream keeps the ingest order.
            ahead = asyncio.create_task(self._fetch(puller))
            try:
                while not self._stopping.is_set():
                    msgs = await ahead
                    ahead = asyncio.create_task(self._fetch(puller))
                    if not msgs:
                        continue
                    try:
                        backoff = await self.handle(msgs)
                    except Exception:  # a bug must not stop ingest: unacked messages are redelivered
                        log.exception("writer: batch failed unexpectedly; it will be redelivered")
                        backoff = self._retry_base_s
                    if backoff:
                        # The batch fetched ahead is newer than the one handed back: hand it back
                        # with the same delay, then fetch nothing until the database answers again.
                        # Messages left in the stream meanwhile are not delivered, so an outage of
                        # any length costs each message one or two deliveries, not max_deliver.
                        await self._nak(await ahead, delay=backoff)
                        await self._wait_for_database(backoff)
                        ahead = asyncio.create_task(self._fetch(puller))
            finally:
                # Hand a batch fetched ahead straight back, so another node takes it at once.
                leftover = await ahead if not ahead.cancelled() else []
                for msg in leftover:
                    with contextlib.suppress(NatsError):
                        await msg.nak()

    async def __aenter__(self) -> Writer:
        self._task = asyncio.create_task(self._loop(), name="tickstock-writer")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self._stop_timeout_s)
        except TimeoutError:
            log.warning("writer: batch not finished within %.0f s; cancelling (it will be redelivered)",
                        self._stop_timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
