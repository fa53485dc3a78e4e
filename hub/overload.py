"""When one node's fan-out cannot keep up: which connections to close, and when.

The fan-out reads the clean stream through one NATS subscription whose pending buffer is bounded
(``TICKSTOCK_WS_LIVE_PENDING_MESSAGES`` / ``_BYTES``), and hands each event on in stream order. Two
things say the node carries more connections than it can write to:

- the buffer never empties over a window of ``TICKSTOCK_WS_SHED_AFTER_S`` and does not shrink over it
  (a burst drains; an overload does not);
- the events it hands on have waited since they were stored for longer than ``TICKSTOCK_WS_SHED_LAG_S``
  at the end of such a window (with events all along it), and the wait is not shrinking fast enough to
  be back under that bound within :data:`RECOVERY_WINDOWS` windows (so a node that kept up only by
  falling a few seconds behind does not stay there);
- many outboxes wait: at least :data:`MIN_LATE_OUTBOXES` connections, and a tenth of those with
  subscriptions, hold a frame older than ``TICKSTOCK_WS_SHED_LAG_S``, at each housekeeping check over
  such a window (one slow client is not the node's fault: it has ``TICKSTOCK_WS_QUEUE_AGE_S``).

Either way :class:`Shedder` picks a step of connections (a tenth of those with subscriptions, at least
one), slowest first, for the fan-out to close with 4409; they resume by ``seq`` (on this node or
another) and the rest keep their latency. Each further window that stays behind takes another step.

The wait is the node's clock minus the stream's store time. A clock that differs from the NATS
server's would read as a constant extra wait, so the smallest wait seen while the buffer was empty (an
event handed on as it came) is taken as the clocks' offset and subtracted.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Iterable

from hub.connection import Connection
from hub.fanout_metrics import FanOutMetrics
from hub.protocol import CLOSE_SLOW

__all__ = [
    "MIN_LATE_OUTBOXES",
    "REASON_MISSED",
    "REASON_SHED",
    "RECOVERY_WINDOWS",
    "SHED_FRACTION",
    "Overload",
    "Shedder",
]

log = logging.getLogger("tickstock.fanout")

SHED_FRACTION = 0.1  # of the connections with subscriptions, closed in one step
RECOVERY_WINDOWS = 4  # a wait over the bound that shrinks back under it within this many windows is let be
MIN_LATE_OUTBOXES = 100  # fewer late outboxes are a few slow clients, not an overloaded node
REASON_SHED = "slow consumer: this hub node is overloaded; resume with since"
REASON_MISSED = "slow consumer: events this hub node fell behind on are gone; resume with since"


class Shedder:
    """Decides when the fan-out sheds (:meth:`due`) and whom (:meth:`victims`); pure bookkeeping."""

    def __init__(self, *, after_s: float, lag_s: float = math.inf, fraction: float = SHED_FRACTION) -> None:
        self._after_s = after_s
        self._lag_s = lag_s
        self._fraction = fraction
        self._since: float | None = None  # the start of the current window, while behind
        self._since_backlog = 0
        self._since_lag = 0.0
        self._last = -math.inf  # when due() was last asked
        self._crowded_since: float | None = None  # the start of the current window of late outboxes
        self.offset = math.inf  # the smallest wait seen with an empty buffer: the clocks' offset

    def lag(self, waited: float, backlog: int) -> float:
        """``waited`` (this node's clock minus the event's store time) less the clocks' offset."""
        if backlog == 0 and waited < self.offset:
            self.offset = waited
        return waited - self.offset if self.offset != math.inf else waited

    def due(self, backlog: int, now: float, waited: float = 0.0) -> bool:
        """Whether to shed a step now. ``backlog`` is the live subscription's pending messages and
        ``waited`` how long the event about to be handed on has waited since it was stored, both seen
        before each live message is fanned out; ``now`` is monotonic seconds. True at most once per
        ``after_s`` window that is behind all along (see the module's docstring)."""
        lag = self.lag(waited, backlog)
        late = lag > self._lag_s
        quiet = now - self._last > self._after_s  # no event for a window: not a window behind all along
        self._last = now
        if backlog == 0 and not late:
            self._since = None
            return False
        if self._since is None or quiet:
            self._since, self._since_backlog, self._since_lag = now, backlog, lag
            return False
        elapsed = now - self._since
        if elapsed < self._after_s:
            return False
        growing = backlog > 0 and backlog >= self._since_backlog
        shrinking = (self._since_lag - lag) / elapsed  # seconds of wait recovered per second
        stuck = late and (lag - self._lag_s) > shrinking * self._after_s * RECOVERY_WINDOWS
        self._since, self._since_backlog, self._since_lag = now, backlog, lag
        return growing or stuck

    def crowded(self, late: int, subscribed: int, now: float) -> bool:
        """Whether to shed a step now, ``late`` of the ``subscribed`` connections holding a frame older
        than the lag bound (asked by the housekeeping, about once a second). True once per ``after_s``
        window over which they were that many at every check."""
        if late < max(MIN_LATE_OUTBOXES, subscribed * self._fraction):
            self._crowded_since = None
            return False
        if self._crowded_since is None:
            self._crowded_since = now
            return False
        if now - self._crowded_since < self._after_s:
            return False
        self._crowded_since = now
        return True

    def victims(self, connections: Iterable[Connection], now: float) -> list[Connection]:
        """One step of connections to close: those with subscriptions, the oldest outbox head first,
        then the fullest outbox, then the newest connection (the longest-standing ones stay)."""
        candidates = [c for c in connections if c.subs and c.close_code is None]
        if not candidates:
            return []
        count = max(1, math.ceil(len(candidates) * self._fraction))
        return heapq.nlargest(count, candidates, key=lambda c: (c.lag_s(now), c.queued, c.connected_at))


