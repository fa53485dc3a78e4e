"""TickStock's upstream shapes into schema v1 (hub/upstream.py, hub/tiers.py): pure, no servers."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.catalog import PatternCatalog, match_key
from hub.model import EventError, PatternEvent
from hub.parsing import parse_event
from hub.tiers import DEFAULT_TIMEFRAMES, TimeframeTable, parse_table
from hub.upstream import (
    MAX_BATCH,
    TIMEFRAME_FROM,
    UPSTREAM_PATTERN,
    UpstreamRules,
    batch_items,
    derived_id,
    shape,
    to_v1,
)
from ops.upstream_messages import CORPUS, HOSTILE, epoch, z
from store.reference_files import read_reference_files

T = 1764599400.0  # 2025-12-01T14:30:00Z


def _catalog() -> PatternCatalog:
    from importlib import resources

    data = read_reference_files(resources.files("store") / "reference_data")
    return PatternCatalog((row[0], row[1]) for row in data.patterns)


CATALOG = _catalog()


def envelope(**data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": "AAPL", "pattern": "Bull_Flag", "confidence": 0.85, "timestamp": T}
    body.update(data)
    return {
        "event_type": "pattern_detected",
        "source": "TickStockPL",
        "timestamp": T + 60,
        "data": {k: v for k, v in body.items() if v is not None},
    }


def parse(raw: Any, **kw: Any) -> PatternEvent:
    return parse_event(raw, catalog=CATALOG, **kw)


def rejected(raw: Any, reason: str, **kw: Any) -> EventError:
    with pytest.raises(EventError) as caught:
        parse(raw, **kw)
    assert caught.value.reason == reason, caught.value
    return caught.value


# -- the corpus, pure -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CORPUS if c.layout != "batch"], ids=lambda c: c.layout)
def test_every_corpus_message_maps_as_expected(case: Any) -> None:
    if case.reason:
        rejected(case.message, case.reason)
        return
    event = parse(case.message)
    [row] = case.rows
    got = (event.type, event.symbol, event.pattern, event.timeframe, event.confidence, z(event.detected_at))
    assert got == (row.type, row.symbol, row.pattern, row.timeframe, row.confidence, row.detected_at)
    assert event.id.startswith("ts-") and len(event.id) == 35


@pytest.mark.parametrize("case", [c for c in CORPUS if c.layout == "batch"], ids=lambda c: c.layout)
def test_every_batch_splits_into_its_detections(case: Any) -> None:
    events = [parse(item) for item in batch_items(json.loads(case.message))]
    got = [(e.symbol, e.pattern, e.timeframe, e.confidence, z(e.detected_at)) for e in events]
    assert got == [(r.symbol, r.pattern, r.timeframe, r.confidence, r.detected_at) for r in case.rows]
    assert len(got) >= 2


@pytest.mark.parametrize(("channel", "raw", "reason"), HOSTILE[: len(HOSTILE) // 3])
def test_hostile_messages_have_a_reason(channel: str, raw: bytes, reason: str) -> None:
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and shape(obj) == "batch":
        with pytest.raises(EventError) as caught:
            batch_items(obj)
        assert caught.value.reason == reason
    rejected(raw, reason)


# -- layouts in detail ------------------------------------------------------------------------------


def test_envelope_fields_become_v1_fields() -> None:
    event = parse(
        envelope(
            ticker="aapl",
            symbol=None,
            current_price=185.5,
            price_change=1.2,
            expires_at=T + 3600,
            indicators={
                "relative_volume": 2.1,
                "support_level": 180,
                "resistance_level": 190,
                "macd": {"value": 0.4, "signal": 0.3},
                "trend": "up",
                "flag": True,
            },
            stop_loss=179,
            target_price=200,
            tier="hourly",
            flow_id="f-1",
            action="BUY",
        )
    )
    assert (event.symbol, event.pattern, event.timeframe, event.price) == (
        "AAPL",
        "bull_flag",
        "hourly",
        185.5,
    )
    assert event.detected_at == datetime.fromtimestamp(T, UTC)  # data.timestamp, not the publish time
    assert event.expires_at == datetime.fromtimestamp(T + 3600, UTC)
    assert event.indicators == {"relative_volume": 2.1, "macd_value": 0.4, "macd_signal": 0.3}
    assert event.levels == {"support": 180, "resistance": 190, "stop": 179, "target": 200}
    assert event.source == "TickStockPL"
    assert event.data == {
        "price_change": 1.2,
        "flow_id": "f-1",
        "action": "BUY",
        "indicators": {"trend": "up", "flag": True},
        "tier": "hourly",
        TIMEFRAME_FROM: "tier:hourly",
        UPSTREAM_PATTERN: "Bull_Flag",
    }


def test_detection_time_comes_from_data_else_the_envelope() -> None:
    no_data_time = envelope(timestamp=None, source="daily")
    assert parse(no_data_time).detected_at == datetime.fromtimestamp(T + 60, UTC)
    no_time = {k: v for k, v in no_data_time.items() if k != "timestamp"}
    error = rejected(no_time, "missing_field")
    assert error.fields == [{"loc": "timestamp", "msg": "required"}]
    flat = {"source": "x", "timestamp": T + 5, "detection_timestamp": T, "pattern": "doji", "symbol": "A"}
    event = parse({**flat, "confidence": 0.5, "tier": "daily"})
    assert event.detected_at == datetime.fromtimestamp(T, UTC) and event.data["timestamp"] == T + 5


@pytest.mark.parametrize(
    ("given", "zone", "expected"),
    [
        ("2025-12-01T14:30:00", UTC, datetime(2025, 12, 1, 14, 30, tzinfo=UTC)),
        (
            "2025-12-01T09:30:00.5",
            ZoneInfo("America/New_York"),
            datetime(2025, 12, 1, 14, 30, 0, 500000, tzinfo=UTC),
        ),
        ("2025-07-01T10:30:00", ZoneInfo("America/New_York"), datetime(2025, 7, 1, 14, 30, tzinfo=UTC)),
        (
            "2025-12-01T16:30:00+02:00",
            ZoneInfo("America/New_York"),
            datetime(2025, 12, 1, 14, 30, tzinfo=UTC),
        ),
        (T, ZoneInfo("Asia/Tokyo"), datetime(2025, 12, 1, 14, 30, tzinfo=UTC)),
    ],
)
def test_naive_timestamps_are_read_in_the_configured_zone(given: Any, zone: Any, expected: datetime) -> None:
    rules = UpstreamRules(naive_zone=zone)
    assert parse(envelope(timestamp=given, source="daily"), rules=rules).detected_at == expected


@pytest.mark.parametrize("bad", [T * 1000, "yesterday", "12/01/2025", True, None, math.inf, [T], -1e20])
def test_bad_timestamps_are_rejected(bad: Any) -> None:
    raw = envelope(source="daily")
    raw["data"]["timestamp"] = bad
    if bad is math.inf:
        rejected(json.dumps(raw).replace("Infinity", "1e999").encode(), "invalid_timestamp")
    else:
        rejected(raw, "invalid_timestamp")


def test_spellings_must_agree_and_shapes_are_checked() -> None:
    rejected(envelope(ticker="MSFT", source="daily"), "invalid_field")
    rejected(envelope(pattern_name="Doji", source="daily"), "invalid_field")
    rejected(envelope(price=1, current_price=2, source="daily"), "invalid_field")
    rejected({**envelope(source="daily"), "version": 2}, "unknown_field")
    rejected({**envelope(source="daily"), "data": [1]}, "invalid_field")
    rejected({**envelope(source="daily"), "source": 5}, "invalid_field")
    rejected({**envelope(source="daily"), "event_type": "E" * 5000}, "unknown_type")
    rejected(envelope(source="daily", indicators=[1]), "invalid_field")
    rejected(envelope(source="daily", levels="low"), "invalid_field")
    rejected(envelope(source="daily", pattern="nope"), "unknown_pattern")
    rejected(envelope(source="daily", confidence=85), "confidence_out_of_range")
    rejected({"type": "pattern_detected", "detection": {}, "colour": "red"}, "unknown_field")
    rejected({"type": "pattern_expired", "detection": {}}, "unknown_type")
    rejected({"type": "patterns_batch", "patterns": [{"detection": {}}]}, "invalid_field")


def test_input_is_not_modified_and_v1_round_trips() -> None:
    raw = envelope(ticker="AAPL", symbol=None, source="intraday", indicators={"rsi": 40})
    snapshot = json.loads(json.dumps(raw))
    v1 = to_v1(raw)
    assert raw == snapshot and v1["timeframe"] == "1min"
    event = parse(raw)
    assert parse_event(event.to_json_bytes(), catalog=CATALOG) == event


def test_streaming_and_flat_sources() -> None:
    detection = {
        "symbol": "X",
        "pattern_type": "Doji",
        "confidence": 0.5,
        "timeframe": "1min",
        "timestamp": "2025-12-01T14:30:00+00:00",
    }
    event = parse(
        {"type": "pattern_detected", "detection": {**detection, "bar_data": {"close": 9.5, "volume": 100}}}
    )
    assert (event.source, event.price, event.volume, event.timeframe) == (
        "tickstock-streaming",
        9.5,
        100,
        "1min",
    )
    assert TIMEFRAME_FROM not in event.data  # sent as a v1 name: nothing inferred
    flat = {
        "event_type": "pattern_detected",
        "timestamp": T,
        "symbol": "X",
        "pattern": "doji",
        "confidence": 0.5,
    }
    assert parse({**flat, "source": "daily"}).source == "tickstock"  # a flat message's source is its tier
    by_producer = parse({**flat, "source": "TickStockPL", "timeframe": "1D"})
    assert by_producer.source == "TickStockPL" and by_producer.data[TIMEFRAME_FROM] == "timeframe:1D"
    assert parse(flat | {"timeframe": "daily"}).source == "unknown"


# -- timeframes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("daily", "daily"), ("Daily", "daily"), ("DAILY", "daily"), ("1D", "daily"), ("1d", "daily"),
        ("hourly", "hourly"), ("weekly", "weekly"), ("monthly", "monthly"), ("intraday", "1min"),
        ("daily_intraday", "daily"), ("DailyIntraday", "daily"), ("combo", "daily"), ("fallback", "1min"),
        ("5m", "5min"), ("1min", "1min"), ("1h", "hourly"), ("1mo", "monthly"), ("W", "weekly"),
        ("test", None), ("1M", None), ("4h", None), ("d", None), ("", None), (5, None), (None, None),
    ],
)  # fmt: skip
def test_the_default_table(spelling: Any, expected: str | None) -> None:
    assert TimeframeTable().lookup(spelling) == expected


def test_no_timeframe_is_a_dead_letter_unless_a_default_is_set() -> None:
    error = rejected(envelope(), "unknown_timeframe")
    assert "TICKSTOCK_UPSTREAM_TIMEFRAMES" in error.detail
    rejected(envelope(tier="test"), "unknown_timeframe")
    rules = UpstreamRules(timeframes=TimeframeTable(default="hourly"))
    event = parse(envelope(), rules=rules)
    assert (event.timeframe, event.data[TIMEFRAME_FROM]) == ("hourly", "default")
    event = parse(envelope(tier="test"), rules=rules)
    assert (event.timeframe, event.data["tier"]) == ("hourly", "test")


@pytest.mark.parametrize(
    "text",
    [
        '{"test": "daily", "Combo": null, "2h": "hourly"}',
        "test=daily, combo=, 2h=hourly",
        " test = daily ,COMBO=,2h=hourly,",
    ],
)
def test_operator_overrides(text: str) -> None:
    table = TimeframeTable().with_overrides(parse_table(text))
    assert (table.lookup("test"), table.lookup("2h"), table.lookup("combo"), table.lookup("daily_intraday")) == (
        "daily", "hourly", None, "daily"
    )  # fmt: skip
    assert table != TimeframeTable() and TimeframeTable() == TimeframeTable(DEFAULT_TIMEFRAMES)
    assert TimeframeTable().__eq__(5) is NotImplemented


@pytest.mark.parametrize("text", ["test", "=daily", "a=b=c", "[1]", '{"a": 1}', "{bad json"])
def test_unreadable_tables(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):  # each message names its own problem
        TimeframeTable().with_overrides(parse_table(text))


@pytest.mark.parametrize(
    ("entries", "default"), [({"a": "2min"}, None), ({" ": "daily"}, None), ({}, "yearly")]
)
def test_tables_hold_v1_timeframes_only(entries: dict[str, str], default: str | None) -> None:
    with pytest.raises(ValueError, match=r"timeframe|blank|not one of"):
        TimeframeTable(entries, default=default)


# -- ids ------------------------------------------------------------------------------------------------


def test_one_detection_has_one_id_whatever_the_layout() -> None:
    a = parse(envelope(source="daily"))
    d = parse({"event_type": "pattern_detected", "data": envelope(source="daily")["data"]})
    f = parse(
        {
            "source": "P",
            "timestamp": T + 9,
            "detection_timestamp": T + 0.7,
            "pattern": "bull flag",
            "symbol": "aapl",
            "confidence": 0.85,
            "tier": "daily",
        }
    )
    assert a.id == d.id == f.id
    key = ["pattern_detected", "AAPL", match_key("Bull_Flag"), "daily", math.floor(T)]
    assert a.id == derived_id({**to_v1(envelope(source="daily"))}, {}) and key[2] == "bullflag"
    assert parse(envelope(source="hourly")).id != a.id
    assert parse(envelope(source="daily", timestamp=T + 1)).id != a.id
    assert parse({**envelope(source="daily"), "id": "pl-77"}).id == "pl-77"


def test_updates_differ_by_content_and_keep_the_detection_time() -> None:
    update = {**envelope(source="daily", confidence=0.9), "event_type": "pattern_updated"}
    other = {**envelope(source="daily", confidence=0.95), "event_type": "pattern_updated"}
    first, again, second = parse(update), parse(json.dumps(update, indent=2).encode()), parse(other)
    assert first.id == again.id != second.id
    assert first.detected_at == second.detected_at == parse(envelope(source="daily")).detected_at
    expired = {**envelope(source="daily"), "event_type": "pattern_expired", "timestamp": T + 999}
    assert parse(expired).id == parse({**expired, "timestamp": T + 5000}).id  # publish time is not in it


def test_ids_of_broken_messages_are_refused_cleanly() -> None:
    rejected(envelope(source="daily", extra=math.nan), "invalid_field")
    rejected(
        {
            **envelope(source="daily"),
            "event_type": "pattern_updated",
            "data": {**envelope(source="daily")["data"], "x": "\udc00"},
        },
        "invalid_field",
    )
    rejected(envelope(source="daily", symbol=["A"]), "invalid_symbol")
    rejected(envelope(source="daily", symbol="BRK B"), "invalid_symbol")
    rejected(envelope(source="daily", pattern=7), "invalid_field")


def test_batches_are_bounded_and_items_stand_alone() -> None:
    item = {"detection": {"symbol": "X"}}
    with pytest.raises(EventError, match="too_large"):
        batch_items({"type": "patterns_batch", "patterns": [item] * (MAX_BATCH + 1)})
    assert len(batch_items({"type": "patterns_batch", "patterns": [item] * MAX_BATCH})) == MAX_BATCH
    [one, two] = batch_items({"type": "patterns_batch", "patterns": [item, 5]})
    assert json.loads(one) == {"type": "pattern_detected", "detection": {"symbol": "X"}} and two == b"5"
    with pytest.raises(EventError, match="not JSON"):
        batch_items({"type": "patterns_batch", "patterns": [{"x": {1, 2}}]})


def test_shapes() -> None:
    assert shape({"type": "pattern_detected", "id": "x"}) is None
    assert shape({"event_type": "x", "data": {}}) == "enveloped"
    assert shape({"event_type": "x"}) == "flat"
    assert shape({"tier": "daily"}) == "flat"
    assert shape({"type": "pattern_detected", "detection": {}}) == "streaming"
    assert shape({"type": "patterns_batch"}) == "batch"
    assert shape({"pattern": "doji"}) is None  # v1 without its type: v1 says what is missing
    assert timezone(timedelta(0)) == UTC and epoch(0) > 0


def test_what_is_left_out_or_around() -> None:
    error = rejected(envelope(source="daily", confidence=None), "missing_field")
    assert error.fields[0]["loc"] == "confidence"
    update = {**envelope(source="daily", extra=math.nan), "event_type": "pattern_updated"}
    rejected(update, "invalid_field")
    detection = {"symbol": "X", "pattern_type": "Doji", "confidence": 0.5, "timeframe": "1min"}
    event = parse(
        {
            "type": "pattern_detected",
            "session_id": "s-1",
            "timestamp": "2025-12-01T14:30:00Z",
            "detection": detection,
        }
    )
    assert event.data["session_id"] == "s-1" and event.detected_at == datetime(
        2025, 12, 1, 14, 30, tzinfo=UTC
    )


def test_a_flat_message_keeps_no_envelope_keys_in_data() -> None:
    flat = {"event_type": "pattern_alert", "id": "e-1", "timestamp": T, "symbol": "X", "pattern": "doji"}
    event = parse({**flat, "confidence": 0.5, "source": "daily", "details": {"a": 1}})
    assert event.id == "e-1" and event.type == "pattern_detected"
    assert event.data == {
        "details": {"a": 1},
        "tier": "daily",
        TIMEFRAME_FROM: "source:daily",
        UPSTREAM_PATTERN: "doji",
    }
