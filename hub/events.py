"""Pattern events: the v1 schema, the subjects they travel on, and the one parser in front of both.

Subjects. Producers publish to ``tickstock.ingest.<timeframe>.<token>``; the hub republishes validated
events to ``tickstock.patterns.<timeframe>.<token>``. A NATS subject token cannot hold ``.``, ``*``,
``>`` or whitespace, so a symbol is carried as a *token*:

* A symbol is 1-15 characters from ``A-Z 0-9 . - / ^ = $`` after upper-casing (ASCII input only):
  ``AAPL``, ``BRK.B``, ``ABR$D`` (a preferred share in ACT notation), ``BTC-USD``, ``^GSPC``, ``ES=F``.
* Its token replaces ``.`` with ``_`` and ``/`` with ``~`` (``/`` is legal in NATS, but the MQTT
  gateway rewrites it to ``.``); every other character is kept. Neither ``_`` nor ``~`` is in the
  symbol alphabet, so the mapping is a bijection between canonical (upper-case) symbols and tokens
  of 1-15 characters from ``A-Z 0-9 _ - ~ ^ = $``: ``BRK.B`` <-> ``BRK_B``. :func:`token_to_symbol`
  accepts exactly the tokens :func:`symbol_to_token` can produce (so no lower case) and inverts it.

Events. :class:`PatternEvent` is schema v1 (``schema/pattern-event-v1.json`` is the same contract for
other services). :func:`parse_event` takes v1 or TickStock's legacy envelope (see :mod:`hub.legacy`)
and returns a validated event, or raises :class:`EventError` whose ``reason`` is one of
:data:`REASONS`:

``not_json`` ``not_object`` ``too_large`` ``missing_field`` ``invalid_field`` ``unknown_field``
``confidence_out_of_range`` ``unknown_timeframe`` ``unknown_type`` ``unknown_pattern``
``invalid_symbol`` ``invalid_timestamp`` ``data_too_large`` ``subject_mismatch`` ``invalid_subject``
``detected_at_out_of_range`` ``expires_at_out_of_range`` (only with a ``window``, see :class:`EventWindow`),
and ``id_conflict`` (raised by the writer, not the parser)

When several fields fail at once, ``reason`` is that of the first failure (in field order) with a
reason more specific than ``invalid_field``; ``fields`` lists the failures.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "CLEAN_PREFIX", "DEFAULT_MAX_EVENT_BYTES", "EVENT_TYPES", "INGEST_PREFIX", "MAX_DATA_BYTES", "REASONS",
    "SCHEMA_VERSION", "TIMEFRAMES", "EventError", "EventWindow", "PatternCatalog", "PatternEvent", "SubjectParts",
    "canonical_json", "canonical_symbol", "check_subject", "check_window", "clean_subject", "ingest_subject",
    "load_json_schema", "loads_json", "parse_event", "parse_subject", "symbol_to_token", "token_to_symbol",
]

INGEST_PREFIX = "tickstock.ingest"
CLEAN_PREFIX = "tickstock.patterns"
SCHEMA_VERSION: Literal[1] = 1
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
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

REASONS = frozenset({
    "not_json", "not_object", "too_large", "missing_field", "invalid_field", "unknown_field",
    "confidence_out_of_range", "unknown_timeframe", "unknown_type", "unknown_pattern", "invalid_symbol",
    "invalid_timestamp", "data_too_large", "subject_mismatch", "invalid_subject",
    # issue #11: time bounds (EventWindow) and an id stored with a different payload (the writer)
    "detected_at_out_of_range", "expires_at_out_of_range", "id_conflict",
})

_SYMBOL = re.compile(rf"[A-Z0-9.\-/^=$]{{1,{MAX_SYMBOL_LENGTH}}}")
_TOKEN = re.compile(rf"[A-Z0-9_\-~^=$]{{1,{MAX_SYMBOL_LENGTH}}}")
_KINDS: dict[str, Literal["ingest", "clean"]] = {INGEST_PREFIX: "ingest", CLEAN_PREFIX: "clean"}
_TO_TOKEN = str.maketrans({".": "_", "/": "~"})
_FROM_TOKEN = str.maketrans({"_": ".", "~": "/"})
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


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


def _brief(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, so error details stay small whatever arrives."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- subjects ---------------------------------------------------------------------------------------


class SubjectParts(NamedTuple):
    """A parsed subject: ``kind`` is ``"ingest"`` or ``"clean"``, ``symbol`` is canonical."""

    kind: Literal["ingest", "clean"]
    timeframe: str
    symbol: str


def canonical_symbol(symbol: str) -> str:
    """Upper-case ``symbol`` and check it against the symbol alphabet; raises ``invalid_symbol``."""
    if isinstance(symbol, str) and symbol.isascii():
        upper = symbol.upper()
        if _SYMBOL.fullmatch(upper):
            return upper
    raise EventError(
        "invalid_symbol",
        f"symbol {_brief(symbol)} must be 1-{MAX_SYMBOL_LENGTH} characters of A-Z, 0-9 and . - / ^ = $",
    )


def symbol_to_token(symbol: str) -> str:
    """The subject token for ``symbol`` (``BRK.B`` -> ``BRK_B``); raises ``invalid_symbol``."""
    return canonical_symbol(symbol).translate(_TO_TOKEN)


def token_to_symbol(token: str) -> str:
    """The symbol a subject token stands for (``BRK_B`` -> ``BRK.B``); raises ``invalid_symbol``.

    Exact inverse of :func:`symbol_to_token`: lower-case tokens are rejected, not folded.
    """
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise EventError("invalid_symbol", f"subject token {_brief(token)} is not a valid symbol token")
    return token.translate(_FROM_TOKEN)


def _subject(prefix: str, timeframe: str, symbol: str) -> str:
    if timeframe not in TIMEFRAMES:
        raise EventError(
            "unknown_timeframe", f"timeframe {_brief(timeframe)} is not one of {' '.join(TIMEFRAMES)}"
        )
    return f"{prefix}.{timeframe}.{symbol_to_token(symbol)}"


def ingest_subject(timeframe: str, symbol: str) -> str:
    """``tickstock.ingest.<timeframe>.<token>``; raises ``unknown_timeframe`` or ``invalid_symbol``."""
    return _subject(INGEST_PREFIX, timeframe, symbol)


def clean_subject(timeframe: str, symbol: str) -> str:
    """``tickstock.patterns.<timeframe>.<token>``; raises ``unknown_timeframe`` or ``invalid_symbol``."""
    return _subject(CLEAN_PREFIX, timeframe, symbol)


def parse_subject(subject: str) -> SubjectParts:
    """Split an ingest or clean subject into ``(kind, timeframe, symbol)``; raises ``invalid_subject``."""
    parts = subject.split(".") if isinstance(subject, str) else []
    kind = _KINDS.get(".".join(parts[:2]))
    if kind is None or len(parts) != 4 or parts[2] not in TIMEFRAMES:
        raise EventError(
            "invalid_subject",
            f"subject {_brief(subject)} is not {INGEST_PREFIX}|{CLEAN_PREFIX}.<timeframe>.<symbol token>",
        )
    try:
        symbol = token_to_symbol(parts[3])
    except EventError as exc:
        raise EventError("invalid_subject", f"subject {_brief(subject)}: {exc.detail}") from None
    return SubjectParts(kind, parts[2], symbol)


def check_subject(event: PatternEvent, subject: str) -> None:
    """Check that ``subject`` names the event's timeframe and symbol.

    Raises ``invalid_subject`` if the subject is malformed, ``subject_mismatch`` if it disagrees.
    """
    _, timeframe, symbol = parse_subject(subject)
    if (timeframe, symbol) != (event.timeframe, event.symbol):
        raise EventError(
            "subject_mismatch",
            f"subject {subject!r} is for {symbol} {timeframe} but the event is for "
            f"{event.symbol} {event.timeframe}",
        )


# -- pattern names ----------------------------------------------------------------------------------

_IGNORED = re.compile(r"[\s_\-]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _match_key(name: str) -> str:
    return _IGNORED.sub("", name).casefold()


def _snake_case(name: str) -> str:
    return _NOT_ALNUM.sub("_", _CAMEL.sub("_", name)).strip("_").lower()


class PatternCatalog:
    """Canonical pattern names and their aliases, as held in ``pattern_definitions``.

    Names match case-insensitively, ignoring whitespace, ``_`` and ``-``. Construction raises
    :class:`ValueError` if two canonical names would match the same key; it does no I/O.
    """

    _MEMO_LIMIT = 4096

    def __init__(self, entries: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._permissive = False
        self._names: dict[str, str] = {}
        self._memo: dict[str, str] = {}  # exact spelling -> canonical; bounded, it is on the hot path
        for canonical, aliases in entries:
            if isinstance(aliases, str):
                raise TypeError(f"aliases of {canonical!r} must be an iterable of names, not a string")
            for name in (canonical, *aliases):
                key = _match_key(name)
                if not key:
                    raise ValueError(f"pattern name {name!r} (for {canonical!r}) is blank")
                if self._names.setdefault(key, canonical) != canonical:
                    raise ValueError(f"{name!r} names both {self._names[key]!r} and {canonical!r}")

    @classmethod
    def permissive(cls) -> PatternCatalog:
        """A catalog that accepts any name with a letter or digit and returns it in snake_case."""
        catalog = cls(())
        catalog._permissive = True
        return catalog

    def canonical(self, name: str) -> str:
        """The canonical name for ``name``; raises ``EventError(reason="unknown_pattern")``."""
        found = self._memo.get(name)
        if found is not None:
            return found
        found = _snake_case(name) if self._permissive else self._names.get(_match_key(name))
        if not found:
            raise EventError("unknown_pattern", f"pattern {_brief(name)} is not in the pattern catalog")
        if len(self._memo) < self._MEMO_LIMIT:
            self._memo[name] = found
        return found


# -- the v1 model -----------------------------------------------------------------------------------


def _rfc3339(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value):
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


def _format_utc(value: datetime) -> str:
    timespec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def _symbol_field(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return canonical_symbol(value)
    except EventError as exc:
        raise PydanticCustomError("invalid_symbol", "{detail}", {"detail": exc.detail}) from None


Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_as_utc),
    PlainSerializer(_format_utc, when_used="json"),
]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
Number = Annotated[float, Field(allow_inf_nan=False)]


def canonical_json(value: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys; raises TypeError/ValueError for non-JSON values (NaN too)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class PatternEvent(BaseModel):
    """One pattern event, schema v1. Immutable; timestamps are UTC; build it with :func:`parse_event`.

    Validating with ``context={"catalog": PatternCatalog}`` canonicalises ``pattern`` through it.
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
        return name

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
                "data_too_large", "data encodes to {size} bytes; the limit is {limit}",
                {"size": len(encoded), "limit": MAX_DATA_BYTES},
            )
        # A private copy the caller cannot change under us: shallow is enough for flat objects (the
        # common case: levels, indicators), nested ones are rebuilt from the encoding.
        if any(isinstance(v, dict | list) for v in value.values()):
            return json.loads(encoded)
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


