"""When one node's fan-out cannot keep up: which connections to close, and when.

The fan-out reads the clean stream through one NATS subscription whose pending buffer is bounded
(``TICKSTOCK_WS_LIVE_PENDING_MESSAGES`` / ``_BYTES``), and hands each event on in stream order. Two
things say the node carries more connections than it can write to:

- the buffer never empties over a window of ``TICKSTOCK_WS_SHED_AFTER_S`` and does not shrink over it
  (a burst drains; an overload does not);
- the events it hands on had waited since they were stored, when they were written, for longer than
  ``TICKSTOCK_WS_SHED_LAG_S`` all along such a window (the smallest wait over it is over the bound), and
  the wait is not shrinking fast enough to be back under that bound within :data:`RECOVERY_WINDOWS`
  windows (so a node that kept up only by falling a few seconds behind does not stay there; shrinking is
  measured from one window's smallest wait to the next one's, as events handed on in batches wait a
  batch's time more or less);
- many outboxes wait: at least :data:`MIN_LATE_OUTBOXES` connections, and a tenth of those with
  subscriptions, hold a frame older than ``TICKSTOCK_WS_SHED_LAG_S``, at each housekeeping check over
  such a window (one slow client is not the node's fault: it has ``TICKSTOCK_WS_QUEUE_AGE_S``).

Either way :class:`Shedder` picks a step of connections, slowest first, for the fan-out to close with
4409; they resume by ``seq`` (on this node or another) and the rest keep their latency. A step is sized
by the shortfall it measured, so that one step is enough: when the wait grew by ``g`` seconds a second
over the window, the node handed events on at ``1 - g`` of the rate they came in; when it handed on
``h`` events while its buffer grew by ``d``, at ``h / (h + d)``; and when the wait is at ``w`` over the
bound ``b``, growing or not, the node hands events on in batches that take ``w`` to write, a time that
scales with its connections: ``b / w`` of them would keep within the bound. It keeps :data:`HEADROOM`
of the smallest share of its connections (the rest of its capacity drains the wait already accumulated). A step is at least :data:`SHED_FRACTION` (all it is when many outboxes are
late: they say who is slow, not by how much the node is) and at most :data:`MAX_SHED_FRACTION` of the
connections with subscriptions, and at least one. The window after a step is not measured (closing a
step's sockets takes the loop's time, and what waited meanwhile drains: both would read as a
shortfall); each later window that stays behind takes another step.

The wait is the node's clock minus the stream's store time. A clock that differs from the NATS
server's would read as a constant extra wait, so the smallest wait of an event picked up from an empty
buffer (one that came as the node was ready for it) is taken as the clocks' offset and subtracted. It
is taken when the event is picked up, not when it is written: by then even the first of a batch has
waited the batch's time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Iterable

from hub.connection import Connection
from hub.fanout_metrics import FanOutMetrics
from hub.protocol import CLOSE_SLOW

__all__ = [
    "CLOSE_SLICE",
    "HEADROOM",
    "MAX_SHED_FRACTION",
    "MIN_LATE_OUTBOXES",
    "REASON_MISSED",
    "REASON_SHED",
    "RECOVERY_WINDOWS",
    "SHED_FRACTION",
    "Overload",
    "Shedder",
]

log = logging.getLogger("tickstock.fanout")

SHED_FRACTION = 0.1  # of the connections with subscriptions, closed in one step at least
MAX_SHED_FRACTION = 0.5  # ... and at most: a measurement over half a second can be wrong
HEADROOM = 0.8  # a step keeps this share of the connections the node kept up with
RECOVERY_WINDOWS = 4  # a wait over the bound that shrinks back under it within this many windows is let be
MIN_LATE_OUTBOXES = 100  # fewer late outboxes are a few slow clients, not an overloaded node
CLOSE_SLICE = 64  # close frames of a shed step sent in one turn of the loop
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
        self._handed = 0  # events handed on since the window began
        self._since_lag = 0.0
        self._floor = math.inf  # the smallest wait over the current window
        self._last_floor: float | None = None  # ... and over the window before it, while behind
        self._last = -math.inf  # when due() was last asked
        self._cool_until = -math.inf  # no new window before this (after a step)
        self._crowded_since: float | None = None  # the start of the current window of late outboxes
        self.offset = math.inf  # the smallest wait seen with an empty buffer: the clocks' offset

    def lag(self, waited: float, backlog: int) -> float:
        """``waited`` (this node's clock minus the store time of an event it picks up from its buffer,
        ``backlog`` more behind it) less the clocks' offset, which an event picked up from an empty
        buffer (handed on as it came) teaches."""
        if backlog == 0 and waited < self.offset:
            self.offset = waited
        return self.behind(waited)

    def behind(self, waited: float) -> float:
        """``waited`` less the clocks' offset (learnt by :meth:`lag`)."""
        return waited - self.offset if self.offset != math.inf else waited

    def due(self, backlog: int, now: float, waited: float = 0.0, *, handed: int = 1) -> float:
        """The share of the connections with subscriptions to close now (0.0: none), asked each time the
        fan-out has handed on ``handed`` live events: ``backlog`` is the live subscription's pending
        messages and ``waited`` how long the first of those events had waited since it was stored when
        it was written; ``now`` is monotonic seconds. A step at most once per ``after_s`` window that is
        behind all along, sized by the shortfall measured over it (see the module's docstring)."""
        lag = self.behind(waited)
        late = lag > self._lag_s
        quiet = now - self._last > self._after_s  # no event for a window: not a window behind all along
        self._last = now
        if (backlog == 0 and not late) or now < self._cool_until:
            self._since = self._last_floor = None
            return 0.0
        if self._since is None or quiet:
            self._since, self._since_backlog, self._since_lag, self._handed = now, backlog, lag, 0
            self._floor, self._last_floor = math.inf, None
            return 0.0
        self._handed += handed
        self._floor = floor = min(self._floor, lag)
        elapsed = now - self._since
        if elapsed < self._after_s:
            return 0.0
        growing = backlog > 0 and backlog >= self._since_backlog
        # Seconds of wait recovered per second, floor to floor: events handed on in batches wait a
        # batch's time more or less, so one reading at each end of a window says little.
        before = self._since_lag if self._last_floor is None else self._last_floor
        shrinking = (before - floor) / elapsed
        stuck = floor > self._lag_s and (floor - self._lag_s) > shrinking * self._after_s * RECOVERY_WINDOWS
        # Events handed on over the window, against those that came: handed on, and the buffer's growth.
        handed, came = self._handed, self._handed + max(0, backlog - self._since_backlog)
        self._since, self._since_backlog, self._since_lag, self._handed = now, backlog, lag, 0
        self._floor, self._last_floor = math.inf, floor
        if not (growing or stuck):
            return 0.0
        # The next window starts after one more has passed: closing a step's sockets takes the loop's
        # time too, and what waited meanwhile drains; measured at once, both would read as a shortfall.
        self._since, self._last_floor, self._cool_until = None, None, now + self._after_s
        # The wait grew by -shrinking s/s: events were handed on at 1 + shrinking of their rate; by
        # count, at handed / came. A wait over the bound says the node hands events on in batches that
        # take that long to write, and a batch's time scales with the connections: bound / wait of them
        # would be within the bound, whether the wait grows too or not (its growth alone read 0.75-0.95
        # of the load kept up with where 0.45 was: batches grow as the node falls behind, and write more
        # events per connection each). The smallest says most (a buffer can grow before the wait does).
        kept_up = min(1.0 + min(0.0, shrinking), handed / came)
        if stuck:
            kept_up = min(kept_up, self._lag_s / floor)
        return self.step(kept_up=kept_up)

    def crowded(self, late: int, subscribed: int, now: float) -> float:
        """The share of the connections with subscriptions to close now (0.0: none), ``late`` of the
        ``subscribed`` connections holding a frame older than the lag bound (asked by the housekeeping,
        about once a second). A step of the fixed fraction once per ``after_s`` window over which they
        were that many at every check (late outboxes say who is slow, not by how much the node is)."""
        if late < max(MIN_LATE_OUTBOXES, subscribed * self._fraction):
            self._crowded_since = None
            return 0.0
        if self._crowded_since is None:
            self._crowded_since = now
            return 0.0
        if now - self._crowded_since < self._after_s:
            return 0.0
        self._crowded_since = now
        return self._fraction

    def step(self, *, kept_up: float) -> float:
        """The share to close when the node kept up with the share ``kept_up`` of its load: all but
        :data:`HEADROOM` of that, at least the fixed fraction and at most :data:`MAX_SHED_FRACTION`; the
        fixed fraction when no shortfall was measured (``kept_up`` 1)."""
        if kept_up >= 1.0:
            return self._fraction
        return min(MAX_SHED_FRACTION, max(self._fraction, 1.0 - HEADROOM * kept_up))

    def victims(self, connections: Iterable[Connection], now: float, share: float) -> list[Connection]:
        """``share`` of the connections with subscriptions (at least one) to close: the oldest outbox head
        first, then the fullest outbox, then the newest connection (the longest-standing ones stay)."""
        candidates = [c for c in connections if c.subs and c.close_code is None]
        if not candidates:
            return []
        count = max(1, math.ceil(len(candidates) * share))
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

    def picked(self, backlog: int, stored_at: float) -> None:
        """The fan-out picked up an event stored at ``stored_at`` (wall seconds) from its live buffer,
        ``backlog`` more behind it: one picked up from an empty buffer teaches the clocks' offset."""
        if stored_at:
            self.shedder.lag(time.time() - stored_at, backlog)

    def check(self, backlog: int, stored_at: float = 0.0, *, handed: int = 1) -> None:
        """After the fan-out handed on ``handed`` live events, the first of them stored at ``stored_at``
        (wall seconds), with ``backlog`` more waiting: shed a step when :meth:`Shedder.due` says so."""
        now = time.monotonic()
        waited = time.time() - stored_at if stored_at else 0.0
        share = self.shedder.due(backlog, now, waited, handed=handed)
        if share:
            lag = self.shedder.behind(waited)
            self._shed(
                now, share, f"{backlog} events pending, the oldest just written had waited {lag:.2f} s"
            )

    def outboxes(self, now: float) -> None:
        """From the housekeeping: shed a step when :meth:`Shedder.crowded` says so."""
        subscribed = late = 0
        bound = self.lag_s
        for conn in self._connections:
            if conn.subs and conn.close_code is None:
                subscribed += 1
                late += conn.lag_s(now) > bound
        share = self.shedder.crowded(late, subscribed, now)
        if share:
            self._shed(now, share, f"{late} of {subscribed} outboxes hold a frame older than {bound:g} s")

    def _shed(self, now: float, share: float, why: str) -> None:
        victims = self.shedder.victims(self._connections, now, share)
        if not victims:
            return  # behind with no subscribed connection to close: nothing a shed can do here
        for conn in victims:
            conn.close(CLOSE_SLOW, REASON_SHED, later=True)  # nothing more is written to them from now
        self._send_closes(victims, 0)
        self._metrics.shed.inc(len(victims))
        log.warning("fan-out behind (%s): closed the %d slowest connections (4409)", why, len(victims))

    def _send_closes(self, victims: list[Connection], start: int) -> None:
        """The close frames of a step, :data:`CLOSE_SLICE` a turn of the loop. Each close costs the loop
        its handshake and the connection's teardown (about 0.15 ms); thousands at once stalled it for
        hundreds of milliseconds, which the connections kept read as latency. In slices, the fan-out's
        deliveries (lighter by every victim already) go on between them."""
        end = start + CLOSE_SLICE
        for conn in victims[start:end]:
            conn.send_close()
        if end < len(victims):
            asyncio.get_running_loop().call_soon(self._send_closes, victims, end)

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
