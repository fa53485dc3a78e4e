"""A run of transient failures (PostgreSQL or NATS not answering) and the back-off that goes with it."""

from __future__ import annotations

import logging
import time

from hub.text import first_line

__all__ = ["DEFAULT_RETRY_BASE_S", "DEFAULT_RETRY_MAX_S", "Outage", "retry_delay"]

log = logging.getLogger("tickstock.writer")

DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_MAX_S = 15.0


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
