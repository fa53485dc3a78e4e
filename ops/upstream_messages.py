"""A corpus of TickStock's upstream messages, built as ``../shared/tickstock-upstream.md`` §1–2 describes,
with what the hub must store for each (``docs/upstream.md``).

Used by ``tests/hub/test_upstream_corpus.py`` (published on Redis through the bridge of a live hub) and by
``python -m ops.upstream_corpus`` (the same on embedded servers, printing a table). At least three messages
per layout A–G and per streaming channel (the batch channel's messages hold several detections each).
Every detection time is fixed (December 2026), so the expected rows are exact.

Two messages are dead letters on purpose (:data:`DELIBERATE`): upstream's ``test`` tier, which names no
bars, and a pattern name that is in no catalog (upstream's own test name ``Performance_Test``).
:data:`HOSTILE` are broken messages for every channel; each must end as a dead letter with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["CHANNELS", "CORPUS", "DELIBERATE", "HOSTILE", "Case", "Row"]

PATTERNS_CHANNEL = "tickstock.events.patterns"
STREAMING_CHANNEL = "tickstock:patterns:streaming"
BATCH_CHANNEL = "tickstock:patterns:detected"
CHANNELS = (PATTERNS_CHANNEL, STREAMING_CHANNEL, BATCH_CHANNEL)

BASE = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)
NEW_YORK = timezone(timedelta(hours=-5))  # a streaming timestamp with another offset


def at(minutes: float) -> datetime:
    return BASE + timedelta(minutes=minutes)


def epoch(minutes: float) -> float:
    return at(minutes).timestamp()


def z(moment: datetime) -> str:
    """How the hub writes a UTC time."""
    text = (
        moment.astimezone(UTC)
        .replace(tzinfo=None)
        .isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    )
    return text + "Z"


@dataclass(frozen=True)
class Row:
    """One stored event as the corpus expects it."""

    type: str
    symbol: str
    pattern: str
    timeframe: str
    confidence: float
    detected_at: str  # RFC 3339, UTC, as the hub writes it


@dataclass(frozen=True)
class Case:
    """One message published on ``channel`` and what it must become: ``rows`` stored, or a dead letter
    with ``reason``."""

    layout: str
    channel: str
    message: bytes
    rows: tuple[Row, ...] = ()
    reason: str | None = None
    why: str = ""


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _detected(
    symbol: str, pattern: str, tf: str, conf: float, moment: datetime, kind: str = "pattern_detected"
) -> Row:
    return Row(kind, symbol, pattern, tf, conf, z(moment))


# -- A. envelope ------------------------------------------------------------------------------------

A = [
    # TickStock's fallback detector, byte for byte its _publish_pattern (publish time = detection time)
    Case(
        "A",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "fallback_detector",
                "timestamp": epoch(0),
                "data": {
                    "symbol": "AAPL",
                    "pattern": "High_Volume_Surge",
                    "confidence": 0.75,
                    "current_price": 231.4,
                    "price_change": 0.8,
                    "timestamp": epoch(0),
                    "expires_at": epoch(0) + 3 * 86400,
                    "indicators": {"relative_strength": 1.0, "relative_volume": 3.4, "volume": 52000},
                    "source": "fallback",
                },
            }
        ),
        (_detected("AAPL", "volume_spike", "1min", 0.75, at(0)),),
    ),
    Case(
        "A",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "TickStockPL",
                "timestamp": epoch(9),  # published 8 minutes after the detection
                "data": {
                    "symbol": "MSFT",
                    "pattern": "WeeklyBO",
                    "confidence": 0.82,
                    "current_price": 425.1,
                    "price_change": 1.9,
                    "timestamp": epoch(1),
                    "expires_at": epoch(1) + 7 * 86400,
                    "indicators": {
                        "relative_strength": 1.3,
                        "relative_volume": 2.2,
                        "rsi": 61.5,
                        "support_level": 410.0,
                        "resistance_level": 424.0,
                    },
                    "tier": "weekly",
                    "flow_id": "6f1c7a52-0d55-4a43-9a43-0d2a3e7f5b11",
                    "description": "weekly close above the 10-week high",
                    "action": "BUY",
                    "stop_loss": 409.5,
                    "target_price": 455.0,
                },
            }
        ),
        (_detected("MSFT", "weekly_breakout", "weekly", 0.82, at(1)),),
    ),
    Case(
        "A",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "TickStockPL",
                "timestamp": epoch(2.5),
                "data": {
                    "symbol": "NVDA",
                    "pattern": "DailyBO",
                    "confidence": 0.88,
                    "current_price": 131.2,
                    "timestamp": epoch(2),
                    "source": "daily",
                },
            }
        ),
        (_detected("NVDA", "daily_breakout", "daily", 0.88, at(2)),),
    ),
    Case(
        "A",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "fallback_detector",
                "timestamp": epoch(3),
                "data": {
                    "symbol": "TSLA",
                    "pattern": "Price_Gap",
                    "confidence": 0.8,
                    "current_price": 340.0,
                    "price_change": 2.6,
                    "timestamp": epoch(3),
                    "expires_at": epoch(3) + 3 * 86400,
                    "indicators": {"relative_strength": 1.0, "relative_volume": 1.0, "volume": 8100},
                    "source": "fallback",
                },
            }
        ),
        (_detected("TSLA", "price_gap", "1min", 0.8, at(3)),),
    ),
]

# -- B. envelope with pattern_name ------------------------------------------------------------------

B = [
    Case(
        "B",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "TickStockPL",
                "timestamp": epoch(11),
                "data": {
                    "symbol": "AMD",
                    "pattern_name": "Bull_Flag",
                    "confidence": 0.71,
                    "current_price": 141.3,
                    "timestamp": epoch(10),
                    "tier": "hourly",
                },
            }
        ),
        (_detected("AMD", "bull_flag", "hourly", 0.71, at(10)),),
    ),
    Case(
        "B",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "TickStockPL",
                "timestamp": epoch(12),
                "data": {
                    "symbol": "GOOGL",
                    "pattern_name": "AscTri",
                    "confidence": 0.66,
                    "timestamp": epoch(11),
                    "source": "intraday",
                },
            }
        ),
        (_detected("GOOGL", "ascending_triangle", "1min", 0.66, at(11)),),
    ),
    Case(
        "B",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_alert",
                "source": "TickStockPL",
                "timestamp": epoch(13),
                "data": {
                    "symbol": "JPM",
                    "pattern_name": "HeadShoulders",
                    "confidence": 0.9,
                    "timestamp": epoch(12),
                    "tier": "monthly",
                },
            }
        ),
        (_detected("JPM", "head_and_shoulders", "monthly", 0.9, at(12)),),
    ),
]

# -- C. double-nested, naive ISO envelope timestamp -------------------------------------------------


def _c(symbol: str, pattern: str, tier: str, conf: float, minutes: float) -> bytes:
    naive = at(minutes).replace(tzinfo=None, microsecond=123456).isoformat()  # datetime.now().isoformat()
    flow = f"0c7e{int(minutes):04d}-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    return _json(
        {
            "event_type": "pattern_detected",
            "source": "TickStockPL",
            "flow_id": flow,
            "timestamp": naive,
            "data": {
                "flow_id": flow,
                "tier": tier,
                "event_type": "pattern_detected",
                "data": {
                    "pattern": pattern,
                    "symbol": symbol,
                    "confidence": conf,
                    "current_price": 98.7,
                    "indicators": {"rsi": 48.2, "macd": {"value": 0.42, "signal": 0.31}, "volume": 1250000},
                    "metadata": {"detector": "pl", "bars": 30},
                    "source": tier,
                },
            },
        }
    )


C = [
    Case(
        "C",
        PATTERNS_CHANNEL,
        _c("META", "SupportBreakout", "daily_intraday", 0.82, 20),
        (_detected("META", "support_breakout", "daily", 0.82, at(20).replace(microsecond=123456)),),
    ),
    Case(
        "C",
        PATTERNS_CHANNEL,
        _c("AMZN", "Momentum_Shift", "combo", 0.74, 21),
        (_detected("AMZN", "momentum_shift", "daily", 0.74, at(21).replace(microsecond=123456)),),
    ),
    Case(
        "C",
        PATTERNS_CHANNEL,
        _c("SPY", "TrendReversal", "weekly", 0.88, 22),
        (_detected("SPY", "trend_reversal", "weekly", 0.88, at(22).replace(microsecond=123456)),),
    ),
]

# -- D. no envelope timestamp -----------------------------------------------------------------------

D = [
    Case(
        "D",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "data": {
                    "symbol": "GOOGL",
                    "pattern": "Support_Test",
                    "confidence": 0.78,
                    "current_price": 140.8,
                    "timestamp": epoch(30),
                    "source": "daily",
                },
            }
        ),
        (_detected("GOOGL", "support_test", "daily", 0.78, at(30)),),
    ),
    Case(
        "D",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "data": {
                    "symbol": "IBM",
                    "pattern": "Resistance_Break",
                    "confidence": 0.69,
                    "timestamp": epoch(31),
                    "tier": "hourly",
                },
            }
        ),
        (_detected("IBM", "resistance_break", "hourly", 0.69, at(31)),),
    ),
    Case(
        "D",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "data": {
                    "symbol": "KO",
                    "pattern": "Gap_Fill",
                    "confidence": 0.61,
                    "timestamp": epoch(32),
                    "source": "intraday",
                    "expires_at": epoch(32) + 3600,
                },
            }
        ),
        (_detected("KO", "gap_fill", "1min", 0.61, at(32)),),
    ),
]

# -- E. flat ------------------------------------------------------------------------------------------

E = [
    Case(
        "E",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "timestamp": epoch(40),
                "symbol": "AAPL",
                "pattern": "Price_Breakout",
                "confidence": 0.85,
                "rs": 75.5,
                "volume_multiple": 2.5,
                "rsi": 62.3,
                "price": 150.25,
                "timeframe": "Daily",
                "source": "daily",
            }
        ),
        (_detected("AAPL", "breakout", "daily", 0.85, at(40)),),
    ),
    Case(
        "E",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "daily",
                "timestamp": epoch(41),
                "symbol": "WMT",
                "pattern": "Trendline_Hold",
                "confidence": 0.64,
                "current_price": 92.1,
                "price_change": -0.4,
                "timeframe": "1D",
                "details": {"touches": 3},
            }
        ),
        (_detected("WMT", "trendline_hold", "daily", 0.64, at(41)),),
    ),
    Case(
        "E",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "timestamp": epoch(42),
                "symbol": "XOM",
                "pattern": "Reversal_Signal",
                "confidence": 0.58,
                "current_price": 118.0,
                "expires_at": epoch(42) + 86400,
                "indicators": {"rsi": 28.4},
                "source": "hourly",
            }
        ),
        (_detected("XOM", "reversal_signal", "hourly", 0.58, at(42)),),
    ),
]

# -- F. no event_type ---------------------------------------------------------------------------------

F = [
    Case(
        "F",
        PATTERNS_CHANNEL,
        _json(
            {
                "source": "TickStockPL",
                "timestamp": epoch(51),
                "pattern": "Engulfing_Bull",
                "symbol": "CAT",
                "confidence": 0.77,
                "tier": "daily",
                "timeframe": "1d",
                "price_at_detection": 351.2,
                "category": "candlestick",
                "detection_timestamp": epoch(50),
                "metadata": {"body_ratio": 1.8},
            }
        ),
        (_detected("CAT", "engulfing", "daily", 0.77, at(50)),),
    ),
    Case(
        "F",
        PATTERNS_CHANNEL,
        _json(
            {
                "source": "TickStockPL",
                "timestamp": epoch(52),
                "pattern": "MACrossover",
                "symbol": "BA",
                "confidence": 0.63,
                "tier": "intraday",
                "timeframe": "5m",
                "price_at_detection": 176.4,
                "category": "trend",
                "detection_timestamp": epoch(51),
                "metadata": {"fast": 12, "slow": 26},
            }
        ),
        (_detected("BA", "ma_crossover", "5min", 0.63, at(51)),),
    ),
    Case(
        "F",
        PATTERNS_CHANNEL,
        _json(
            {
                "source": "TickStockPL",
                "timestamp": epoch(53),
                "pattern": "VolSpike",
                "symbol": "DIS",
                "confidence": 0.7,
                "tier": "hourly",
                "price_at_detection": 111.0,
                "detection_timestamp": epoch(52),
                "metadata": {},
            }
        ),
        (_detected("DIS", "volume_spike", "hourly", 0.7, at(52)),),
    ),
]

# -- G. updates and expiries of instances above ------------------------------------------------------

G = [
    # Two different updates of MSFT's weekly breakout (A): two events, both at the detection's time
    Case(
        "G",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_updated",
                "source": "TickStockPL",
                "timestamp": epoch(60),
                "data": {
                    "symbol": "MSFT",
                    "pattern": "WeeklyBO",
                    "confidence": 0.86,
                    "current_price": 428.0,
                    "timestamp": epoch(1),
                    "tier": "weekly",
                },
            }
        ),
        (_detected("MSFT", "weekly_breakout", "weekly", 0.86, at(1), "pattern_updated"),),
    ),
    Case(
        "G",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_updated",
                "source": "TickStockPL",
                "timestamp": epoch(61),
                "data": {
                    "symbol": "MSFT",
                    "pattern": "WeeklyBO",
                    "confidence": 0.9,
                    "current_price": 431.5,
                    "timestamp": epoch(1),
                    "tier": "weekly",
                },
            }
        ),
        (_detected("MSFT", "weekly_breakout", "weekly", 0.9, at(1), "pattern_updated"),),
    ),
    Case(
        "G",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_expired",
                "source": "TickStockPL",
                "timestamp": epoch(62),
                "data": {
                    "symbol": "NVDA",
                    "pattern": "DailyBO",
                    "confidence": 0.88,
                    "timestamp": epoch(2),
                    "source": "daily",
                },
            }
        ),
        (_detected("NVDA", "daily_breakout", "daily", 0.88, at(2), "pattern_expired"),),
    ),
]

# -- the streaming channels ----------------------------------------------------------------------------


def _detection(
    symbol: str, pattern: str, conf: float, moment: datetime, *, bar: bool = True
) -> dict[str, object]:
    detection: dict[str, object] = {
        "symbol": symbol,
        "pattern_type": pattern,
        "confidence": conf,
        "timeframe": "1min",
        "timestamp": moment.isoformat(),
    }
    if bar:
        detection["bar_data"] = {
            "open": 150.1,
            "high": 151.0,
            "low": 149.8,
            "close": 150.7,
            "volume": 1830000,
        }
    return detection


STREAMING = [
    Case(
        "streaming",
        STREAMING_CHANNEL,
        _json({"type": "pattern_detected", "detection": _detection("AAPL", "Doji", 0.62, at(70))}),
        (_detected("AAPL", "doji", "1min", 0.62, at(70)),),
    ),
    Case(
        "streaming",
        STREAMING_CHANNEL,
        _json(
            {
                "type": "pattern_detected",
                "detection": _detection("NVDA", "Hammer", 0.81, at(71).astimezone(NEW_YORK)),
            }
        ),
        (_detected("NVDA", "hammer", "1min", 0.81, at(71)),),
    ),
    Case(
        "streaming",
        STREAMING_CHANNEL,
        _json({"type": "pattern_detected", "detection": _detection("TSLA", "ShootingStar", 0.74, at(72))}),
        (_detected("TSLA", "shooting_star", "1min", 0.74, at(72)),),
    ),
]


def _batch(*items: tuple[str, str, float, float]) -> tuple[bytes, tuple[Row, ...]]:
    detections = [{"detection": _detection(s, p, c, at(m), bar=False)} for s, p, c, m in items]
    return _json({"type": "patterns_batch", "patterns": detections, "count": len(detections)}), tuple(
        _detected(s, {"ShootingStar": "shooting_star"}.get(p, p.lower()), "1min", c, at(m))
        for s, p, c, m in items
    )


BATCH = [
    Case(
        "batch",
        BATCH_CHANNEL,
        *_batch(("MSFT", "Engulfing", 0.9, 80), ("META", "Harami", 0.67, 80), ("AMD", "Doji", 0.61, 80)),
    ),
    Case(
        "batch",
        BATCH_CHANNEL,
        *_batch(
            ("GOOGL", "Hammer", 0.83, 81),
            ("AMZN", "ShootingStar", 0.72, 81),
            ("TSLA", "Engulfing", 0.79, 81),
            ("NVDA", "Harami", 0.64, 81),
        ),
    ),
    Case("batch", BATCH_CHANNEL, *_batch(("AAPL", "Hammer", 0.88, 82), ("MSFT", "Doji", 0.6, 82))),
]

# -- deliberate dead letters -------------------------------------------------------------------------

DELIBERATE = [
    Case(
        "A",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "source": "test",
                "timestamp": epoch(90),
                "data": {
                    "symbol": "TEST",
                    "pattern": "Doji",
                    "confidence": 0.6,
                    "timestamp": epoch(90),
                    "source": "test",
                },
            }
        ),
        reason="unknown_timeframe",
        why="upstream's `test` tier names no bars; an operator maps it with TICKSTOCK_UPSTREAM_TIMEFRAMES=test=<timeframe>",
    ),
    Case(
        "E",
        PATTERNS_CHANNEL,
        _json(
            {
                "event_type": "pattern_detected",
                "symbol": "PERF01",
                "pattern": "Performance_Test",
                "confidence": 0.81,
                "current_price": 101.0,
                "price_change": 1.0,
                "timestamp": epoch(91),
                "indicators": {"rsi": 51.0},
                "source": "daily",
            }
        ),
        reason="unknown_pattern",
        why="upstream's own test pattern, in no catalog: replayable once an operator defines it",
    ),
]

CORPUS: list[Case] = [*A, *B, *C, *D, *E, *F, *G, *STREAMING, *BATCH, *DELIBERATE]

# -- hostile messages, on every channel --------------------------------------------------------------

_BROKEN: list[tuple[bytes, str]] = [
    (b"\xff\xfe not json \x00", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"type": "patterns_batch", "patterns": [{"detection": ', "not_json"),
    (_json({"event_type": "pattern_detected", "data": "AAPL"}), "invalid_field"),
    (
        _json(
            {
                "event_type": "pattern_detected",
                "data": {
                    "symbol": "AAPL",
                    "pattern": "Doji",
                    "confidence": "high",
                    "timestamp": epoch(95),
                    "source": "daily",
                },
            }
        ),
        "invalid_field",
    ),
    (
        _json(
            {
                "event_type": "pattern_detected",
                "data": {
                    "symbol": "AAPL",
                    "pattern": "Doji",
                    "confidence": 0.5,
                    "timestamp": epoch(95) * 1000,
                    "source": "daily",
                },
            }
        ),
        "invalid_timestamp",
    ),
    (_json({"type": "pattern_detected", "detection": "AAPL Doji"}), "invalid_field"),
    (
        _json(
            {
                "type": "pattern_detected",
                "detection": {
                    "symbol": ["AAPL"],
                    "pattern_type": "Doji",
                    "confidence": 0.5,
                    "timeframe": "1min",
                    "timestamp": z(at(95)),
                },
            }
        ),
        "invalid_symbol",
    ),
    (_json({"type": "patterns_batch", "patterns": "all of them", "count": 3}), "invalid_field"),
    (_json({"type": "patterns_batch", "patterns": [], "count": 0}), "invalid_field"),
    (
        _json({"type": "patterns_batch", "patterns": [{"detection": {"symbol": "X"}}] * 501, "count": 501}),
        "too_large",
    ),
    (
        _json(
            {
                "event_type": "backtest_progress",
                "source": "tickstockpl_backtest_engine",
                "timestamp": epoch(95),
                "job_id": "bt_1",
                "progress": 0.6,
            }
        ),
        "unknown_type",
    ),
]
HOSTILE: list[tuple[str, bytes, str]] = [
    (channel, raw, reason) for channel in CHANNELS for raw, reason in _BROKEN
]
