"""TickStock's upstream messages, recognised by their shape and normalised into schema v1.

:func:`hub.parsing.parse_event` calls :func:`to_v1` for every object :func:`is_upstream` recognises; the
bridge splits a ``patterns_batch`` with :func:`batch_items` first. ``docs/upstream.md`` is the contract:
its layout table says which field becomes which, and ``tests/hub/test_upstream_docs.py`` holds it to this
module. The shapes (``../shared/tickstock-upstream.md`` §1–2):

* **enveloped** (layouts A–D, G): ``event_type`` and an object ``data``; ``data.data`` when that is an
  object too (C, double-nested). The envelope's ``timestamp`` is the publish time.
* **flat** (E, F): the fields at the top level, with ``event_type`` (E) or without (F, recognised by
  ``tier``, ``detection_timestamp`` or ``price_at_detection`` where v1 would have ``type``).
* **streaming**: ``{type: "pattern_detected", detection: {...}}``; **batch**: ``{type: "patterns_batch",
  patterns: [{detection: {...}}, ...]}``.

Anything else is schema v1. Pure: no I/O, the verdict depends only on the bytes and the rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from hub.model import EventError, brief, canonical_json
from hub.tiers import TimeframeTable
from hub.upstream_ids import derived_id

__all__ = [
    "EVENT_TYPES",
    "MAX_BATCH",
    "TIMEFRAME_FROM",
    "UPSTREAM_PATTERN",
    "UpstreamRules",
    "batch_items",
    "derived_id",
    "is_batch",
    "is_upstream",
    "shape",
    "to_v1",
]

EVENT_TYPES = {
    "pattern_detected": "pattern_detected",
    "pattern_alert": "pattern_detected",
    "pattern": "pattern_detected",
    "pattern_updated": "pattern_updated",
    "pattern_expired": "pattern_expired",
}
MAX_BATCH = 500
"""The most detections one ``patterns_batch`` may carry; a larger one is a ``too_large`` dead letter."""
TIMEFRAME_FROM = "timeframe_from"
"""The ``data`` key that says where a timeframe not sent as a v1 name came from (``tier:intraday``)."""
UPSTREAM_PATTERN = "upstream_pattern"
"""The ``data`` key holding the pattern name as upstream spelled it."""
STREAMING_SOURCE = "tickstock-streaming"
DEFAULT_SOURCE = "tickstock"

_ENVELOPE_KEYS = frozenset({"event_type", "source", "timestamp", "data", "id", "flow_id"})
_STREAMING_KEYS = frozenset({"type", "event", "detection", "timestamp", "session_id"})
_FLAT_MARKERS = ("tier", "detection_timestamp", "price_at_detection")
_SPELLINGS = {
    "symbol": ("symbol", "ticker"),
    "pattern": ("pattern", "pattern_name", "pattern_type"),
    "price": ("price", "current_price", "price_at_detection"),
}
_LEVELS = {"stop_loss": "stop", "target_price": "target"}
_INDICATOR_LEVELS = {"support_level": "support", "resistance_level": "resistance"}
_FLAT_INDICATORS = {"rs": "relative_strength", "volume_multiple": "relative_volume", "rsi": "rsi"}
_NAME_LIMIT = 64


@dataclass(frozen=True, kw_only=True)
class UpstreamRules:
    """What the operator decides about upstream messages: the timeframe table (with its optional
    default) and the zone a naive ISO timestamp is read in (``TICKSTOCK_UPSTREAM_*``)."""

    timeframes: TimeframeTable = field(default_factory=TimeframeTable)
    naive_zone: tzinfo = UTC


DEFAULT_RULES = UpstreamRules()


def _field(loc: str, msg: str) -> dict[str, str]:
    return {"loc": loc, "msg": msg}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_batch(obj: Mapping[str, Any]) -> bool:
    return obj.get("type") == "patterns_batch"


def shape(obj: Mapping[str, Any]) -> str | None:
    """``enveloped``, ``flat``, ``streaming`` or ``batch`` for an upstream object; None for v1."""
    if is_batch(obj):
        return "batch"
    if "detection" in obj:
        return "streaming"
    if "event_type" in obj:
        return "enveloped" if "data" in obj else "flat"
    if "type" not in obj and any(k in obj for k in _FLAT_MARKERS):
        return "flat"
    return None


def is_upstream(obj: Mapping[str, Any]) -> bool:
    """True when ``obj`` is one of TickStock's upstream shapes rather than schema v1."""
    return shape(obj) is not None


