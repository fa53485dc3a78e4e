"""Pattern events through the public API: v1, subjects and the shipped JSON Schema (upstream shapes:
``test_upstream.py``)."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hub.catalog import PatternCatalog
from hub.model import (
    EVENT_TYPES,
    MAX_DATA_BYTES,
    REASONS,
    TIMEFRAMES,
    EventError,
    PatternEvent,
    canonical_json,
    canonical_symbol,
    load_json_schema,
)
from hub.parsing import DEFAULT_MAX_EVENT_BYTES, parse_event
from hub.subjects import (
    CLEAN_PREFIX,
    INGEST_PREFIX,
    check_subject,
    clean_subject,
    ingest_subject,
    parse_subject,
    symbol_to_token,
    token_to_symbol,
)
from hub.window import EventWindow

CATALOG = PatternCatalog(
    [
        ("bullish_engulfing", ["CDLENGULFING", "Engulfing Bull"]),
        ("bull_flag", ["Bull Flag Pattern"]),
        ("doji", []),
    ]
)
PERMISSIVE = PatternCatalog.permissive()
SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-/^=$"
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-~^=$"
NO_DB = hsettings(database=None, deadline=None)
symbols = st.text(alphabet=SYMBOL_CHARS, min_size=1, max_size=15)
DROP = object()  # a value for good()/legacy() meaning "leave this key out"


def good(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "tsx-0001",
        "type": "pattern_detected",
        "symbol": "BRK.B",
        "pattern": "bullish_engulfing",
        "timeframe": "daily",
        "confidence": 0.82,
        "detected_at": "2024-05-01T14:30:00Z",
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not DROP}


def legacy(**data_changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"symbol": "AAPL", "pattern": "Bull_Flag", "confidence": 0.85, "source": "daily"}
    data.update(data_changes)
    return {
        "event_type": "pattern_detected",
        "source": "TickStockPL",
        "timestamp": 1714574400,
        "data": {k: v for k, v in data.items() if v is not DROP},
    }


def rejected(raw: Any, reason: str, *, catalog: PatternCatalog = CATALOG, **kw: Any) -> EventError:
    with pytest.raises(EventError) as caught:
        parse_event(raw, catalog=catalog, **kw)
    assert caught.value.reason == reason, caught.value
    return caught.value


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- v1 round trips ---------------------------------------------------------------------------------


def test_v1_event_parses_and_normalises() -> None:
    event = parse_event(
        dumps(
            good(
                symbol="brk.b",
                pattern="Engulfing Bull",
                detected_at="2024-05-01T16:30:00.25+02:00",
                expires_at="2024-05-02T00:00:00Z",
                price=412.5,
                volume=1200,
                levels={"stop": 400},
                indicators={"rsi": 61.2},
                source="tickstock-pl",
                data={"note": "é"},
            )
        ),
        catalog=CATALOG,
    )
    assert event.symbol == "BRK.B"
    assert event.pattern == "bullish_engulfing"
    assert event.detected_at == datetime(2024, 5, 1, 14, 30, 0, 250000, tzinfo=UTC)
    assert event.detected_at.tzinfo is UTC
    assert event.schema_version == 1
    assert event.levels == {"stop": 400.0}
    assert (
        event.to_json_bytes()
        == (
            '{"confidence":0.82,"data":{"note":"é"},"detected_at":"2024-05-01T14:30:00.250000Z",'
            '"expires_at":"2024-05-02T00:00:00Z","id":"tsx-0001","indicators":{"rsi":61.2},"levels":{"stop":400.0},'
            '"pattern":"bullish_engulfing","price":412.5,"schema_version":1,"source":"tickstock-pl",'
            '"symbol":"BRK.B","timeframe":"daily","type":"pattern_detected","volume":1200.0}'
        ).encode()
    )


def test_defaults_are_explicit_in_the_encoding() -> None:
    encoded = json.loads(parse_event(dumps(good()), catalog=CATALOG).to_json_bytes())
    assert encoded["schema_version"] == 1
    assert encoded["source"] == "unknown"
    assert (encoded["expires_at"], encoded["price"], encoded["volume"]) == (None, None, None)
    assert (encoded["levels"], encoded["indicators"], encoded["data"]) == ({}, {}, {})


def test_encoding_round_trips_and_is_cached() -> None:
    event = parse_event(dumps(good(schema_version=1, price=0, levels={"a": -1.5})), catalog=CATALOG)
    encoded = event.to_json_bytes()
    assert event.to_json_bytes() is encoded
    again = parse_event(encoded, catalog=CATALOG)
    assert again == event
    assert again.to_json_bytes() == encoded
    changed = event.model_copy(update={"confidence": 0.5})
    assert json.loads(changed.to_json_bytes())["confidence"] == 0.5
    assert event.to_json_bytes() is encoded


def test_bytes_str_and_mapping_inputs_agree() -> None:
    raw = good(detected_at="2024-05-01t14:30:00z")
    from_bytes = parse_event(dumps(raw), catalog=CATALOG)
    assert parse_event(json.dumps(raw), catalog=CATALOG) == from_bytes
    assert parse_event(bytearray(dumps(raw)), catalog=CATALOG) == from_bytes
    assert parse_event(memoryview(dumps(raw)), catalog=CATALOG) == from_bytes
    assert parse_event(raw, catalog=CATALOG) == from_bytes
    aware = good(detected_at=datetime(2024, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5))))
    assert parse_event(aware, catalog=CATALOG) == from_bytes


def test_model_is_frozen_and_direct_construction_skips_the_catalog() -> None:
    event = PatternEvent(**good(pattern="Whatever Name"))
    assert event.pattern == "Whatever Name"
    with pytest.raises(ValueError, match="frozen"):
        event.symbol = "MSFT"  # type: ignore[misc]


def test_data_is_copied_as_plain_json() -> None:
    data = {"nested": {"list": [1, 2.5, None, True, "x"]}}
    event = parse_event(good(data=data), catalog=CATALOG)
    assert event.data == data
    assert event.data is not data and event.data["nested"] is not data["nested"]


def test_data_bound_is_inclusive() -> None:
    padding = MAX_DATA_BYTES - len(canonical_json({"x": ""}))
    assert parse_event(good(data={"x": "a" * padding}), catalog=CATALOG).data["x"] == "a" * padding
    error = rejected(good(data={"x": "a" * (padding + 1)}), "data_too_large")
    msg = f"data encodes to {MAX_DATA_BYTES + 1} bytes; the limit is {MAX_DATA_BYTES}"
    assert error.fields == [{"loc": "data", "msg": msg}]


def test_byte_bound_is_checked_before_parsing() -> None:
    raw = dumps(good())
    assert parse_event(raw, catalog=CATALOG, max_bytes=len(raw)).id == "tsx-0001"
    rejected(raw, "too_large", max_bytes=len(raw) - 1)
    rejected(b"{" * (DEFAULT_MAX_EVENT_BYTES + 1), "too_large")  # never reaches the JSON parser
    rejected("é" * 40, "too_large", max_bytes=79)  # a str is measured in UTF-8 bytes
    rejected(good(data={"x": "a" * 100}), "too_large", max_bytes=100)  # a mapping by its JSON encoding
    with pytest.raises(ValueError, match="max_bytes"):
        parse_event(raw, catalog=CATALOG, max_bytes=0)


# -- rejections -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"",
        b"\xff\xfe{}",
        "\ud800".encode("utf-8", "surrogatepass"),
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"id": "a", "id": "b"}',
        b"[" * 50_000,
    ],
)
def test_not_json(raw: bytes) -> None:
    rejected(raw, "not_json")


def test_text_and_mappings_that_are_not_json() -> None:
    rejected('{"id": "\ud800"}', "not_json")
    looped: dict[str, Any] = {}
    looped["self"] = looped
    rejected(looped, "not_json")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"event"', b"null", 42, ["a"]])
def test_not_object(raw: Any) -> None:
    rejected(raw, "not_object")


REQUIRED = ["id", "type", "symbol", "pattern", "timeframe", "confidence", "detected_at"]


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field(field: str) -> None:
    error = rejected(dumps(good(**{field: DROP})), "missing_field")
    assert error.fields == [{"loc": field, "msg": "Field required"}]


def test_unknown_field_is_named() -> None:
    error = rejected(dumps(good(confidance=0.5)), "unknown_field")
    assert error.fields == [{"loc": "confidance", "msg": "Extra inputs are not permitted"}]
    assert "confidance" in error.detail


@pytest.mark.parametrize(
    "changes",
    [
        {"id": ""},
        {"id": "has space"},
        {"id": "x" * 129},
        {"id": "naïve"},
        {"id": 7},
        {"pattern": ""},
        {"pattern": "p" * 65},
        {"pattern": 3},
        {"source": ""},
        {"source": "s" * 65},
        {"source": None},
        {"price": -0.01},
        {"price": "1"},
        {"volume": -1},
        {"volume": True},
        {"confidence": "0.5"},
        {"confidence": True},
        {"confidence": None},
        {"levels": {f"l{i}": 1 for i in range(33)}},
        {"levels": {"stop": "1"}},
        {"levels": {"": 1}},
        {"levels": {"x" * 65: 1}},
        {"levels": []},
        {"indicators": {f"i{i}": 1 for i in range(65)}},
        {"indicators": {"rsi": None}},
        {"data": []},
        {"data": "x"},
        {"schema_version": 2},
        {"schema_version": True},
        {"schema_version": "1"},
    ],
)
def test_invalid_field(changes: dict[str, Any]) -> None:
    error = rejected(dumps(good(**changes)), "invalid_field")
    assert error.fields and error.fields[0]["loc"].split(".")[0] in changes


@pytest.mark.parametrize(
    "changes",
    [
        {"levels": {"stop": math.inf}},
        {"indicators": {"rsi": math.nan}},
        {"data": {"x": math.nan}},
        {"data": {"x": {1, 2}}},
        {"source": "\ud800"},
        {"levels": {"\udfff": 1}},
    ],
)
def test_invalid_field_values_only_python_callers_can_send(changes: dict[str, Any]) -> None:
    rejected(good(**changes), "invalid_field")


@pytest.mark.parametrize("field", ["source", "data"])
def test_lone_surrogate_escapes_are_rejected(field: str) -> None:
    value = b'"\\ud800"' if field == "source" else b'{"x": "\\udfff"}'
    error = rejected(b'{"%s": %s, ' % (field.encode(), value) + dumps(good())[1:], "invalid_field")
    assert [f["loc"] for f in error.fields] == [field]


@pytest.mark.parametrize("confidence", [b"-0.01", b"1.0000001", b"85", b"100", b"1e400", b"-1e400"])
def test_confidence_out_of_range(confidence: bytes) -> None:
    rejected(dumps(good()).replace(b"0.82", confidence), "confidence_out_of_range")


def test_confidence_bounds_are_inclusive_and_nan_is_out_of_range() -> None:
    for confidence in (0, 1, 0.0, 1.0):
        assert parse_event(good(confidence=confidence), catalog=CATALOG).confidence == confidence
    rejected(good(confidence=math.nan), "confidence_out_of_range")
    rejected(good(confidence=-math.inf), "confidence_out_of_range")


@pytest.mark.parametrize("timeframe", ["1d", "Daily", "4h", "", 5, None])
def test_unknown_timeframe(timeframe: Any) -> None:
    rejected(dumps(good(timeframe=timeframe)), "unknown_timeframe")


@pytest.mark.parametrize("kind", ["pattern_alert", "PATTERN_DETECTED", "", None, 1])
def test_unknown_type(kind: Any) -> None:
    rejected(dumps(good(type=kind)), "unknown_type")


def test_unknown_pattern() -> None:
    error = rejected(dumps(good(pattern="Three Black Crows")), "unknown_pattern")
    assert "Three Black Crows" in error.detail
    rejected(dumps(good(pattern="-- --")), "unknown_pattern", catalog=PERMISSIVE)
    rejected(dumps(good(pattern="doji")), "unknown_pattern", catalog=PatternCatalog([]))


@pytest.mark.parametrize(
    "symbol",
    [
        "",
        "BRK B",
        " AAPL",
        "AAPL\n",
        "ABCDEFGHIJKLMNOP",
        "AAPL*",
        "AA>",
        "BRK_B",
        "BRK~B",
        "\u00c4PL",
        "\u00df",
        123,
        None,
    ],
)
def test_invalid_symbol(symbol: Any) -> None:
    rejected(dumps(good(symbol=symbol)), "invalid_symbol")


@pytest.mark.parametrize(
    "changes",
    [
        {"detected_at": "2024-05-01T14:30:00"},  # naive
        {"detected_at": "2024-05-01 14:30:00Z"},
        {"detected_at": "2024-05-01T14:30Z"},
        {"detected_at": "2024-05-01T14:30:00+0200"},
        {"detected_at": "2024-05-01"},
        {"detected_at": "2024-13-01T00:00:00Z"},
        {"detected_at": "2024-02-30T00:00:00Z"},
        {"detected_at": "\uff12\uff10\uff12\uff14-05-01T14:30:00Z"},  # full-width digits
        {"detected_at": 1714573800},
        {"detected_at": None},
        {"detected_at": "0001-01-01T00:00:00+01:00"},  # before year 1 once in UTC
        {"detected_at": "9999-12-31T23:59:59-01:00"},
        {"expires_at": "2024-05-01T14:30:00Z"},  # not after detected_at
        {"expires_at": "2024-05-01T16:29:59+02:00"},
        {"expires_at": "tomorrow"},
    ],
)
def test_invalid_timestamp(changes: dict[str, Any]) -> None:
    rejected(dumps(good(**changes)), "invalid_timestamp")


def test_naive_datetime_objects_are_rejected() -> None:
    rejected(good(detected_at=datetime(2024, 5, 1, 14, 30)), "invalid_timestamp")


def test_expires_at_may_be_null_and_is_checked_only_against_a_valid_detected_at() -> None:
    assert parse_event(good(expires_at=None), catalog=CATALOG).expires_at is None
    error = rejected(good(detected_at="bad", expires_at="2000-01-01T00:00:00Z"), "invalid_timestamp")
    assert [f["loc"] for f in error.fields] == ["detected_at"]


def test_most_specific_reason_wins_and_every_field_is_listed() -> None:
    error = rejected(good(id="", timeframe="1d", price=-1), "unknown_timeframe")
    assert [f["loc"] for f in error.fields] == ["id", "timeframe", "price"]
    assert error.detail.startswith("timeframe: ") and error.detail.endswith("(and 2 more)")
    error = rejected(good(id="", price=-1), "invalid_field")
    assert error.detail.startswith("id: ")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (good(symbol="X" * 5000), "invalid_symbol"),
        (good(pattern="Y" * 60), "unknown_pattern"),
        ({**legacy(), "timestamp": "Z" * 5000}, "invalid_timestamp"),
        ({**legacy(), "event_type": "E" * 5000}, "unknown_type"),
    ],
)
def test_error_details_do_not_echo_large_inputs(raw: dict[str, Any], reason: str) -> None:
    assert len(rejected(raw, reason).detail) < 200


def test_subject_errors_do_not_echo_large_subjects() -> None:
    with pytest.raises(EventError) as caught:
        parse_subject("tickstock.ingest.daily." + "A" * 5000)
    assert len(caught.value.detail) < 200


def test_error_fields_are_bounded() -> None:
    error = rejected(good(**{f"extra{i}": i for i in range(30)}), "unknown_field")
    assert len(error.fields) == 20
    assert error.detail.endswith("(and 29 more)")
    error = rejected({**legacy(), **{f"extra{i}": i for i in range(30)}}, "unknown_field")
    assert len(error.fields) == 20


def test_event_error_contract() -> None:
    error = EventError("subject_mismatch")
    assert isinstance(error, ValueError)
    assert (error.reason, error.detail, error.fields) == ("subject_mismatch", "subject mismatch", [])
    assert str(error) == "subject_mismatch: subject mismatch"
    error = EventError("invalid_field", "price: too low", fields=[{"loc": "price", "msg": "too low"}])
    assert error.as_dict() == {
        "reason": "invalid_field",
        "detail": "price: too low",
        "fields": [{"loc": "price", "msg": "too low"}],
    }
    with pytest.raises(ValueError, match="unknown EventError reason"):
        EventError("bad_reason")


def test_event_error_survives_pickling() -> None:
    error = rejected(good(price=-1), "invalid_field")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail, copy.fields) == (error.reason, error.detail, error.fields)
    assert str(copy) == str(error)


def test_reasons_are_snake_case() -> None:
    assert all(reason.isidentifier() and reason == reason.lower() for reason in REASONS)
    assert len(REASONS) == 18  # issue #11 added the two time-window reasons and id_conflict


# -- pattern catalog --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "bullish_engulfing",
        "Bullish Engulfing",
        "BullishEngulfing",
        "BULLISH-ENGULFING",
        " bullish  engulfing ",
        "CDLENGULFING",
        "cdl_engulfing",
        "engulfing-bull",
    ],
)
def test_catalog_matches_loosely(name: str) -> None:
    assert CATALOG.canonical(name) == "bullish_engulfing"
    assert parse_event(good(pattern=name), catalog=CATALOG).pattern == "bullish_engulfing"


def test_catalog_rejects_unknown_names() -> None:
    with pytest.raises(EventError) as caught:
        CATALOG.canonical("bullish engulfing x")
    assert caught.value.reason == "unknown_pattern"
    with pytest.raises(EventError):
        CATALOG.canonical("_-_")


def test_catalog_construction_errors() -> None:
    PatternCatalog([("doji", ["Doji"]), ("doji", ["DOJI_STAR"])])  # repeats merge
    with pytest.raises(ValueError, match="names both"):
        PatternCatalog([("doji", []), ("hammer", ["DOJI"])])
    with pytest.raises(ValueError, match="blank"):
        PatternCatalog([("doji", ["  "])])
    with pytest.raises(TypeError, match="not a string"):
        PatternCatalog([("doji", "CDLDOJI")])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Bullish Engulfing", "bullish_engulfing"),
        ("BullishEngulfing", "bullish_engulfing"),
        ("Bull_Flag", "bull_flag"),
        ("bull-flag", "bull_flag"),
        ("CDLENGULFING", "cdlengulfing"),
        ("HTTPServer", "http_server"),
        ("RSI14Divergence", "rsi14_divergence"),
        ("Head & Shoulders", "head_shoulders"),
        ("__doji__", "doji"),
    ],
)
def test_permissive_catalog_snake_cases(name: str, expected: str) -> None:
    assert PERMISSIVE.canonical(name) == expected


@NO_DB
@given(st.text(max_size=40))
def test_permissive_names_are_stable(name: str) -> None:
    try:
        once = PERMISSIVE.canonical(name)
    except EventError:
        return
    assert PERMISSIVE.canonical(once) == once


def test_permissive_name_that_grows_past_the_limit_is_rejected() -> None:
    error = rejected(good(pattern="Ab" * 32), "invalid_field", catalog=PERMISSIVE)
    assert error.fields[0]["loc"] == "pattern"


# -- subjects ---------------------------------------------------------------------------------------


def test_brk_b_subjects() -> None:
    assert symbol_to_token("BRK.B") == "BRK_B"
    assert symbol_to_token("brk.b") == "BRK_B"
    assert token_to_symbol("BRK_B") == "BRK.B"
    assert symbol_to_token("BRK/B") == "BRK~B"
    assert ingest_subject("daily", "BRK.B") == "tickstock.ingest.daily.BRK_B"
    assert clean_subject("1min", "brk.b") == "tickstock.patterns.1min.BRK_B"
    assert parse_subject("tickstock.ingest.daily.BRK_B") == ("ingest", "daily", "BRK.B")
    parts = parse_subject("tickstock.patterns.hourly.ES=F")
    assert (parts.kind, parts.timeframe, parts.symbol) == ("clean", "hourly", "ES=F")
    assert (INGEST_PREFIX, CLEAN_PREFIX) == ("tickstock.ingest", "tickstock.patterns")


@NO_DB
@given(symbols, st.sampled_from(TIMEFRAMES))
def test_symbol_tokens_are_a_bijection(symbol: str, timeframe: str) -> None:
    token = symbol_to_token(symbol)
    assert not set(token) & set(".*> \t\r\n")
    assert set(token) <= set(TOKEN_CHARS) and len(token) == len(symbol)
    assert token_to_symbol(token) == symbol == canonical_symbol(symbol.lower())
    assert symbol_to_token(symbol.lower()) == token
    assert parse_subject(ingest_subject(timeframe, symbol)) == ("ingest", timeframe, symbol)
    assert parse_subject(clean_subject(timeframe, symbol)) == ("clean", timeframe, symbol)


@NO_DB
@given(st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=15))
def test_every_token_is_some_symbols_token(token: str) -> None:
    assert symbol_to_token(token_to_symbol(token)) == token


@NO_DB
@given(symbols, symbols)
def test_distinct_symbols_have_distinct_tokens(a: str, b: str) -> None:
    assert (symbol_to_token(a) == symbol_to_token(b)) == (a == b)


@pytest.mark.parametrize("token", ["", "brk_b", "BRK.B", "BRK/B", "A*", "A>", "A B", "X" * 16, None])
def test_invalid_tokens(token: Any) -> None:
    with pytest.raises(EventError) as caught:
        token_to_symbol(token)
    assert caught.value.reason == "invalid_symbol"


def test_subject_builders_validate() -> None:
    with pytest.raises(EventError) as caught:
        ingest_subject("1d", "AAPL")
    assert caught.value.reason == "unknown_timeframe"
    with pytest.raises(EventError) as caught:
        clean_subject("daily", "BRK B")
    assert caught.value.reason == "invalid_symbol"
    with pytest.raises(EventError):
        symbol_to_token("\u017f")  # long s upper-cases to an ASCII "S"; non-ASCII input is refused first


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "tickstock.ingest.daily",
        "tickstock.ingest.daily.BRK.B",
        "tickstock.other.daily.AAPL",
        "tickstock.ingest.1d.AAPL",
        "tickstock.ingest.daily.aapl",
        "tickstock.ingest.daily.*",
        "tickstock.ingest.daily.>",
        "tickstock.ingest.>",
        "nats.ingest.daily.AAPL",
        "tickstock.ingest.daily.",
        None,
    ],
)
def test_invalid_subjects(subject: Any) -> None:
    with pytest.raises(EventError) as caught:
        parse_subject(subject)
    assert caught.value.reason == "invalid_subject"


def test_check_subject() -> None:
    event = parse_event(good(), catalog=CATALOG)
    check_subject(event, "tickstock.ingest.daily.BRK_B")
    check_subject(event, "tickstock.patterns.daily.BRK_B")
    for subject in ("tickstock.ingest.daily.BRK~B", "tickstock.ingest.hourly.BRK_B"):
        with pytest.raises(EventError) as caught:
            check_subject(event, subject)
        assert caught.value.reason == "subject_mismatch"
    with pytest.raises(EventError) as caught:
        check_subject(event, "tickstock.ingest.daily")
    assert caught.value.reason == "invalid_subject"


# -- the shipped JSON Schema ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# Everything here is decided the same way by the schema and by parse_event. Checks the schema cannot
# express (data size, calendar dates, the catalog, lone surrogates) are listed in its description.
SCHEMA_SAMPLES: list[tuple[dict[str, Any], bool]] = [
    (good(), True),
    (good(symbol="brk.b", schema_version=1, source="pl", expires_at="2024-05-02T00:00:00+02:00"), True),
    (good(price=None, volume=None, expires_at=None, levels={}, indicators={}, data={}), True),
    (good(price=0, volume=10.5, confidence=1, levels={"support": -1, "target": 2e9}, data={"a": [{}]}), True),
    (good(id="!" * 128, pattern="p" * 64, symbol="^GSPC", detected_at="2024-05-01t14:30:00.1234567z"), True),
    (good(id=""), False),
    (good(id="a b"), False),
    (good(id="x" * 129), False),
    (good(id=1), False),
    (good(type="pattern_alert"), False),
    (good(symbol=""), False),
    (good(symbol="A" * 16), False),
    (good(symbol="BRK_B"), False),
    (good(pattern=""), False),
    (good(pattern="p" * 65), False),
    (good(timeframe="1d"), False),
    (good(confidence=1.01), False),
    (good(confidence=-0.5), False),
    (good(confidence="1"), False),
    (good(confidence=True), False),
    (good(detected_at="2024-05-01T14:30:00"), False),
    (good(detected_at="2024-05-01"), False),
    (good(detected_at=0), False),
    (good(expires_at=5), False),
    (good(price=-1), False),
    (good(volume="1"), False),
    (good(levels={"a": "1"}), False),
    (good(levels={f"k{i}": 1 for i in range(33)}), False),
    (good(indicators={f"k{i}": 1 for i in range(65)}), False),
    (good(indicators={"": 1}), False),
    (good(source=""), False),
    (good(source="s" * 65), False),
    (good(data=[]), False),
    (good(schema_version=2), False),
    (good(schema_version=True), False),
    (good(extra=1), False),
    (good(id=DROP), False),
    (good(detected_at=DROP), False),
]


@pytest.mark.parametrize(("sample", "valid"), SCHEMA_SAMPLES)
def test_json_schema_agrees_with_the_parser(validator: Any, sample: dict[str, Any], valid: bool) -> None:
    schema_ok = validator.is_valid(sample)
    try:
        parse_event(dumps(sample), catalog=PERMISSIVE)
        parser_ok = True
    except EventError:
        parser_ok = False
    assert (schema_ok, parser_ok) == (valid, valid)


def test_json_schema_matches_the_model() -> None:
    schema = load_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == set(PatternEvent.model_fields)
    assert schema["required"] == REQUIRED
    assert set(REQUIRED) == {name for name, f in PatternEvent.model_fields.items() if f.is_required()}
    assert schema["properties"]["timeframe"]["enum"] == list(TIMEFRAMES)
    assert schema["properties"]["type"]["enum"] == list(EVENT_TYPES)
    assert load_json_schema() is not schema


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
finite = st.floats(allow_nan=False, allow_infinity=False)
names = st.text(min_size=1, max_size=64)
events = st.fixed_dictionaries(
    {
        "id": st.text(alphabet=[chr(c) for c in range(33, 127)], min_size=1, max_size=128),
        "type": st.sampled_from(EVENT_TYPES),
        "symbol": st.text(alphabet=SYMBOL_CHARS + "abcxyz", min_size=1, max_size=15),
        "pattern": st.sampled_from(["doji", "Bull Flag Pattern", "CDLENGULFING"]),
        "timeframe": st.sampled_from(TIMEFRAMES),
        "confidence": st.floats(min_value=0, max_value=1),
        "detected_at": st.datetimes(
            min_value=datetime(1900, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=st.sampled_from(ZONES),
        ).map(lambda d: d.isoformat()),
    },
    optional={
        "price": st.none() | st.floats(min_value=0, allow_infinity=False),
        "volume": st.none() | st.integers(min_value=0, max_value=10**12),
        "levels": st.dictionaries(names, finite, max_size=4),
        "indicators": st.dictionaries(names, finite, max_size=4),
        "source": names,
        "data": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    },
)


@NO_DB
@given(events)
def test_valid_events_round_trip(raw: dict[str, Any]) -> None:
    event = parse_event(json.dumps(raw), catalog=CATALOG)
    encoded = event.to_json_bytes()
    assert parse_event(encoded, catalog=CATALOG) == event
    assert parse_event(encoded, catalog=CATALOG).to_json_bytes() == encoded


@NO_DB
@given(events)
def test_valid_events_and_their_encodings_satisfy_the_schema(validator: Any, raw: dict[str, Any]) -> None:
    assert validator.is_valid(raw)
    assert validator.is_valid(json.loads(parse_event(raw, catalog=CATALOG).to_json_bytes()))


# -- one example of every reason --------------------------------------------------------------------

ONE_OF_EACH: dict[str, Callable[[], object]] = {
    "not_json": lambda: parse_event(b"{", catalog=CATALOG),
    "not_object": lambda: parse_event(b"[]", catalog=CATALOG),
    "too_large": lambda: parse_event(dumps(good()), catalog=CATALOG, max_bytes=10),
    "missing_field": lambda: parse_event(good(id=DROP), catalog=CATALOG),
    "invalid_field": lambda: parse_event(good(price=-1), catalog=CATALOG),
    "unknown_field": lambda: parse_event(good(colour="red"), catalog=CATALOG),
    "confidence_out_of_range": lambda: parse_event(legacy(confidence=85), catalog=CATALOG),
    "unknown_timeframe": lambda: parse_event(good(timeframe="1d"), catalog=CATALOG),
    "unknown_type": lambda: parse_event(good(type="pattern_alert"), catalog=CATALOG),
    "unknown_pattern": lambda: parse_event(good(pattern="three black crows"), catalog=CATALOG),
    "invalid_symbol": lambda: parse_event(good(symbol="BRK B"), catalog=CATALOG),
    "invalid_timestamp": lambda: parse_event(good(detected_at="2024-05-01T14:30:00"), catalog=CATALOG),
    "data_too_large": lambda: parse_event(good(data={"x": "a" * MAX_DATA_BYTES}), catalog=CATALOG),
    "subject_mismatch": lambda: check_subject(PatternEvent(**good()), "tickstock.ingest.daily.AAPL"),
    "invalid_subject": lambda: parse_subject("tickstock.ingest.daily.BRK.B"),
    "detected_at_out_of_range": lambda: parse_event(
        good(detected_at="0001-01-01T00:00:00Z"), catalog=CATALOG, window=EventWindow()
    ),
    "expires_at_out_of_range": lambda: parse_event(
        good(expires_at="9999-12-01T00:00:00Z"), catalog=CATALOG, window=EventWindow()
    ),
    # raised by the writer when an id is stored with another payload; here only its construction
    "id_conflict": lambda: (_ for _ in ()).throw(EventError("id_conflict", "stored with another payload")),
}


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_every_reason_can_be_produced(reason: str) -> None:
    with pytest.raises(EventError) as caught:
        ONE_OF_EACH[reason]()
    assert caught.value.reason == reason


# -- the time window (issue #11) -------------------------------------------------------------------

_NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
_FIXED = EventWindow(max_age_days=10, max_ahead_s=60, max_expiry_days=5, clock=lambda: _NOW)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"detected_at": "0001-01-01T00:00:00Z"}, "detected_at_out_of_range"),
        ({"detected_at": "9999-12-31T23:59:59Z"}, "detected_at_out_of_range"),
        ({"detected_at": "2026-11-24T11:59:59Z"}, "detected_at_out_of_range"),  # one second too old
        ({"detected_at": "2026-12-04T12:01:01Z"}, "detected_at_out_of_range"),  # one second too far ahead
        (
            {"detected_at": "2026-12-01T00:00:00Z", "expires_at": "2026-12-09T12:00:01Z"},
            "expires_at_out_of_range",
        ),
        (
            {"detected_at": "2026-12-01T00:00:00Z", "expires_at": "9999-01-01T00:00:00+14:00"},
            "expires_at_out_of_range",
        ),
    ],
)
def test_the_window_rejects_times_outside_it(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(good(**fields), catalog=CATALOG, window=_FIXED)
    assert caught.value.reason == reason and caught.value.fields[0]["loc"] in ("detected_at", "expires_at")


def test_the_window_bounds_are_inclusive_and_without_a_window_nothing_is_checked() -> None:
    for detected in ("2026-11-24T12:00:00Z", "2026-12-04T12:01:00Z"):
        assert parse_event(good(detected_at=detected), catalog=CATALOG, window=_FIXED).detected_at
    edge = good(detected_at="2026-12-01T00:00:00Z", expires_at="2026-12-09T12:00:00Z")
    assert parse_event(edge, catalog=CATALOG, window=_FIXED).expires_at == datetime(
        2026, 12, 9, 12, tzinfo=UTC
    )
    assert parse_event(good(detected_at="0001-01-01T00:00:00Z"), catalog=CATALOG).detected_at.year == 1
