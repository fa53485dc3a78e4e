"""TickStock's legacy event envelope, normalised into schema v1 so existing producers plug in unchanged.

:func:`hub.parsing.parse_event` calls :func:`to_v1` for an envelope; this module builds only on
:mod:`hub.model`.

The envelope is ``{"event_type", "source"?, "timestamp", "data": {...}, "id"?}``:

* ``event_type``: ``pattern_detected``, ``pattern_alert`` or ``pattern`` (all -> ``pattern_detected``),
  ``pattern_updated`` or ``pattern_expired``.
* ``timestamp`` (-> ``detected_at``) and ``data.expires_at``: epoch seconds (int or float) or an ISO 8601
  string with a timezone. Epoch milliseconds are rejected (they land after year 9999), not rescaled.
* ``data.symbol`` or ``data.ticker``; ``data.pattern``, ``data.pattern_name`` or ``data.pattern_type``;
  ``data.price`` or ``data.current_price``. Two spellings that disagree are rejected.
* ``data.timeframe``: a v1 name, or ``1m 5m 15m 30m 1h 60min 1d D 1w 1mo``; ``daily`` when absent.
* ``data.confidence``, ``volume``, ``levels``, ``indicators`` are taken as they are (a 0-100
  confidence is rejected as ``confidence_out_of_range`` by the v1 checks, never rescaled).
* Every other key of ``data`` is kept in the v1 ``data`` object.
* Without ``id`` the event id is the first 32 hex digits of the SHA-256 of the envelope's canonical
  JSON, so a re-sent identical message has the same id and deduplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hub.model import TIMEFRAMES, EventError, brief, canonical_json

__all__ = ["LEGACY_EVENT_TYPES", "LEGACY_TIMEFRAMES", "derived_id", "is_legacy", "to_v1"]

LEGACY_EVENT_TYPES = {
    "pattern_detected": "pattern_detected",
    "pattern_alert": "pattern_detected",
    "pattern": "pattern_detected",
    "pattern_updated": "pattern_updated",
    "pattern_expired": "pattern_expired",
}
# Case matters: "1m" is a minute, and a future "1M" must not silently become one.
LEGACY_TIMEFRAMES = {
    "1m": "1min",
    "5m": "5min",
    "15m": "15min",
    "30m": "30min",
    "1h": "hourly",
    "60min": "hourly",
    "1d": "daily",
    "D": "daily",
    "1w": "weekly",
    "1mo": "monthly",
    **{tf: tf for tf in TIMEFRAMES},
}
DEFAULT_TIMEFRAME = "daily"
ID_HEX_DIGITS = 32

_ENVELOPE_KEYS = frozenset({"event_type", "source", "timestamp", "data", "id"})
_ALIASES = {
    "symbol": ("symbol", "ticker"),
    "pattern": ("pattern", "pattern_name", "pattern_type"),
    "price": ("price", "current_price"),
}
_AS_IS = ("confidence", "volume", "levels", "indicators")


def is_legacy(obj: Mapping[str, Any]) -> bool:
    """True when ``obj`` is a legacy envelope: it has an ``event_type`` key (v1 has ``type``)."""
    return "event_type" in obj


def _field(loc: str, msg: str) -> dict[str, str]:
    return {"loc": loc, "msg": msg}


def _timestamp(value: object, loc: str) -> datetime:
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value)
            if parsed.utcoffset() is not None:
                return parsed
    except (ValueError, OverflowError, OSError):
        pass
    raise EventError(
        "invalid_timestamp",
        f"{loc} must be epoch seconds or an ISO 8601 date-time with a timezone, not {brief(value)}",
        fields=[_field(loc, "invalid timestamp")],
    )


def _pick(data: dict[str, Any], field: str) -> tuple[bool, Any]:
    found = {key: data.pop(key) for key in _ALIASES[field] if key in data}
    values = list(found.values())
    if any(v != values[0] for v in values[1:]):
        raise EventError(
            "invalid_field",
            f"data.{' and data.'.join(found)} disagree",
            fields=[_field(f"data.{key}", "conflicting spelling") for key in found],
        )
    return bool(values), values[0] if values else None


def to_v1(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The v1 fields for a legacy ``envelope``, ready for :class:`hub.model.PatternEvent` validation.

    Raises :class:`EventError` for problems only the envelope can have (``unknown_field``,
    ``missing_field``, ``unknown_type``, ``unknown_timeframe``, ``invalid_timestamp``,
    ``invalid_field``); everything else is left to the v1 checks. Does not modify ``envelope``.
    """
    extra = sorted(set(envelope) - _ENVELOPE_KEYS)
    if extra:
        raise EventError(
            "unknown_field",
            f"unknown legacy envelope field(s): {', '.join(extra)}",
            fields=[_field(key, "extra inputs are not permitted") for key in extra],
        )
    for key in ("timestamp", "data"):
        if key not in envelope:
            raise EventError("missing_field", f"no legacy {key}", fields=[_field(key, "required")])
    if not isinstance(envelope["data"], Mapping):
        raise EventError(
            "invalid_field", "legacy data must be an object", fields=[_field("data", "must be an object")]
        )
    event_type = envelope["event_type"]
    if not isinstance(event_type, str) or event_type not in LEGACY_EVENT_TYPES:
        raise EventError(
            "unknown_type",
            f"legacy event_type {brief(event_type)} is not one of {' '.join(LEGACY_EVENT_TYPES)}",
        )

    data = dict(envelope["data"])
    event: dict[str, Any] = {"type": LEGACY_EVENT_TYPES[event_type]}
    event["detected_at"] = _timestamp(envelope["timestamp"], "timestamp")
    for field in _ALIASES:
        present, value = _pick(data, field)
        if present:
            event[field] = value
    for field in _AS_IS:
        if field in data:
            event[field] = data.pop(field)
    timeframe = data.pop("timeframe", None)
    if timeframe is None:
        timeframe = DEFAULT_TIMEFRAME
    if not isinstance(timeframe, str) or timeframe not in LEGACY_TIMEFRAMES:
        raise EventError(
            "unknown_timeframe",
            f"legacy timeframe {brief(timeframe)} is not one of {' '.join(LEGACY_TIMEFRAMES)}",
        )
    event["timeframe"] = LEGACY_TIMEFRAMES[timeframe]
    expires_at = data.pop("expires_at", None)
    if expires_at is not None:
        event["expires_at"] = _timestamp(expires_at, "data.expires_at")
    if envelope.get("source") is not None:
        event["source"] = envelope["source"]
    event["data"] = data
    event["id"] = envelope["id"] if "id" in envelope else derived_id(envelope)
    return event


def derived_id(envelope: Mapping[str, Any]) -> str:
    """The first 32 hex digits of the SHA-256 of ``envelope``'s canonical JSON; raises ``invalid_field``."""
    try:
        encoded = canonical_json(dict(envelope))
    except UnicodeEncodeError:
        raise EventError("invalid_field", "legacy envelope holds text that is not valid Unicode") from None
    except (TypeError, ValueError, RecursionError):
        raise EventError("invalid_field", "legacy envelope holds values that are not finite JSON") from None
    return hashlib.sha256(encoded).hexdigest()[:ID_HEX_DIGITS]
