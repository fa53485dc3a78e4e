"""How the response cache treats a scan: which generations its answer depends on, and how long it lives.

A scan over a closed time range in the past depends on its months only (new events do not touch it)
and lives for the closed-range TTL; any other scan depends on its timeframes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from api.cache import REFERENCE_GENERATION, ttl_until
from api.settings import Settings
from hub.model import TIMEFRAMES
from store.cache import Dependencies
from store.scans import ScanFilter

__all__ = ["CLOSED_AFTER", "MAX_CLOSED_MONTHS", "closed_months", "scan_dependencies", "scan_ttl_s"]

# A range that ended this long ago counts as closed: its cache entries depend on per-month generations
# and live for cache_closed_ttl_s (an event detected in it, stored late, still bumps its month).
CLOSED_AFTER = timedelta(minutes=1)
MAX_CLOSED_MONTHS = 36  # a longer closed range depends on its timeframes, like an open one


def closed_months(filt: ScanFilter) -> list[str] | None:
    """The months (``YYYYMM``) of a time range that is closed and over, or ``None``."""
    start, end = filt.detected_after, filt.detected_before
    if start is None or end is None or end > datetime.now(UTC) - CLOSED_AFTER:
        return None
    months: list[str] = []
    last = (end - timedelta(microseconds=1)).astimezone(UTC)
    start_utc = start.astimezone(UTC)
    year, month = start_utc.year, start_utc.month
    while (year, month) <= (last.year, last.month):
        months.append(f"{year:04d}{month:02d}")
        if len(months) > MAX_CLOSED_MONTHS:
            return None
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def scan_ttl_s(settings: Settings, filt: ScanFilter, rows: list[dict[str, Any]]) -> float:
    """How long a page may be cached: the closed-range or normal TTL, cut short by the first
    ``expires_at`` of an ``active_only`` result (whose rows leave it as they expire)."""
    ttl_s = settings.cache_closed_ttl_s if closed_months(filt) is not None else settings.cache_ttl_s
    return ttl_until((r["expires_at"] for r in rows), ttl_s) if filt.active_only else ttl_s


def scan_dependencies(filt: ScanFilter) -> Dependencies:
    """The generations a scan's answer depends on: its timeframes (every one without that filter),
    per month for a closed past range (so new events do not touch it); reference data when a
    universe or sector filter is resolved through it."""
    timeframes = sorted(set(filt.timeframes)) or list(TIMEFRAMES)
    months = closed_months(filt)
    events = [f"{tf}:{m}" for tf in timeframes for m in months] if months is not None else timeframes
    return Dependencies(
        events=tuple(events), strict=(REFERENCE_GENERATION,) if filt.universes or filt.sectors else ()
    )