class Overload:
    """The fan-out's answers to falling behind, over its ``connections``: shed the slowest while the
    live backlog does not drain (:meth:`check`), and close every subscribed connection when live
    events are gone from the stream (:meth:`hole`). Counted in ``tickstock_ws_shed_total`` and
    ``tickstock_ws_live_holes_total``."""

    def __init__(
        self,
        connections: Iterable[Connection],
        metrics: FanOutMetrics,
        *,
        after_s: float,
        lag_s: float = math.inf,
    ) -> None:
        self._connections = connections
        self._metrics = metrics
        self.lag_s = lag_s
        self.shedder = Shedder(after_s=after_s, lag_s=lag_s)

    def check(self, backlog: int, stored_at: float = 0.0) -> None:
        """Before each live event (stored at ``stored_at``, wall seconds): shed a step when
        :meth:`Shedder.due` says so."""
        now = time.monotonic()
        waited = time.time() - stored_at if stored_at else 0.0
        if self.shedder.due(backlog, now, waited):
            lag = self.shedder.lag(waited, backlog)
            self._shed(now, f"{backlog} events pending, the next waited {lag:.2f} s")

    def outboxes(self, now: float) -> None:
        """From the housekeeping: shed a step when :meth:`Shedder.crowded` says so."""
        subscribed = late = 0
        bound = self.lag_s
        for conn in self._connections:
            if conn.subs and conn.close_code is None:
                subscribed += 1
                late += conn.lag_s(now) > bound
        if self.shedder.crowded(late, subscribed, now):
            self._shed(now, f"{late} of {subscribed} outboxes hold a frame older than {bound:g} s")

    def _shed(self, now: float, why: str) -> None:
        victims = self.shedder.victims(self._connections, now)
        if not victims:
            return  # behind with no subscribed connection to close: nothing a shed can do here
        for conn in victims:
            conn.close(CLOSE_SLOW, REASON_SHED)
        self._metrics.shed.inc(len(victims))
        log.warning("fan-out behind (%s): closed the %d slowest connections (4409)", why, len(victims))

    def hole(self, head: int) -> None:
        """The clean stream no longer has the events after ``head`` (deleted before this node fanned
        them out): close every connection with a subscription with 4409, so each resumes by ``seq``
        and learns (``recovered: false``) what it cannot get."""
        conns = [c for c in self._connections if c.subs and c.close_code is None]
        for conn in conns:
            conn.close(CLOSE_SLOW, REASON_MISSED)
        self._metrics.holes.inc()
        log.warning(
            "fan-out: events after seq %d are gone from the stream: closed %d connections (4409)",
            head,
            len(conns),
        )
