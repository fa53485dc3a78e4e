"""The time an event may claim: a bounded window around now for ``detected_at`` and ``expires_at``.

Bounded times keep every stored event in a bounded set of monthly partitions, so no single event can
make the writer create hundreds of them (or run into the statement timeout doing so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hub.model import EventError, PatternEvent, format_utc

__all__ = [
    "DEFAULT_EVENT_MAX_AGE_DAYS",
    "DEFAULT_EVENT_MAX_AHEAD_S",
    "DEFAULT_EVENT_MAX_EXPIRY_DAYS",
    "EventWindow",
    "check_window",
]

DEFAULT_EVENT_MAX_AGE_DAYS = 7_305  # 20 years back
DEFAULT_EVENT_MAX_AHEAD_S = 86_400.0  # 1 day ahead
DEFAULT_EVENT_MAX_EXPIRY_DAYS = 400  # expires_at at most this far after now


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class EventWindow:
    """``detected_at`` within [now - max_age_days, now + max_ahead_s], ``expires_at`` within
    [now - max_age_days, now + max_expiry_days]. ``clock`` gives "now" (tests pass a fixed one), so
    parsing stays free of hidden inputs."""

    max_age_days: float = DEFAULT_EVENT_MAX_AGE_DAYS
    max_ahead_s: float = DEFAULT_EVENT_MAX_AHEAD_S
    max_expiry_days: float = DEFAULT_EVENT_MAX_EXPIRY_DAYS
    clock: Callable[[], datetime] = field(default=_utc_now, compare=False)


def check_window(event: PatternEvent, window: EventWindow, *, now: datetime | None = None) -> None:
    """Raise ``EventError`` ``detected_at_out_of_range`` / ``expires_at_out_of_range`` when ``event``
    claims a time outside ``window`` (``now`` defaults to ``window.clock()``)."""
    now = window.clock() if now is None else now
    earliest = now - timedelta(days=window.max_age_days)
    if not earliest <= event.detected_at <= now + timedelta(seconds=window.max_ahead_s):
        raise EventError(
            "detected_at_out_of_range",
            f"detected_at {format_utc(event.detected_at)} is outside [{format_utc(earliest)}, "
            f"now + {window.max_ahead_s:g} s]",
            fields=[{"loc": "detected_at", "msg": "outside the accepted time window"}],
        )
    if event.expires_at is not None and not (
        earliest <= event.expires_at <= now + timedelta(days=window.max_expiry_days)
    ):
        raise EventError(
            "expires_at_out_of_range",
            f"expires_at {format_utc(event.expires_at)} is outside [{format_utc(earliest)}, "
            f"now + {window.max_expiry_days:g} days]",
            fields=[{"loc": "expires_at", "msg": "outside the accepted time window"}],
        )
