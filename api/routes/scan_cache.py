"""How the response cache treats a scan: its key, which generations its answer depends on, how long it
lives, and the answer made of a cached body.

A scan over a closed time range in the past depends on its months only (new events do not touch it)
and lives for the closed-range TTL; any other scan depends on its timeframes.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from api.cache import REFERENCE_GENERATION, digest
from api.settings import Settings
from hub.model import TIMEFRAMES
from store.cache import Dependencies
from store.scans import ScanFilter, Sort

__all__ = [
    "CLOSED_AFTER",
    "MAX_CLOSED_MONTHS",
    "NORMALISED",
    "closed_months",
    "scan_body",
    "scan_dependencies",
    "scan_key",
    "scan_ttl_s",
    "ttl_until",
]

# A range that ended this long ago counts as closed: its cache entries depend on per-month generations
# and live for cache_closed_ttl_s (an event detected in it, stored late, still bumps its month).
CLOSED_AFTER = timedelta(minutes=1)
MAX_CLOSED_MONTHS = 36  # a longer closed range depends on its timeframes, like an open one
# Scan parameters the key holds in normalised form: the filter's fingerprint (order and repetition of
# values ignored, canonical pattern names), the sort, the row offset and the keyset position.
NORMALISED = frozenset(
    [
        "pattern",
        "symbol",
        "universe",
        "sector",
        "timeframe",
        "type",
        "confidence_min",
        "confidence_max",
        "detected_after",
        "detected_before",
        "active_only",
        "sort",
        "order",
        "page",
        "cursor",
    ]
)


def scan_key(
    params: BaseModel, *, fingerprint: str, sort: Sort, offset: int, after: tuple[Any, ...] | None
) -> str:
    """The cache key of a scan: every validated parameter (``params``), in normalised form where
    :data:`NORMALISED` says so, so that a parameter added later keys the entry by itself. It names no
    caller; the caller's own universe (``my``) is added by the route."""
    return digest(
        {
            "q": params.model_dump(mode="json", exclude=set(NORMALISED)),
            "f": fingerprint,
            "s": sort.spec,
            "o": offset,
            "a": list(after) if after is not None else None,
        }
    )


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


def ttl_until(expires: Iterable[Any], ttl_s: float) -> float:
    """``ttl_s``, shortened so that an entry dies when the first of ``expires`` (datetimes) passes."""
    now = time.time()
    for value in expires:
        if value is not None:
            ttl_s = min(ttl_s, value.timestamp() - now)
    return ttl_s if ttl_s > 0 and math.isfinite(ttl_s) else 0.0


def scan_body(rows: bytes, age_s: float | None, query_ms: float) -> bytes:
    """A scan's answer: the cached rows and cursor (a JSON object), and the figures of this request
    (``query_ms``; ``cache.hit`` and ``cache.age_ms``, null for a body not served from the cache)."""
    age = "null" if age_s is None else repr(round(age_s * 1000, 1))
    hit = "false" if age_s is None else "true"
    tail = f',"query_ms":{round(query_ms, 3)!r},"cache":{{"hit":{hit},"age_ms":{age}}}}}'
    return rows[:-1] + tail.encode()


def scan_ttl_s(settings: Settings, filt: ScanFilter, rows: list[dict[str, Any]]) -> float:
    """How long a page may be cached: the closed-range or normal TTL, cut short by the first
    ``expires_at`` of an ``active_only`` result (whose rows leave it as they expire)."""
    ttl_s = settings.cache_closed_ttl_s if closed_months(filt) is not None else settings.cache_ttl_s
    return ttl_until((r["expires_at"] for r in rows), ttl_s) if filt.active_only else ttl_s


def scan_dependencies(filt: ScanFilter) -> Dependencies:
    """The generations a scan's answer depends on: its timeframes (every one without that filter),
    per month for a closed past range (so new events do not touch it); reference data when a
    universe or sector filter is resolved through it."""
    if filt.detected_before is None:  # a range open at the end never closes: no clock involved
        return _open_dependencies(filt)
    return _dependencies(filt)


@functools.lru_cache(maxsize=1024)
def _open_dependencies(filt: ScanFilter) -> Dependencies:
    return _dependencies(filt)


def _dependencies(filt: ScanFilter) -> Dependencies:
    timeframes = sorted(set(filt.timeframes)) or list(TIMEFRAMES)
    months = closed_months(filt)
    events = [f"{tf}:{m}" for tf in timeframes for m in months] if months is not None else timeframes
    return Dependencies(
        events=tuple(events), strict=(REFERENCE_GENERATION,) if filt.universes or filt.sectors else ()
    )
