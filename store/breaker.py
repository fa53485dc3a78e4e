"""A circuit breaker: stop waiting on a dependency that keeps failing, probe it now and then."""

from __future__ import annotations

import time
from typing import Literal

__all__ = ["Breaker", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]

DEFAULT_FAILURES = 5  # consecutive failures that open the breaker
DEFAULT_RESET_S = 1.0


class Breaker:
    """Closed: calls go through; ``failures`` consecutive failures open it. Open: :meth:`allow` says
    no for ``reset_s``, then lets exactly one caller through as a probe (half open); that caller
    reports :meth:`succeeded` (closed again) or :meth:`failed` (open for another ``reset_s``).

    Not thread-safe; meant for one event loop. No I/O: the caller does the calls and reports.
    """

    def __init__(self, *, failures: int = DEFAULT_FAILURES, reset_s: float = DEFAULT_RESET_S) -> None:
        if failures < 1 or reset_s <= 0:
            raise ValueError("failures must be >= 1 and reset_s positive")
        self._threshold = failures
        self.reset_s = reset_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_at = 0.0
        self.trips = 0  # times it opened

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing else "open"

    def allow(self) -> bool:
        """True when closed. When open: False, except once per ``reset_s`` for the probe (the caller
        must then report the outcome)."""
        if self._opened_at is None:
            return True
        now = time.monotonic()
        # A probe whose caller never reported (e.g. it was cancelled) gives way after reset_s.
        if now - (self._probe_at if self._probing else self._opened_at) < self.reset_s:
            return False
        self._probing = True
        self._probe_at = now
        return True

    @property
    def probing(self) -> bool:
        return self._probing

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            if self._opened_at is None:
                self.trips += 1
            self._opened_at = time.monotonic()
            self._probing = False

    def trip(self) -> None:
        """Open at once (e.g. a failure that cannot be retried safely)."""
        self._failures = self._threshold - 1
        self.failed()
