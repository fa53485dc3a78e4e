"""The bounds of the websocket fan-out, each a named default with its unit.

``api.settings`` takes its ``TICKSTOCK_WS_*`` defaults from here, so each default is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_AUTH_TIMEOUT_S",
    "DEFAULT_DRAIN_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_LIVE_PENDING_BYTES",
    "DEFAULT_LIVE_PENDING_MESSAGES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_PING_INTERVAL_S",
    "DEFAULT_QUEUE_AGE_S",
    "DEFAULT_QUEUE_BYTES",
    "DEFAULT_QUEUE_MESSAGES",
    "DEFAULT_RESUME_MAX",
    "DEFAULT_RING_SIZE",
    "DEFAULT_SHED_AFTER_S",
    "DEFAULT_SHED_LAG_S",
    "FanOutLimits",
]

DEFAULT_MAX_CONNECTIONS = 20_000  # per node; more are closed with 4429
DEFAULT_MAX_SUBSCRIPTIONS = 100  # per connection
DEFAULT_QUEUE_MESSAGES = 1_000  # frames in one outbox; full closes the connection with 4409
DEFAULT_QUEUE_BYTES = 1 << 20  # characters of frames in one outbox
DEFAULT_QUEUE_AGE_S = 10.0  # a frame waiting longer closes the connection with 4409
DEFAULT_PING_INTERVAL_S = 20.0
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_AUTH_TIMEOUT_S = 5.0
DEFAULT_RESUME_MAX = 100_000  # stream messages one resume may replay
DEFAULT_RING_SIZE = 10_000  # recent events held in memory for resumes (older ones come from JetStream)
DEFAULT_DRAIN_S = 1.0  # on shutdown, time given to outboxes before closing with 1001
# The live subscription's pending buffer (events read from NATS, not yet fanned out). Full: NATS drops
# events, and every connection with a subscription is closed with 4409 to resume by seq.
DEFAULT_LIVE_PENDING_MESSAGES = 20_000
DEFAULT_LIVE_PENDING_BYTES = 64 << 20
# That buffer never empty for this long: the node is behind, and sheds its slowest connections (4409).
DEFAULT_SHED_AFTER_S = 0.5
# Events handed on this long after they were stored, at the end of such a window and not recovering: the
# node is behind too (its sockets take longer than events come), and sheds (hub.overload). The smallest
# wait of a window. On a full 2-core box, 0.15 shed nobody at 5,000 connections in most runs and kept
# the p99 of those it kept at 10,000 at 168-208 ms; 0.1 and 0.12 shed at 5,000 in one run of two, 0.05
# in the one run made (docs/benchmarks.md, 5 December 23:15 to 6 December 01:29).
DEFAULT_SHED_LAG_S = 0.15


@dataclass(frozen=True, kw_only=True)
class FanOutLimits:
    """Every bound of one node's fan-out; see the ``DEFAULT_*`` constants for units and meaning."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    queue_messages: int = DEFAULT_QUEUE_MESSAGES
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    queue_age_s: float = DEFAULT_QUEUE_AGE_S
    ping_interval_s: float = DEFAULT_PING_INTERVAL_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    auth_timeout_s: float = DEFAULT_AUTH_TIMEOUT_S
    resume_max: int = DEFAULT_RESUME_MAX
    ring_size: int = DEFAULT_RING_SIZE
    drain_s: float = DEFAULT_DRAIN_S
    live_pending_messages: int = DEFAULT_LIVE_PENDING_MESSAGES
    live_pending_bytes: int = DEFAULT_LIVE_PENDING_BYTES
    shed_after_s: float = DEFAULT_SHED_AFTER_S
    shed_lag_s: float = DEFAULT_SHED_LAG_S

    def as_dict(self) -> dict[str, Any]:
        """The limits a client may plan by (sent in the welcome frame)."""
        return {
            "max_subscriptions": self.max_subscriptions,
            "queue_messages": self.queue_messages,
            "queue_bytes": self.queue_bytes,
            "queue_age_s": self.queue_age_s,
            "ping_interval_s": self.ping_interval_s,
            "idle_timeout_s": self.idle_timeout_s,
            "resume_max": self.resume_max,
        }