def batch_items(obj: Mapping[str, Any]) -> list[bytes]:
    """The detections of a ``patterns_batch``, each as the streaming message it stands for
    (``{"type": "pattern_detected", **item}``; an item that is not an object as its own JSON), so that
    each is validated, forwarded or dead-lettered alone. Raises ``invalid_field`` for a batch without a
    non-empty ``patterns`` list and ``too_large`` above :data:`MAX_BATCH` detections."""
    items = obj.get("patterns")
    if not isinstance(items, list) or not items:
        raise EventError(
            "invalid_field",
            "a patterns_batch needs a non-empty patterns list",
            fields=[_field("patterns", "must be a non-empty list")],
        )
    if len(items) > MAX_BATCH:
        raise EventError(
            "too_large", f"a patterns_batch of {len(items)} detections; the limit is {MAX_BATCH}"
        )
    out = []
    for item in items:
        message = {"type": "pattern_detected", **item} if isinstance(item, dict) else item
        try:
            out.append(canonical_json(message))
        except (TypeError, ValueError, RecursionError):
            raise EventError("invalid_field", "a patterns_batch holds values that are not JSON") from None
    return out


def to_v1(obj: Mapping[str, Any], rules: UpstreamRules = DEFAULT_RULES) -> dict[str, Any]:
    """The v1 fields for an upstream object, ready for :class:`hub.model.PatternEvent` validation.

    Raises :class:`EventError` for what only the upstream shape can get wrong (``unknown_field``,
    ``missing_field``, ``unknown_type``, ``unknown_timeframe``, ``invalid_timestamp``, ``invalid_field``);
    the rest is left to the v1 checks. A well-formed ``patterns_batch`` is refused ``invalid_field``: it
    holds several events, which only the bridge splits. Does not modify ``obj``.
    """
    kind = shape(obj)
    if kind == "batch":
        count = len(batch_items(obj))
        raise EventError("invalid_field", f"a patterns_batch of {count} detections; the bridge splits it")
    if kind == "streaming":
        outer, middle, inner = _streaming(obj)
    elif kind == "enveloped":
        outer, middle, inner = _enveloped(obj)
    else:  # flat: the envelope's keys are the detection's
        outer, middle = {}, {}
        inner = {k: v for k, v in obj.items() if k not in ("event_type", "id")}
    event: dict[str, Any] = {"type": _event_type(obj, kind)}
    data: dict[str, Any] = {}
    for key, value in middle.items():
        if key not in ("data", "tier", "source", "event_type"):
            data[key] = value
    for field_name in _SPELLINGS:
        present, value = _pick(inner, field_name)
        if present:
            event[field_name] = value
    if isinstance(event.get("pattern"), str):
        data[UPSTREAM_PATTERN] = event["pattern"]  # Engulfing_Bull keeps its sign beside `engulfing`
    if "confidence" in inner:
        event["confidence"] = inner.pop("confidence")
    event["detected_at"] = _detected_at(outer, inner, rules)
    flat_source = inner.get("source") if kind == "flat" else None
    timeframe, origin, tier = _timeframe(middle, inner, rules)
    event["timeframe"] = timeframe
    if "expires_at" in inner:
        event["expires_at"] = _timestamp(inner.pop("expires_at"), "expires_at", rules)
    _measures(kind, inner, event)
    if kind == "streaming":
        event["source"] = STREAMING_SOURCE
    elif kind == "flat" and rules.timeframes.lookup(flat_source) is not None:
        event["source"] = DEFAULT_SOURCE  # a flat message's source is its tier (layout E)
    elif "source" in obj:
        event["source"] = obj["source"]
    data.update(inner)
    if origin is not None:
        data[TIMEFRAME_FROM] = origin
    if tier is not None:
        data["tier"] = tier
    for key in ("flow_id", "session_id"):
        if key in outer and key not in data:
            data[key] = outer[key]
    event["data"] = data
    event["id"] = obj["id"] if "id" in obj else derived_id(event, obj)
    return event


