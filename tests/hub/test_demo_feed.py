"""The demo feed: OHLCV files -> TA-Lib candlestick detections -> v1 events on the ingest subjects.

Loading and detection are pure and tested on the shipped files; the feed is tested against the
session's real NATS JetStream server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors
import numpy as np
import pytest
import talib
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from hub.candles import (
    CANDLE_FUNCTIONS,
    LIFETIMES,
    WARMUP_BARS,
    Detection,
    PatternNames,
    confidence,
    detect,
    scan,
)
from hub.catalog import PatternCatalog
from hub.demo_feed import DemoFeed, Track, load_tracks, replay, run
from hub.jetstream import add_stream
from hub.ohlcv import DEMO_DATA_DIR, default_files, load_bars
from hub.parsing import parse_event
from hub.subjects import INGEST_PREFIX, ingest_subject, producer_subject
from tests.support import wait_for, within

STREAM = "TICKSTOCK_INGEST"
PERMISSIVE = PatternCatalog.permissive()
NO_DB = hsettings(database=None, deadline=None)
AAPL = DEMO_DATA_DIR / "AAPL_daily_2012-2014.csv"
SHIPPED_PATTERNS = Path(__file__).parents[2] / "store" / "reference_data" / "patterns.json"


def replayed(path: Path) -> list[Detection]:
    """What the feed replays of one file: its detections from the warm-up on."""
    return [d for d in scan(load_bars(path)) if d.index >= WARMUP_BARS]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """The first 60 AAPL bars (a few dozen detections), under a name that still says AAPL."""
    lines = AAPL.read_text(encoding="utf-8").splitlines(keepends=True)
    return write(tmp_path / "AAPL_daily_head.csv", "".join(lines[:61]))


async def ingest_stream(js: JetStreamContext) -> None:
    await add_stream(js, StreamConfig(name=STREAM, subjects=[f"{INGEST_PREFIX}.>"]))


async def stored(js: JetStreamContext) -> int:
    return int((await js.stream_info(STREAM)).state.messages)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    await wait_for(predicate, timeout=timeout, interval=0.02, what="the feed's condition")


# -- loading ----------------------------------------------------------------------------------------

# file: symbol, timeframe, bars, first bar time, first bar's open high low close volume
SHIPPED = {
    "AAPL_daily_2012-2014.csv": (
        "AAPL",
        "daily",
        754,
        "2012-01-03",
        (58.485714, 58.92857, 58.42857, 58.747143, 75555200),
    ),
    "MSFT_daily_2012-2014.csv": (
        "MSFT",
        "daily",
        754,
        "2012-01-03",
        (26.549999, 26.959999, 26.389999, 26.77, 64731500),
    ),
    "IBM_daily_2012-2014.csv": (
        "IBM",
        "daily",
        754,
        "2012-01-03",
        (186.729996, 188.710007, 186.0, 186.300003, 5646000),
    ),
    "KO_daily_2012-2014.csv": (
        "KO",
        "daily",
        754,
        "2012-01-03",
        (35.075001, 35.355, 35.049999, 35.07, 15639600),
    ),
    "TSLA_daily_2015-2017.csv": (
        "TSLA",
        "daily",
        754,
        "2015-01-02",
        (222.87, 223.25, 213.26, 219.31, 4764443),
    ),
    "GOOGL_daily_2015-2017.csv": (
        "GOOGL",
        "daily",
        754,
        "2015-01-02",
        (532.6, 535.8, 527.88, 529.55, 1327870),
    ),
    "SPY_intraday_1min_2011-03.csv": (
        "SPY",
        "1min",
        17577,
        "2011-03-01T09:01:00Z",
        (133.9, 134.01, 133.9, 133.98, 3778),
    ),
}


def test_the_shipped_files_are_the_ones_documented_with_their_licences() -> None:
    assert {p.name for p in default_files()} == set(SHIPPED)
    readme = (DEMO_DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in SHIPPED)
    licences = {p.name for p in (DEMO_DATA_DIR / "LICENSES").iterdir()}
    assert licences == {
        "zipline_LICENSE_Apache-2.0.txt",
        "plotly-datasets_LICENSE.txt",
        "pyalgotrade_LICENSE.txt",
    }


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_loads_each_shipped_layout(name: str) -> None:
    symbol, timeframe, rows, first_time, first_bar = SHIPPED[name]
    bars = load_bars(DEMO_DATA_DIR / name)
    assert (bars.symbol, bars.timeframe, bars.file, len(bars)) == (symbol, timeframe, name, rows)
    assert bars.bar_time(0) == first_time
    first = (bars.open[0], bars.high[0], bars.low[0], bars.close[0], bars.volume[0])
    assert first == pytest.approx(first_bar)
    for series in (bars.open, bars.high, bars.low, bars.close, bars.volume):
        assert series.dtype == np.float64 and series.flags.c_contiguous and np.isfinite(series).all()
    assert bool(np.all(np.diff(bars.timestamps) > np.timedelta64(0, "s")))


def test_columns_are_found_by_name_in_any_order_and_m_d_yyyy_dates(tmp_path: Path) -> None:
    # SP500's layout: Open, Close, High, Low and M/D/YYYY dates.
    path = write(
        tmp_path / "^GSPC_daily.csv",
        "Date,Open,Close,High,Low,Volume\n11/1/2019,3050.7,3066.9,3066.9,3050.7,0\n"
        "11/4/2019,3078.9,3078.3,3085.2,3074.9,0\n\n",
    )
    bars = load_bars(path)
    assert (bars.symbol, bars.timeframe, bars.dated) == ("^GSPC", "daily", True)
    assert list(bars.close) == [3066.9, 3078.3] and list(bars.high) == [3066.9, 3085.2]
    assert [bars.bar_time(0), bars.bar_time(1)] == ["2019-11-01", "2019-11-04"]


def test_utc_times_with_an_offset_are_converted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "X_1min.csv",
        "Datetime_UTC,Open,High,Low,Close,Volume\n"
        "2011-03-01T04:01:00-05:00,1,1,1,1,1\n2011-03-01 09:02:00,1,1,1,1,1\n",
    )
    bars = load_bars(path)
    assert (bars.timeframe, bars.dated) == ("1min", False)
    assert bars.bar_time(0) == "2011-03-01T09:01:00Z"


def test_symbol_and_timeframe_can_be_given(tmp_path: Path) -> None:
    path = write(tmp_path / "anything.csv", "date,open,high,low,close,volume\n2020-01-03,1,2,0.5,1.5,10\n")
    bars = load_bars(path, symbol="brk.b", timeframe="weekly")
    assert (bars.symbol, bars.timeframe, len(bars)) == ("BRK.B", "weekly", 1)
    with pytest.raises(ValueError, match="unknown timeframe 'fortnightly'"):
        load_bars(path, timeframe="fortnightly")
    with pytest.raises(ValueError, match="one bar is not enough"):
        load_bars(path)
    seconds = write(
        tmp_path / "S.csv",
        "datetime_utc,open,high,low,close,volume\n"
        "2020-01-03 10:00:00,1,1,1,1,1\n2020-01-03 10:00:10,1,1,1,1,1\n",
    )
    with pytest.raises(ValueError, match="10 s apart match no timeframe"):
        load_bars(seconds)
    assert load_bars(seconds, timeframe="1min").timeframe == "1min"


HEADER = "date,open,high,low,close,volume\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "VIX_daily.csv",
            "DATE,OPEN,HIGH,LOW,CLOSE\n1990-01-02,17.24,17.2,17.2,17.2\n",
            "unknown column layout",
        ),
        ("X_daily.csv", "when,open,high,low,close,volume\n2020-01-02,1,1,1,1,1\n", "unknown column layout"),
        ("X_daily.csv", "", "unknown column layout"),
        ("X_daily.csv", HEADER, "no bars"),
        ("X_daily.csv", HEADER + "2020-01-02,1,1,1,abc,1\n", "line 2: cannot read row"),
        ("X_daily.csv", HEADER + "2020-01-02,1,1,1\n", "line 2: cannot read row"),
        ("X_daily.csv", HEADER + "2020-01-02 09:30,1,1,1,1,1\n", "line 2: cannot read row"),
        (
            "X_daily.csv",
            HEADER + "2020-01-02,1,1,1,1,1\n2020-01-03,1,nan,1,1,1\n",
            "line 3: prices must be fin",
        ),
        ("X_daily.csv", HEADER + "2020-01-02,1,1,1,1,-5\n", "volume non-negative"),
        ("X_daily.csv", HEADER + "2020-01-03,1,1,1,1,1\n2020-01-02,1,1,1,1,1\n", "strictly increase"),
        ("X_daily.csv", HEADER + "2020-01-02,1,1,1,1,1\n2020-01-02,1,1,1,1,1\n", "strictly increase"),
        ("bad symbol_daily.csv", HEADER + "2020-01-02,1,1,1,1,1\n2020-01-03,1,1,1,1,1\n", "invalid_symbol"),
    ],
)
def test_rejects_what_it_cannot_read(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        load_bars(write(tmp_path / name, text))
    assert name in str(caught.value)


# -- detection --------------------------------------------------------------------------------------


def test_all_61_candlestick_functions_run() -> None:
    assert len(CANDLE_FUNCTIONS) == 61 and all(name.startswith("CDL") for name in CANDLE_FUNCTIONS)
    assert set(CANDLE_FUNCTIONS) == set(talib.get_function_groups()["Pattern Recognition"])


def test_bearish_engulfing_on_aapl_2012_02_15() -> None:
    # 2012-02-14 is white (O 72.09 C 72.78); 2012-02-15 is black (O 73.47 C 71.10) and engulfs it,
    # on 3.6 times the average volume of the 20 days before.
    bars = load_bars(AAPL)
    found = [d for d in scan(bars) if d.function == "CDLENGULFING" and d.index == 30]
    assert len(found) == 1
    d = found[0]
    assert (d.symbol, d.timeframe, d.bar_time, d.signal) == ("AAPL", "daily", "2012-02-15", -100)
    assert (d.pattern, d.direction) == ("engulfing", "bearish")
    assert d.price == pytest.approx(71.095711) and d.volume == 376530000
    average = bars.volume[10:30].mean()
    assert d.relative_volume == pytest.approx(376530000 / average, abs=1e-3)
    assert d.rsi == pytest.approx(talib.RSI(bars.close, 14)[30], abs=0.01)
    assert d.support == pytest.approx(bars.low[11:31].min())
    assert d.resistance == pytest.approx(bars.high[11:31].max())
    assert d.confidence == confidence(-100, d.relative_volume) == pytest.approx(0.777)


def test_scan_is_ordered_and_early_bars_have_partial_levels() -> None:
    bars = load_bars(AAPL)
    found = scan(bars)
    keys = [(d.index, d.function) for d in found]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    early = [d for d in found if d.index < 20]
    assert early and all(d.relative_volume is None for d in early)
    for d in early:
        assert d.support == pytest.approx(bars.low[: d.index + 1].min())
        assert d.resistance == pytest.approx(bars.high[: d.index + 1].max())
    assert all(d.rsi is None for d in found if d.index < 14)
    assert all(d.rsi is not None and 0 <= d.rsi <= 100 for d in found if d.index >= 14)


def test_detect_on_one_bar_agrees_with_the_full_scan() -> None:
    bars = load_bars(AAPL)
    names = PatternNames.load()
    by_bar: dict[int, list[Detection]] = {}
    for d in scan(bars, names=names):
        by_bar.setdefault(d.index, []).append(d)
    for upto in [*range(45), 300, 301, len(bars) - 1]:
        assert detect(bars, upto=upto, names=names) == by_bar.get(upto, []), upto
    for bad in (-1, len(bars)):
        with pytest.raises(ValueError, match="is not a bar index"):
            detect(bars, upto=bad)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_file_yields_valid_v1_events(name: str) -> None:
    found = scan(load_bars(DEMO_DATA_DIR / name))
    assert len(found) > len(load_bars(DEMO_DATA_DIR / name))  # about two per bar
    assert all(0.3 <= d.confidence <= 0.99 for d in found)
    now = datetime(2026, 5, 1, 14, 30, tzinfo=UTC)
    for d in found[:: max(1, len(found) // 200)]:
        event = parse_event(d.to_event(run_id="r1", now=now).to_json_bytes(), catalog=PERMISSIVE)
        assert event.id == f"demo-r1-{d.symbol}-{d.timeframe}-{d.index}-{d.function}"
        assert (event.type, event.source, event.symbol) == ("pattern_detected", "demo-feed", d.symbol)
        assert event.detected_at == now and event.expires_at == now + LIFETIMES[d.timeframe]
        assert (event.price, event.volume, event.confidence) == (d.price, d.volume, d.confidence)
        assert event.levels == {"support": d.support, "resistance": d.resistance}
        assert event.indicators["talib"] == d.signal
        assert set(event.indicators) <= {"talib", "relative_volume", "rsi"}
        assert event.data["bar_time"] == d.bar_time and event.data["file"] == name
        assert (event.data["talib_function"], event.data["signal"]) == (d.function, d.signal)
        assert event.data["direction"] == d.direction in ("bullish", "bearish", "neutral")


def test_lifetimes_and_lap_ids() -> None:
    assert LIFETIMES["daily"] == timedelta(days=3) and LIFETIMES["1min"] == timedelta(minutes=30)
    d = scan(load_bars(AAPL))[0]
    assert d.event_id("r1", lap=2) == f"demo-r1.2-AAPL-daily-{d.index}-{d.function}"


def test_events_canonicalise_to_the_same_name_through_the_shipped_catalog() -> None:
    doc = json.loads(SHIPPED_PATTERNS.read_text(encoding="utf-8"))
    catalog = PatternCatalog((p["name"], p.get("aliases", [])) for p in doc["patterns"])
    now = datetime.now(UTC)
    for d in scan(load_bars(AAPL))[:300]:
        event = parse_event(d.to_event(run_id="x", now=now).to_json_bytes(), catalog=catalog)
        assert event.pattern == d.pattern


@NO_DB
@given(
    signal=st.sampled_from([100, -100, 200, -200]),
    rv=st.none() | st.floats(min_value=0, max_value=1e12, allow_nan=False),
)
def test_confidence_is_bounded(signal: int, rv: float | None) -> None:
    value = confidence(signal, rv)
    assert 0.3 <= value <= 0.99
    if rv is not None:
        assert confidence(signal, rv * 2) >= value
    assert confidence(200 if signal > 0 else -200, rv) >= confidence(signal, rv)


@pytest.mark.parametrize(
    ("signal", "rv", "expected"),
    [
        (100, 1.0, 0.5),
        (-100, None, 0.5),
        (100, 2.0, 0.65),
        (100, 0.5, 0.35),
        (200, 1.0, 0.7),
        (100, 0.0, 0.3),
        (-200, 1e9, 0.99),
    ],
)
def test_confidence_formula(signal: int, rv: float | None, expected: float) -> None:
    assert confidence(signal, rv) == pytest.approx(expected)


# -- pattern names ----------------------------------------------------------------------------------


def test_shipped_catalog_names_every_function() -> None:
    names = PatternNames.load()
    assert len(names) == 61
    assert names.resolve("CDLENGULFING", 100) == ("engulfing", "bullish")
    assert names.resolve("CDLENGULFING", -100) == ("engulfing", "bearish")
    assert names.resolve("CDLHAMMER", 100) == ("hammer", "bullish")
    assert names.resolve("CDLDOJI", 100) == ("doji", "neutral")
    assert names.resolve("CDLHIKKAKE", -200) == ("hikkake", "bearish")


def test_catalog_file_is_followed(tmp_path: Path) -> None:
    path = write(
        tmp_path / "patterns.json",
        json.dumps(
            {
                "patterns": [
                    {
                        "name": "engulfing",
                        "direction": "neutral",
                        "aliases": ["cdlengulfing", "bullish_engulfing", "bearish_engulfing"],
                    },
                    {"name": "hammer_time", "direction": "bullish", "aliases": ["CDLHAMMER", "Hammer"]},
                    {"name": "doji", "aliases": ["CDLDOJI", "bullish_doji"]},
                    {
                        "name": "bull_flag",
                        "category": "chart",
                        "direction": "bullish",
                        "aliases": ["Bull_Flag"],
                    },
                ]
            }
        ),
    )
    names = PatternNames.load(path)
    assert len(names) == 3
    assert names.resolve("CDLENGULFING", -100) == ("engulfing", "bearish")
    assert names.resolve("CDLHAMMER", 100) == ("hammer_time", "bullish")
    assert names.resolve("CDLDOJI", 100) == ("doji", "neutral")
    # A function the catalog does not map keeps its TA-Lib name; the sign of its output is the direction.
    assert names.resolve("CDLMARUBOZU", -100) == ("CDLMARUBOZU", "bearish")
    assert names.resolve("CDLMARUBOZU", 100) == ("CDLMARUBOZU", "bullish")
    assert names.resolve("CDLMARUBOZU", 0) == ("CDLMARUBOZU", "neutral")
    d = next(d for d in scan(load_bars(AAPL), names=names) if d.function == "CDLMARUBOZU")
    event = d.to_event(run_id="r", now=datetime.now(UTC))
    assert event.pattern == "CDLMARUBOZU"
    assert event.data["direction"] == ("bullish" if d.signal > 0 else "bearish")
    # A name that implies its direction carries it too.
    hammer = next(d for d in scan(load_bars(AAPL), names=names) if d.function == "CDLHAMMER")
    assert hammer.to_event(run_id="r", now=datetime.now(UTC)).data["direction"] == "bullish"


@pytest.mark.parametrize(
    "text",
    [
        None,
        "{not json",
        '{"patterns": 3}',
        '{"patterns": [{"aliases": []}]}',
        "[]",
    ],
)
def test_a_missing_or_broken_catalog_falls_back_to_function_names(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    text: str | None,
) -> None:
    path = tmp_path / "patterns.json"
    if text is not None:
        write(path, text)
    with caplog.at_level(logging.WARNING, logger="tickstock.demo_feed"):
        names = PatternNames.load(path)
    assert len(names) == 0 and names.resolve("CDLHAMMER", 100) == ("CDLHAMMER", "bullish")
    assert [r.levelname for r in caplog.records] == ["WARNING"]


# -- the replay -------------------------------------------------------------------------------------


def test_the_replay_starts_past_the_warm_up_so_confidences_spread_from_the_first_event() -> None:
    tracks = load_tracks(default_files())
    first = [d for d, _ in itertools.islice(replay(tracks, loop=True), 300)]
    assert min(d.index for d in first) == WARMUP_BARS
    assert all(d.relative_volume is not None and d.rsi is not None for d in first)
    assert len({d.confidence for d in first}) > 30  # not a wall of 0.5
    # The old start (bar 0) replays the warm-up, where relative volume is unknown (confidence 0.5).
    cold = [d for d, _ in itertools.islice(replay(tracks, loop=True, start=0), 300)]
    assert min(d.index for d in cold) < WARMUP_BARS and any(d.relative_volume is None for d in cold)


def test_each_lap_starts_at_the_warm_up_and_a_track_with_nothing_after_it_is_left_out() -> None:
    hit = Detection(
        symbol="X", timeframe="daily", file="x.csv", index=0, bar_time="2020-01-01", function="CDLDOJI",
        pattern="doji", direction="neutral", signal=100, confidence=0.5, price=1.0, volume=1.0,
        relative_volume=None, rsi=None, support=1.0, resistance=1.0,
    )  # fmt: skip
    late = [Detection(**{**{f: getattr(hit, f) for f in hit.__slots__}, "index": i}) for i in (1, 3)]
    tracks = [Track(4, {0: (hit,), 1: (late[0],), 3: (late[1],)}), Track(2, {0: (hit,)})]
    laps = [(d.index, lap) for d, lap in itertools.islice(replay(tracks, loop=True, start=1), 5)]
    assert laps == [(1, 0), (3, 0), (1, 1), (3, 1), (1, 2)]
    assert list(replay(tracks, loop=True, start=4)) == []  # nothing to replay: it ends, looping or not
    with pytest.raises(ValueError, match="start"):
        next(replay(tracks, loop=False, start=-1))


# -- the feed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "rate must be a positive number"),
        ({"rate": -1}, "rate must be a positive number"),
        ({"rate": math.nan}, "rate must be a positive number"),
        ({"rate": math.inf}, "rate must be a positive number"),
        ({"publish_timeout_s": 0}, "publish_timeout_s"),
        ({"max_backoff_s": -1}, "max_backoff_s"),
        ({"files": []}, "files is empty"),
        ({"warmup_bars": -1}, "warmup_bars"),
        ({"run_id": ""}, "run_id"),
        ({"run_id": "a-b"}, "run_id"),
        ({"run_id": "a.b"}, "run_id"),
        ({"run_id": "x" * 41}, "run_id"),
    ],
)
def test_feed_arguments_are_checked_without_io(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoFeed(None, **kwargs)  # type: ignore[arg-type]


async def test_feed_lifecycle_misuse(jetstream: JetStreamContext, tmp_path: Path) -> None:
    quiet = write(tmp_path / "Q_daily.csv", HEADER + "2020-01-02,1,2,0.5,1.5,10\n2020-01-03,1,2,0.5,1.5,10\n")
    feed = DemoFeed(jetstream, files=[quiet])
    assert len(feed.run_id) == 8 and feed.run_id != DemoFeed(jetstream).run_id
    with pytest.raises(RuntimeError, match="not running"):
        await feed.wait()
    await feed.__aexit__(None, None, None)  # never entered: nothing to stop
    async with feed:
        with pytest.raises(RuntimeError, match="already running"):
            await feed.__aenter__()
        # A file without detections is left out; with nothing to replay the feed ends even when looping.
        assert await feed.wait(2)
    assert (feed.published, feed.errors) == (0, 0)


async def test_feed_publishes_at_about_the_rate_with_msg_ids(jetstream: JetStreamContext) -> None:
    await ingest_stream(jetstream)
    async with DemoFeed(jetstream, rate=40, run_id="rate") as feed:
        started = time.monotonic()
        await until(lambda: feed.published >= 25)
        task = feed._task
    elapsed = time.monotonic() - started
    # A ceiling on the rate only: a busy machine lengthens ``elapsed`` and so loosens it.
    assert feed.published <= 45 * elapsed + 5, (feed.published, elapsed)  # hygiene: ok - see above
    assert feed.errors == 0 and feed.duplicates == 0
    count = await stored(jetstream)
    assert count == feed.published
    symbols = set()
    for seq in range(1, count + 1):
        msg = await jetstream.get_msg(STREAM, seq)
        event = parse_event(msg.data, catalog=PERMISSIVE)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == event.id
        assert event.id.startswith("demo-rate-")
        assert producer_subject(msg.subject) == ingest_subject(event.timeframe, event.symbol)
        assert event.source == "demo-feed"
        assert abs((datetime.now(UTC) - event.detected_at).total_seconds()) < 30
        symbols.add(event.symbol)
    assert len(symbols) >= 3  # round-robin over the files, not one file after another
    assert task is not None and task.done()  # stopped and awaited on exit: nothing more can be published
    assert await stored(jetstream) == count


async def test_restart_with_the_same_run_id_is_deduplicated(jetstream: JetStreamContext, small: Path) -> None:
    await ingest_stream(jetstream)
    expected = len(replayed(small))
    async with DemoFeed(jetstream, rate=2000, files=[small], loop=False, run_id="same") as first:
        assert await first.wait(10)
    assert (first.published, first.duplicates, await stored(jetstream)) == (expected, 0, expected)
    async with DemoFeed(jetstream, rate=2000, files=[small], loop=False, run_id="same") as again:
        assert await again.wait(10)
    assert (again.published, again.duplicates, await stored(jetstream)) == (0, expected, expected)
    async with DemoFeed(jetstream, rate=2000, files=[small], loop=False, run_id="other") as other:
        assert await other.wait(10)
    assert (other.published, await stored(jetstream)) == (expected, 2 * expected)


async def test_looping_starts_files_over_with_new_ids(jetstream: JetStreamContext, small: Path) -> None:
    await ingest_stream(jetstream)
    per_lap = len(replayed(small))
    async with DemoFeed(jetstream, rate=2000, files=[small], loop=True, run_id="lap") as feed:
        await until(lambda: feed.published > 2 * per_lap)
        assert not await feed.wait(0)
    assert feed.duplicates == 0 and await stored(jetstream) == feed.published
    last = await jetstream.get_msg(STREAM, 2 * per_lap + 1)
    assert parse_event(last.data, catalog=PERMISSIVE).id.startswith("demo-lap.2-AAPL-daily-")


async def test_publish_errors_are_counted_logged_once_and_retried(
    jetstream: JetStreamContext,
    small: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No stream captures the subjects yet, so every publish gets "no responders".
    with caplog.at_level(logging.INFO, logger="tickstock.demo_feed"):
        async with DemoFeed(jetstream, rate=100, files=[small], run_id="outage", max_backoff_s=0.05) as feed:
            await until(lambda: feed.errors >= 4)
            assert feed.published == 0 and not await feed.wait(0)
            await ingest_stream(jetstream)
            await until(lambda: feed.published >= 3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "publishing failed" in warnings[0].getMessage()
    assert any("publishing again after" in r.getMessage() for r in caplog.records)
    first = await jetstream.get_msg(STREAM, 1)
    assert parse_event(first.data, catalog=PERMISSIVE).data["bar_time"] == replayed(small)[0].bar_time


async def test_an_unexpected_failure_is_raised_on_exit(small: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("bug")

    feed = DemoFeed(Broken(), files=[small])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="bug"):
        async with feed:
            assert await feed.wait(5)
    assert any("unexpected error" in r.getMessage() for r in caplog.records)


async def test_a_publish_that_overruns_its_timeout_is_cancelled_on_exit(small: Path) -> None:
    # Exit waits publish_timeout_s for the publish in flight, then cancels. Python 3.11's wait_for
    # (inside nats-py's request) can turn that cancellation into a normal return or an error; here
    # it becomes a timeout, and the feed must still stop.
    class Racy:
        calls = 0

        async def publish(self, *args: object, **kwargs: object) -> None:
            Racy.calls += 1
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise nats.errors.TimeoutError from None

    feed = DemoFeed(Racy(), rate=1000, files=[small], publish_timeout_s=0.1)  # type: ignore[arg-type]
    async with feed:
        await until(lambda: Racy.calls == 1)
    assert (Racy.calls, feed.errors, feed.published) == (1, 1, 0)


async def test_run_for_a_duration(servers: Any, jetstream: JetStreamContext, small: Path) -> None:
    await ingest_stream(jetstream)
    async with within(30, what="a half-second run"):
        published = await run(servers.nats_url, rate=40, duration_s=0.5, loop=True, files=[small])
    assert 5 <= published <= 40 and await stored(jetstream) == published


async def test_run_until_replayed_and_until_cancelled(
    servers: Any,
    jetstream: JetStreamContext,
    small: Path,
) -> None:
    await ingest_stream(jetstream)
    expected = len(replayed(small))
    assert await run(servers.nats_url, rate=2000, duration_s=None, loop=False, files=[small]) == expected
    task = asyncio.create_task(run(servers.nats_url, rate=2000, duration_s=None, loop=True, files=[small]))

    async def past_one_lap() -> bool:
        return await stored(jetstream) > 2 * expected

    await wait_for(past_one_lap, timeout=30, what="the looping run past its first lap")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored(jetstream) > expected


async def test_run_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        await run("nats://127.0.0.1:1", rate=1, duration_s=-1, loop=False)
