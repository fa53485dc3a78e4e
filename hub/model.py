"""The pattern event, schema v1: its vocabulary, its one error type, and the immutable model.

:class:`PatternEvent` is schema v1 (``schema/pattern-event-v1.json`` is the same contract for other
services, :func:`load_json_schema` reads it). Build events with :func:`hub.parsing.parse_event`, which
turns every failure into an :class:`EventError` whose ``reason`` is one of :data:`REASONS`:

``not_json`` ``not_object`` ``too_large`` ``missing_field`` ``invalid_field`` ``unknown_field``
``confidence_out_of_range`` ``unknown_timeframe`` ``unknown_type`` ``unknown_pattern``
``invalid_symbol`` ``invalid_timestamp`` ``data_too_large`` ``subject_mismatch`` ``invalid_subject``
``detected_at_out_of_range`` ``expires_at_out_of_range`` (with a time window: :mod:`hub.window`), and
``id_conflict`` (raised by the writer, not the parser).

A symbol is 1-15 characters from ``A-Z 0-9 . - / ^ = $`` after upper-casing (ASCII input only):
``AAPL``, ``BRK.B``, ``ABR$D`` (a preferred share in ACT notation), ``BTC-USD``, ``^GSPC``, ``ES=F``
(:func:`canonical_symbol`; its subject token form is in :mod:`hub.subjects`). Timestamps are RFC 3339
with a timezone (:data:`RFC3339`), held in UTC and written with a ``Z``.

This module imports nothing else of the hub: subjects, the catalog and the parser build on it.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "EVENT_TYPES",
    "MAX_DATA_BYTES",
    "MAX_SYMBOL_LENGTH",
    "REASONS",
    "RFC3339",
    "SCHEMA_VERSION",
    "TIMEFRAMES",
    "EventError",
    "EventType",
    "PatternEvent",
    "Timeframe",
    "Timestamp",
    "brief",
    "canonical_json",
    "canonical_symbol",
    "format_utc",
    "load_json_schema",
]

SCHEMA_VERSION: Literal[1] = 1
MAX_DATA_BYTES = 16 * 1024
MAX_LEVELS = 32
MAX_INDICATORS = 64
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 64
MAX_SYMBOL_LENGTH = 15
MAX_ERROR_FIELDS = 20

Timeframe = Literal["1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly"]
EventType = Literal["pattern_detected", "pattern_updated", "pattern_expired"]
TIMEFRAMES: tuple[str, ...] = get_args(Timeframe)
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

REASONS = frozenset(
    {
        "not_json",
        "not_object",
        "too_large",
        "missing_field",
        "invalid_field",
        "unknown_field",
        "confidence_out_of_range",
        "unknown_timeframe",
        "unknown_type",
        "unknown_pattern",
        "invalid_symbol",
        "invalid_timestamp",
        "data_too_large",
        "subject_mismatch",
        "invalid_subject",
        # time bounds (hub.window) and an id stored with a different payload (the writer)
        "detected_at_out_of_range",
        "expires_at_out_of_range",
        "id_conflict",
    }
)

_SYMBOL = re.compile(rf"[A-Z0-9.\-/^=$]{{1,{MAX_SYMBOL_LENGTH}}}")
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
"""An RFC 3339 date-time with a timezone (``Z`` or ``+hh:mm``); the one pattern the hub checks against."""


class EventError(ValueError):
    """An event or subject was rejected.

    ``reason`` is a machine-readable code from :data:`REASONS`, ``detail`` a sentence for humans and
    ``fields`` a list of ``{"loc": "levels.stop", "msg": "..."}`` (the first ``MAX_ERROR_FIELDS``) when
    individual fields were at fault. Raises :class:`ValueError` itself for a reason not in the set.
    """

    def __init__(self, reason: str, detail: str = "", *, fields: Iterable[Mapping[str, str]] = ()) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown EventError reason {reason!r}")
        self.reason = reason
        self.detail = detail or reason.replace("_", " ")
        self.fields: list[dict[str, str]] = [dict(f) for f in itertools.islice(fields, MAX_ERROR_FIELDS)]
        super().__init__(f"{reason}: {self.detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason, self.detail), {"fields": self.fields}

    def as_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready problem body: ``reason``, ``detail`` and ``fields``."""
        return {"reason": self.reason, "detail": self.detail, "fields": [dict(f) for f in self.fields]}


