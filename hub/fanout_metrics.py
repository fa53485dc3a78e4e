"""The fan-out's Prometheus metrics (``tickstock_ws_*``), shared by the fan-out and its connections."""

from __future__ import annotations

import time
from collections.abc import Sized
from typing import Protocol

from hub.metrics import Counter, CounterView, Gauge, Histogram, Registry

__all__ = ["FanOutMetrics"]


class _Counted(Protocol):
    """What the gauges read: the fan-out's open connections and its subscription index."""

    @property
    def connections(self) -> Sized: ...

    @property
    def index(self) -> Sized: ...

    @property
    def backlog(self) -> int: ...


class FanOutMetrics:
    """Registers the ``tickstock_ws_*`` metrics in ``registry``; the gauges read ``fanout`` when scraped."""

    def __init__(self, registry: Registry, fanout: _Counted) -> None:
        r = registry
        self.connections = r.add(
            Gauge(
                "tickstock_ws_connections",
                "Open websocket connections on this node.",
                read=lambda: float(len(fanout.connections)),
                multiprocess_mode="livesum",  # each worker's own sockets
            )
        )
        self.subscriptions = r.add(
            Gauge(
                "tickstock_ws_subscriptions",
                "Websocket subscriptions on this node.",
                read=lambda: float(len(fanout.index)),
                multiprocess_mode="livesum",
            )
        )
        self.messages = self.events = self.bytes = 0  # plain numbers: counted once per frame
        r.add(
            CounterView(
                "tickstock_ws_messages_sent_total", "Frames written to websockets.", lambda: self.messages
            )
        )
        r.add(
            CounterView(
                "tickstock_ws_events_sent_total", "Event frames written to websockets.", lambda: self.events
            )
        )
        r.add(
            CounterView(
                "tickstock_ws_bytes_sent_total",
                "UTF-8 bytes of text frames written to websockets (payload, without framing).",
                lambda: self.bytes,
            )
        )
        self.prepared = 0  # a plain number: counted once per frame
        r.add(
            CounterView(
                "tickstock_ws_prepared_frames_total",
                "Event frames written as bytes encoded once per event for every connection (the rest went "
                "through the server's own send: compression negotiated, flow control, or another transport).",
                lambda: self.prepared,
            )
        )
        self.high_water = r.add(
            Gauge(
                "tickstock_ws_queue_high_water",
                "The most frames any outbox has held.",
                multiprocess_mode="max",  # over every worker, those that have exited too
            )
        )
        self.closes = r.add(
            Counter("tickstock_ws_closes_total", "Connections closed by the hub, by close code.")
        )
        self.replayed = r.add(
            Counter("tickstock_ws_replayed_total", "Events replayed to resuming subscriptions.")
        )
        self.latency = r.add(
            Histogram(
                "tickstock_ws_stored_to_sent_seconds",
                "From the clean stream storing an event to its frame being written.",
            )
        )
        self.backlog = r.add(
            Gauge(
                "tickstock_ws_live_backlog",
                "Clean-stream events this node read from NATS and has not fanned out yet.",
                read=lambda: float(fanout.backlog),
            )
        )
        self.shed = r.add(
            Counter(
                "tickstock_ws_shed_total",
                "Connections closed with 4409 because this node fell behind (the slowest first).",
            )
        )
        self.live_dropped = 0  # a plain number: nats-py reports each dropped message
        r.add(
            CounterView(
                "tickstock_ws_live_dropped_total",
                "Clean-stream events NATS dropped from this node's full live buffer (read again: not lost).",
                lambda: self.live_dropped,
            )
        )
        self.live_restarts = r.add(
            Counter(
                "tickstock_ws_live_restarts_total",
                "Times this node read the clean stream again from the last event it fanned out, by cause.",
            )
        )
        self.holes = r.add(
            Counter(
                "tickstock_ws_live_holes_total",
                "Times clean-stream events were gone before this node fanned them out; every connection "
                "with a subscription was closed with 4409 to resume.",
            )
        )
        self.peak = 0

    def prepared_sent(self, frames: int, payload_bytes: int, stored_at: float) -> None:
        """``frames`` event frames written as prepared bytes, ``payload_bytes`` in all, of an event
        stored at ``stored_at`` (wall seconds): counted once for every socket it was written to."""
        self.prepared += frames
        self.messages += frames
        self.events += frames
        self.bytes += payload_bytes
        if stored_at:
            self.latency.observe(time.time() - stored_at, frames)

    def queued(self, depth: int) -> None:
        if depth > self.peak:
            self.peak = depth
            self.high_water.set(depth)