# -- parsing ----------------------------------------------------------------------------------------

_FIELD_REASONS = {
    "type": "unknown_type", "timeframe": "unknown_timeframe", "symbol": "invalid_symbol",
    "detected_at": "invalid_timestamp", "expires_at": "invalid_timestamp",
}
_RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal", "finite_number"})


def _reason(error: Mapping[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind in REASONS:
        return kind
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
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _reject_constant(name: str) -> Any:
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
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any], *, catalog: PatternCatalog,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES, window: EventWindow | None = None,
) -> PatternEvent:
    """Validate one v1 event or legacy envelope and return it as a v1 :class:`PatternEvent`.

    ``raw`` is UTF-8 JSON (bytes or str) or an already-decoded mapping. Its size is checked against
    ``max_bytes`` before it is parsed (a mapping is measured by its compact JSON encoding). An object
    with an ``event_type`` key is a legacy envelope, anything else is v1. The pattern name is mapped
    through ``catalog``. Pure: no I/O. Raises :class:`EventError` for every invalid input, with the
    most specific reason of the errors found; :class:`ValueError` if ``max_bytes`` is not positive.
    With ``window``, an event otherwise valid is also checked by :func:`check_window`.
    """
    # hub.legacy builds on this module's names, so it is imported here rather than at the top.
    from hub import legacy

    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    obj = _decode(raw, max_bytes)
    if legacy.is_legacy(obj):
        obj = legacy.to_v1(obj)
    try:
        event = PatternEvent.model_validate(obj, context={"catalog": catalog})
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    if window is not None:
        check_window(event, window)
    return event