def brief(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, so error details stay small whatever arrives."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def canonical_symbol(symbol: str) -> str:
    """Upper-case ``symbol`` and check it against the symbol alphabet; raises ``invalid_symbol``."""
    if isinstance(symbol, str) and symbol.isascii():
        upper = symbol.upper()
        if _SYMBOL.fullmatch(upper):
            return upper
    raise EventError(
        "invalid_symbol",
        f"symbol {brief(symbol)} must be 1-{MAX_SYMBOL_LENGTH} characters of A-Z, 0-9 and . - / ^ = $",
    )


# -- timestamps -------------------------------------------------------------------------------------


def _rfc3339(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper())
        except ValueError:
            pass
    raise PydanticCustomError(
        "invalid_timestamp", "expected an RFC 3339 date-time with a timezone, e.g. 2024-05-01T14:30:00Z"
    )


def _as_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("invalid_timestamp", "date-time is out of range in UTC") from None


def format_utc(value: datetime) -> str:
    timespec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    AfterValidator(_as_utc),
    PlainSerializer(format_utc, when_used="json"),
]


# -- the v1 model -----------------------------------------------------------------------------------


def _symbol_field(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return canonical_symbol(value)
    except EventError as exc:
        raise PydanticCustomError("invalid_symbol", "{detail}", {"detail": exc.detail}) from None


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
Number = Annotated[float, Field(allow_inf_nan=False)]


def canonical_json(value: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys; raises TypeError/ValueError for non-JSON values (NaN too)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class PatternEvent(BaseModel):
    """One pattern event, schema v1. Immutable; timestamps are UTC; build it with
    :func:`hub.parsing.parse_event`.

    Validating with ``context={"catalog": catalog}`` (a :class:`hub.catalog.PatternCatalog`, or anything
    with its ``canonical(name) -> str`` method) canonicalises ``pattern`` through it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[!-~]+$")]
    type: EventType
    symbol: Annotated[str, BeforeValidator(_symbol_field)]
    pattern: Name
    timeframe: Timeframe
    confidence: Annotated[float, Field(ge=0, le=1)]
    detected_at: Timestamp
    expires_at: Timestamp | None = None
    price: Annotated[float, Field(ge=0)] | None = None
    volume: Annotated[float, Field(ge=0)] | None = None
    levels: Annotated[dict[Name, Number], Field(max_length=MAX_LEVELS)] = {}
    indicators: Annotated[dict[Name, Number], Field(max_length=MAX_INDICATORS)] = {}
    source: Name = "unknown"
    data: dict[str, Any] = {}

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_not_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise PydanticCustomError("invalid_field", "schema_version must be the number 1")
        return value

    @field_validator("pattern")
    @classmethod
    def _canonical_pattern(cls, value: str, info: ValidationInfo) -> str:
        catalog = (info.context or {}).get("catalog")
        if catalog is None:
            return value
        try:
            name = catalog.canonical(value)
        except EventError as exc:
            raise PydanticCustomError("unknown_pattern", "{detail}", {"detail": exc.detail}) from None
        if len(name) > MAX_NAME_LENGTH:
            raise PydanticCustomError("invalid_field", "canonical pattern name is longer than 64 characters")
        return str(name)

    @field_validator("expires_at")
    @classmethod
    def _expires_after_detection(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        detected = info.data.get("detected_at")
        if value is not None and detected is not None and value <= detected:
            raise PydanticCustomError("invalid_timestamp", "expires_at must be after detected_at")
        return value

    @field_validator("data")
    @classmethod
    def _bounded_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Pydantic checks the keys; the values are Any, so lone surrogates and NaN are caught here.
        if not value:
            return {}
        try:
            encoded = canonical_json(value)
        except (TypeError, ValueError, RecursionError):
            raise PydanticCustomError(
                "invalid_field", "data must hold only JSON values: finite numbers, valid Unicode text"
            ) from None
        if len(encoded) > MAX_DATA_BYTES:
            raise PydanticCustomError(
                "data_too_large",
                "data encodes to {size} bytes; the limit is {limit}",
                {"size": len(encoded), "limit": MAX_DATA_BYTES},
            )
        # A private copy the caller cannot change under us: shallow is enough for flat objects (the
        # common case: levels, indicators), nested ones are rebuilt from the encoding.
        if any(isinstance(v, dict | list) for v in value.values()):
            return cast(dict[str, Any], json.loads(encoded))
        return dict(value)

    def to_json_bytes(self) -> bytes:
        """The canonical encoding for the clean stream: compact, sorted keys, ``Z`` timestamps.

        Computed once per event and cached; every optional field is present (``null`` when unset).
        """
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> PatternEvent:
        """Pydantic's copy (``update`` is not validated), without the cached encoding of the original."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_encoded", None)
        return copied


def load_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of v1, read from the package data; a fresh dict per call."""
    text = resources.files("hub").joinpath("schema", "pattern-event-v1.json").read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))
