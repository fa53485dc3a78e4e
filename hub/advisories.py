"""The advisory watcher: JetStream's max-deliveries advisories for the writer's consumer become dead
letters (``max_deliveries_exceeded``), so a message that never got stored is never silently lost.

Advisories are kept in their own stream, so none is missed while the hub is down. A failure to handle
one backs off exponentially and, after a bounded number of attempts, is given up into a visible state
(a WARNING, ``tickstock_advisories_given_up_total`` and ``/health/ready``), never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import TracebackType
from typing import Any

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from hub.deadletters import (
    MAX_DELIVERIES,
    TRANSIENT_ERRORS,
    DeadLetterer,
    ingest_source_key,
    is_permanent_api_error,
)
from hub.jetstream import ADVISORY_STREAM, DEADLETTER_CONSUMER, INGEST_STREAM
from hub.metrics import Metrics
from hub.outage import retry_delay
from hub.text import escape_control

__all__ = ["ADVISORY_MAX_ATTEMPTS", "ADVISORY_RETRY_MAX_S", "RETRY_DELAY_S", "AdvisoryWatcher"]

log = logging.getLogger("tickstock.deadletters")

RETRY_DELAY_S = 2.0  # first back-off of the advisory watcher; it doubles per attempt
ADVISORY_RETRY_MAX_S = 300.0  # the back-off's cap
ADVISORY_MAX_ATTEMPTS = 12  # then the watcher gives up on the advisory (about half an hour in all)


class AdvisoryWatcher:
    """Consumes the writer's max-deliveries advisories (kept in their own stream, so none is missed
    while the hub is down): fetches the original message by stream sequence, records it as a dead
    letter with its headers, then removes it from the ingest work queue."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        dead_letters: DeadLetterer,
        batch: int = 50,
        metrics: Metrics | None = None,
        retry_base_s: float = RETRY_DELAY_S,
        retry_max_s: float = ADVISORY_RETRY_MAX_S,
        max_attempts: int = ADVISORY_MAX_ATTEMPTS,
    ) -> None:
        self._js = js
        self._dead_letters = dead_letters
        self._batch = batch
        self._metrics = metrics or Metrics()
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._max_attempts = max_attempts
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.handled = 0
        self.given_up = 0

    def _delay(self, attempt: int) -> float:
        return retry_delay(attempt, base_s=self._retry_base_s, max_s=self._retry_max_s)

    async def _handle(self, advisory: dict[str, Any]) -> None:
        seq = int(advisory["stream_seq"])
        deliveries = int(advisory.get("deliveries", 0))
        try:
            original = await self._js.get_msg(INGEST_STREAM, seq)
        except NotFoundError:
            log.info("advisory for ingest seq %s: message already gone", seq)
            return
        except APIError as exc:
            if not is_permanent_api_error(exc):
                raise
            log.warning(
                "advisory for ingest seq %s: JetStream refused the lookup (%s %s); dropped",
                seq,
                exc.code,
                escape_control(exc.description or "", limit=200),
            )
            return
        await self._dead_letters.record(
            source_key=ingest_source_key(seq, original.data or b""),
            subject=original.subject or "",
            payload=original.data or b"",
            headers=original.headers,
            reason=MAX_DELIVERIES,
            detail=f"not stored after {deliveries} deliveries (consumer {escape_control(advisory.get('consumer'), limit=64)})",
            deliveries=deliveries,
            first_seen=original.time,
        )
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(INGEST_STREAM, seq)
        self.handled += 1

    async def _failed(self, msg: Any, exc: BaseException) -> None:
        """A transient failure on one advisory: hand it back with an exponential back-off (capped), or,
        after ``max_attempts`` deliveries, give up on it into a visible state: the counter
        ``tickstock_advisories_given_up_total`` (also in ``/health/ready``) and one WARNING line. The
        original message then stays in the ingest stream (until its max age) for an operator."""
        attempt = int(msg.metadata.num_delivered or 1)
        seq = msg.metadata.sequence.stream
        if attempt >= self._max_attempts:
            self.given_up += 1
            self._metrics.advisories_given_up.inc()
            log.warning(
                "advisory %s given up after %d attempts (last: %s); the message stays in %s",
                seq,
                attempt,
                escape_control(exc, limit=200),
                INGEST_STREAM,
            )
            with contextlib.suppress(NatsError):
                await msg.term()
            return
        delay = self._delay(attempt)
        log.warning(
            "advisory %s not handled yet (attempt %d, next in %.1f s): %s",
            seq,
            attempt,
            delay,
            escape_control(exc, limit=200),
        )
        with contextlib.suppress(NatsError):
            await msg.nak(delay=delay)

    async def _loop(self) -> None:
        sub = await self._js.pull_subscribe_bind(DEADLETTER_CONSUMER, stream=ADVISORY_STREAM)
        fetch_failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self._batch, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    fetch_failures = 0
                    continue
                except TRANSIENT_ERRORS as exc:
                    fetch_failures += 1
                    log.warning("advisory fetch failed: %s", escape_control(exc, limit=200))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._delay(fetch_failures))
                    continue
                fetch_failures = 0
                for msg in msgs:
                    try:
                        await self._handle(json.loads(msg.data))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning(
                            "unreadable advisory dropped: %s (%s)",
                            escape_control(exc, limit=200),
                            escape_control(repr(msg.data[:200])),
                        )
                    except Exception as exc:
                        await self._failed(msg, exc)
                        continue
                    with contextlib.suppress(NatsError):
                        await msg.ack()
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def __aenter__(self) -> AdvisoryWatcher:
        self._task = asyncio.create_task(self._loop(), name="tickstock-advisories")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:  # pragma: no cover - the loop checks the flag every second
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