# -- time window (issue #11) ------------------------------------------------------------------------

DEFAULT_EVENT_MAX_AGE_DAYS = 7305  # 20 years back
DEFAULT_EVENT_MAX_AHEAD_S = 86_400  # 1 day ahead
DEFAULT_EVENT_MAX_EXPIRY_DAYS = 400  # expires_at at most this far after now


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class EventWindow:
    """The time an event may claim: ``detected_at`` within [now - max_age_days, now + max_ahead_s],
    ``expires_at`` within [now - max_age_days, now + max_expiry_days]. ``clock`` gives "now" (tests
    pass a fixed one), so parsing stays free of hidden inputs. The bounds keep every stored event in
    a bounded set of monthly partitions."""

    max_age_days: float = DEFAULT_EVENT_MAX_AGE_DAYS
    max_ahead_s: float = DEFAULT_EVENT_MAX_AHEAD_S
    max_expiry_days: float = DEFAULT_EVENT_MAX_EXPIRY_DAYS
    clock: Callable[[], datetime] = field(default=_utc_now, compare=False)


def check_window(event: PatternEvent, window: EventWindow, *, now: datetime | None = None) -> None:
    """Raise ``detected_at_out_of_range`` / ``expires_at_out_of_range`` when ``event`` claims a time
    outside ``window`` (``now`` defaults to ``window.clock()``)."""
    now = window.clock() if now is None else now
    earliest = now - timedelta(days=window.max_age_days)
    if not earliest <= event.detected_at <= now + timedelta(seconds=window.max_ahead_s):
        raise EventError(
            "detected_at_out_of_range",
            f"detected_at {_format_utc(event.detected_at)} is outside [{_format_utc(earliest)}, "
            f"now + {window.max_ahead_s:g} s]",
            fields=[{"loc": "detected_at", "msg": "outside the accepted time window"}],
        )
    if event.expires_at is not None and not (
            earliest <= event.expires_at <= now + timedelta(days=window.max_expiry_days)):
        raise EventError(
            "expires_at_out_of_range",
            f"expires_at {_format_utc(event.expires_at)} is outside [{_format_utc(earliest)}, "
            f"now + {window.max_expiry_days:g} days]",
            fields=[{"loc": "expires_at", "msg": "outside the accepted time window"}],
        )


def load_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of v1, read from the package data; a fresh dict per call."""
    text = resources.files("hub").joinpath("schema", "pattern-event-v1.json").read_text(encoding="utf-8")
    return json.loads(text)
