"""When one node's fan-out cannot keep up: which connections to close, and when.

The fan-out reads the clean stream through one NATS subscription whose pending buffer is bounded
(``TICKSTOCK_WS_LIVE_PENDING_MESSAGES`` / ``_BYTES``). An empty buffer means the node keeps up. One that
stays non-empty for ``TICKSTOCK_WS_SHED_AFTER_S`` means every event now waits behind others, whoever it
is for: the node carries more connections than it can. When, over such a window, the backlog did not
shrink either (a burst drains; an overload does not), :class:`Shedder` picks a step of connections (a
tenth of those with subscriptions, at least one), slowest first, for the fan-out to close with 4409;
they resume by ``seq`` (on this node or another) and the rest keep their latency. Each further window
that does not drain takes another step.
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

__all__ = ["REASON_MISSED", "REASON_SHED", "SHED_FRACTION", "Overload", "Shedder"]

log = logging.getLogger("tickstock.fanout")

SHED_FRACTION = 0.1  # of the connections with subscriptions, closed in one step
REASON_SHED = "slow consumer: this hub node is overloaded; resume with since"
REASON_MISSED = "slow consumer: events this hub node fell behind on are gone; resume with since"


class Shedder:
    """Decides when the fan-out sheds (:meth:`due`) and whom (:meth:`victims`); pure bookkeeping."""

    def __init__(self, *, after_s: float, fraction: float = SHED_FRACTION) -> None:
        self._after_s = after_s
        self._fraction = fraction
        self._since: float | None = None  # the start of the current window, while behind
        self._since_backlog = 0

    def due(self, backlog: int, now: float) -> bool:
        """Whether to shed a step now. ``backlog`` is the live subscription's pending messages, seen
        before each live message is fanned out; ``now`` is monotonic seconds. True once per ``after_s``
        window over which the backlog never emptied and did not shrink (a burst that drains never
        sheds)."""
        if backlog == 0:
            self._since = None
            return False
        if self._since is None:
            self._since, self._since_backlog = now, backlog
            return False
        if now - self._since < self._after_s:
            return False
        growing = backlog >= self._since_backlog
        self._since, self._since_backlog = now, backlog
        return growing

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

    def __init__(self, connections: Iterable[Connection], metrics: FanOutMetrics, *, after_s: float) -> None:
        self._connections = connections
        self._metrics = metrics
        self.shedder = Shedder(after_s=after_s)

    def check(self, backlog: int) -> None:
        """Before each live event: shed a step when :meth:`Shedder.due` says so."""
        now = time.monotonic()
        if not self.shedder.due(backlog, now):
            return
        victims = self.shedder.victims(self._connections, now)
        for conn in victims:
            conn.close(CLOSE_SLOW, REASON_SHED)
        self._metrics.shed.inc(len(victims))
        log.warning(
            "fan-out behind (%d events pending): closed the %d slowest connections (4409)",
            backlog,
            len(victims),
        )

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
