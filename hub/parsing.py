"""The one parser in front of the hub: raw bytes (or a decoded mapping) in, a valid :class:`PatternEvent` out.

:func:`parse_event` takes schema v1 or one of TickStock's upstream shapes (normalised by :mod:`hub.upstream`),
checks its size before decoding, reads the JSON strictly (:func:`loads_json`), validates it against
:class:`hub.model.PatternEvent` and maps the pattern name through a :class:`hub.catalog.PatternCatalog`.
Every failure is an :class:`hub.model.EventError` with a reason from :data:`hub.model.REASONS`.

When several fields fail at once, ``reason`` is that of the first failure (in field order) with a
reason more specific than ``invalid_field``; ``fields`` lists the failures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from hub import upstream
from hub.catalog import PatternCatalog
from hub.model import REASONS, EventError, PatternEvent
from hub.upstream import DEFAULT_RULES, UpstreamRules
from hub.window import EventWindow, check_window

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "loads_json", "parse_event"]

DEFAULT_MAX_EVENT_BYTES = 64 * 1024
"""The largest encoded event :func:`parse_event` reads, unless told otherwise."""

_FIELD_REASONS = {
    "type": "unknown_type",
    "timeframe": "unknown_timeframe",
    "symbol": "invalid_symbol",
    "detected_at": "invalid_timestamp",
    "expires_at": "invalid_timestamp",
}
_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def _reason(error: Mapping[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind in REASONS:
        return str(kind)
    if kind == "missing":
        return "missing_field"
    if kind == "extra_forbidden":
        return "unknown_field"
    if loc and loc[0] == "confidence":
        return "confidence_out_of_range" if kind in _RANGE_ERRORS else "invalid_field"
    return _FIELD_REASONS.get(loc[0] if loc else "", "invalid_field")


def _from_validation_error(exc: ValidationError) -> EventError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    reasons = [_reason(e) for e in errors]
    reason = next((r for r in reasons if r != "invalid_field"), "invalid_field")
    fields = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in errors]
    first = fields[reasons.index(reason)]
    detail = f"{first['loc']}: {first['msg']}"
    if len(fields) > 1:
        detail += f" (and {len(fields) - 1} more)"
    return EventError(reason, detail, fields=fields)


def loads_json(text: bytes | str) -> Any:
    """JSON as events must be written: a duplicate key or ``NaN``/``Infinity`` is an error. Raises
    :class:`ValueError` (or :class:`RecursionError` for absurd nesting); the HTTP ingest body uses it
    too, so both ways in read JSON by the same rules."""
    return json.loads(text, parse_constant=reject_constant, object_pairs_hook=_unique_keys)


def reject_constant(name: str) -> Any:
    """A ``parse_constant`` hook: ``NaN`` and ``Infinity`` are not JSON (PostgreSQL refuses them too)."""
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _decode(raw: bytes | bytearray | memoryview | str | Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        try:
            encoded = json.dumps(raw, separators=(",", ":"), ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError) as exc:
            raise EventError("not_json", f"event is not JSON-serialisable: {exc}") from None
        size = len(encoded.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise EventError("too_large", f"event encodes to {size} bytes; the limit is {max_bytes}")
        return dict(raw)
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise EventError("not_json", "event text is not valid Unicode") from None
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EventError("not_object", f"an event must be a JSON object, not {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise EventError("too_large", f"event is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        obj = loads_json(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise EventError("not_json", f"event is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventError("not_object", f"an event must be a JSON object, not {type(obj).__name__}")
    return obj


def parse_event(
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    catalog: PatternCatalog,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    window: EventWindow | None = None,
    rules: UpstreamRules = DEFAULT_RULES,
) -> PatternEvent:
    """Validate one v1 event or upstream message and return it as a v1 :class:`PatternEvent`.

    ``raw`` is UTF-8 JSON (bytes or str) or an already-decoded mapping. Its size is checked against
    ``max_bytes`` before it is parsed (a mapping is measured by its compact JSON encoding). An object in
    one of TickStock's upstream shapes (:func:`hub.upstream.shape`) is normalised with ``rules``,
    anything else is v1. The pattern name is mapped
    through ``catalog``. Pure: no I/O. Raises :class:`EventError` for every invalid input, with the
    most specific reason of the errors found; :class:`ValueError` if ``max_bytes`` is not positive.
    With ``window``, an event otherwise valid is also checked by :func:`hub.window.check_window`.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    obj = _decode(raw, max_bytes)
    if upstream.is_upstream(obj):
        obj = upstream.to_v1(obj, rules)
    try:
        event = PatternEvent.model_validate(obj, context={"catalog": catalog})
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    if window is not None:
        check_window(event, window)
    return event