def _streaming(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    extra = sorted(set(obj) - _STREAMING_KEYS)
    if extra:
        raise EventError(
            "unknown_field",
            f"unknown streaming message field(s): {', '.join(extra)}",
            fields=[_field(key, "extra inputs are not permitted") for key in extra],
        )
    detection = obj["detection"]
    if not isinstance(detection, Mapping):
        raise EventError(
            "invalid_field", "detection must be an object", fields=[_field("detection", "must be an object")]
        )
    return dict(obj), {}, dict(detection)


def _enveloped(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    extra = sorted(set(obj) - _ENVELOPE_KEYS)
    if extra:
        raise EventError(
            "unknown_field",
            f"unknown envelope field(s): {', '.join(extra)}",
            fields=[_field(key, "extra inputs are not permitted") for key in extra],
        )
    data = obj["data"]
    if not isinstance(data, Mapping):
        raise EventError(
            "invalid_field", "data must be an object", fields=[_field("data", "must be an object")]
        )
    nested = data.get("data")
    if isinstance(nested, Mapping):  # layout C: the pattern one level further down
        return dict(obj), dict(data), dict(nested)
    return dict(obj), {}, dict(data)


def _event_type(obj: Mapping[str, Any], kind: str | None) -> str:
    if kind == "streaming":
        value = obj.get("type", obj.get("event", "pattern_detected"))
        if value != "pattern_detected":
            raise EventError("unknown_type", f"streaming type {brief(value)} is not pattern_detected")
        return "pattern_detected"
    value = obj.get("event_type", "pattern_detected")  # layout F has none: a detection
    if not isinstance(value, str) or value not in EVENT_TYPES:
        raise EventError("unknown_type", f"event_type {brief(value)} is not one of {' '.join(EVENT_TYPES)}")
    return EVENT_TYPES[value]


def _pick(inner: dict[str, Any], name: str) -> tuple[bool, Any]:
    found = {key: inner.pop(key) for key in _SPELLINGS[name] if key in inner}
    values = list(found.values())
    if any(v != values[0] for v in values[1:]):
        raise EventError(
            "invalid_field",
            f"{' and '.join(found)} disagree",
            fields=[_field(key, "conflicting spelling") for key in found],
        )
    return bool(values), values[0] if values else None


def _timestamp(value: object, loc: str, rules: UpstreamRules) -> datetime:
    try:
        if _number(value):
            return datetime.fromtimestamp(value, tz=UTC)  # type: ignore[arg-type]  # _number checked it
        if isinstance(value, str) and value[:4].isdigit():
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=rules.naive_zone)
    except (ValueError, OverflowError, OSError):
        pass
    raise EventError(
        "invalid_timestamp",
        f"{loc} must be epoch seconds or an ISO 8601 date-time, not {brief(value)}",
        fields=[_field(loc, "invalid timestamp")],
    )


def _detected_at(outer: Mapping[str, Any], inner: dict[str, Any], rules: UpstreamRules) -> datetime:
    """``detection_timestamp`` (F; its ``timestamp``, the publish time, stays in ``data``), else the
    detection's ``timestamp``, else the envelope's."""
    if "detection_timestamp" in inner:
        return _timestamp(inner.pop("detection_timestamp"), "detection_timestamp", rules)
    if "timestamp" in inner:
        return _timestamp(inner.pop("timestamp"), "timestamp", rules)
    if "timestamp" in outer:
        return _timestamp(outer["timestamp"], "timestamp", rules)
    raise EventError(
        "missing_field", "no detection time (timestamp)", fields=[_field("timestamp", "required")]
    )


def _timeframe(
    middle: Mapping[str, Any], inner: dict[str, Any], rules: UpstreamRules
) -> tuple[str, str | None, str | None]:
    """(v1 timeframe, where it came from unless it was sent as a v1 name, the tier if one was read).

    The first of ``timeframe``, ``tier``, ``source`` (the detection's level, then C's middle level)
    that the table knows; enveloped messages name their publisher in the envelope's ``source``, which
    is never read as a tier."""
    table = rules.timeframes
    candidates = [
        (key, level[key])
        for level in (inner, middle)
        for key in ("timeframe", "tier", "source")
        if key in level
    ]
    for key in ("timeframe", "tier", "source"):
        inner.pop(key, None)
    tier = next((v for k, v in candidates if k == "tier" and isinstance(v, str)), None)
    for key, value in candidates:
        found = table.lookup(value)
        if found is not None:
            if key == "source" and tier is None:
                tier = str(value)
            origin = None if key == "timeframe" and value == found else f"{key}:{value}"
            return found, origin, tier
    if table.default is not None:
        return table.default, "default", tier
    sent = (
        ", ".join(f"{key} {brief(value)}" for key, value in candidates) or "none of timeframe, tier, source"
    )
    raise EventError(
        "unknown_timeframe",
        f"no timeframe in the table for {sent} (TICKSTOCK_UPSTREAM_TIMEFRAMES)",
        fields=[_field("timeframe", "cannot be determined")],
    )


def _measures(kind: str | None, inner: dict[str, Any], event: dict[str, Any]) -> None:
    """Indicators, levels, volume and price from where upstream puts them."""
    indicators: dict[str, Any] = {}
    levels: dict[str, Any] = {}
    raw = inner.pop("indicators", None)
    if raw is not None and not isinstance(raw, Mapping):
        event["indicators"] = raw  # the v1 check names the problem
        raw = None
    rest: dict[str, Any] = {}
    for name, value in (raw or {}).items():
        if name in _INDICATOR_LEVELS and _number(value):
            levels[_INDICATOR_LEVELS[name]] = value
        elif _number(value) and len(name) <= _NAME_LIMIT:
            indicators[name] = value
        elif isinstance(value, Mapping) and all(_number(v) for v in value.values()):
            indicators.update(
                {f"{name}_{k}": v for k, v in value.items() if len(f"{name}_{k}") <= _NAME_LIMIT}
            )
        else:
            rest[name] = value
    if rest:
        inner["indicators"] = rest
    if kind == "flat":
        for name, target in _FLAT_INDICATORS.items():
            if _number(inner.get(name)):
                indicators.setdefault(target, inner.pop(name))
    given_levels = inner.pop("levels", None)
    if given_levels is not None and not isinstance(given_levels, Mapping):
        event["levels"] = given_levels
    else:
        levels.update(given_levels or {})
    for name, target in _LEVELS.items():
        if _number(inner.get(name)):
            levels[target] = inner.pop(name)
    given_bar = inner.get("bar_data")
    bar: Mapping[str, Any] = given_bar if isinstance(given_bar, Mapping) else {}
    volume = inner.pop("volume", None)
    for candidate in (volume, bar.get("volume"), indicators.get("volume")):
        if candidate is not None:
            event["volume"] = candidate
            break
    if "price" not in event and _number(bar.get("close")):
        event["price"] = bar["close"]
    if indicators and "indicators" not in event:
        event["indicators"] = indicators
    if levels and "levels" not in event:
        event["levels"] = levels
