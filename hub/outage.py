"""A run of transient failures (PostgreSQL or NATS not answering) and the back-off that goes with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from hub.text import first_line
from store.pool import ping

__all__ = [
    "DEFAULT_RETRY_BASE_S",
    "DEFAULT_RETRY_MAX_S",
    "PROBE_TIMEOUT_S",
    "Outage",
    "retry_delay",
    "wait_for_database",
]

log = logging.getLogger("tickstock.writer")

DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_MAX_S = 15.0
REDELIVERY_MARGIN_S = 0.1  # waited past a hand-back's delay, so what was handed back is due
PROBE_TIMEOUT_S = 2.0


def retry_delay(
    deliveries: int, *, base_s: float = DEFAULT_RETRY_BASE_S, max_s: float = DEFAULT_RETRY_MAX_S
) -> float:
    """Delay before the next delivery after ``deliveries`` failed ones: base · 2^(n-1), capped."""
    return min(max_s, base_s * 2.0 ** max(0, deliveries - 1))


class Outage:
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
            log.warning(
                "writer: transient failure, handing batches back with back-off: %s",
                first_line(exc, limit=200),
            )
        return self.delay

    def recovered(self) -> None:
        if self.since is not None:
            log.info(
                "writer: recovered after %.1f s and %d failed attempt(s)",
                time.monotonic() - self.since,
                self.failures,
            )
            self.since = None
        self.failures = 0


async def wait_for_database(
    pool: AsyncConnectionPool[Any],
    *,
    delay: float,
    max_s: float,
    stopping: asyncio.Event,
    probed: Callable[[bool], None] = lambda up: None,
) -> None:
    """Sleep ``delay`` (a little more, so what was handed back is due), then probe PostgreSQL, doubling
    the wait (up to ``max_s``) while it does not answer; ``probed`` hears each probe's result. Returns
    early when ``stopping`` is set."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay + REDELIVERY_MARGIN_S)
            return
        try:
            await asyncio.wait_for(ping(pool), timeout=PROBE_TIMEOUT_S)
        except (psycopg.Error, OSError, TimeoutError):
            probed(False)
            delay = min(delay * 2, max_s)
        else:
            probed(True)
            return
