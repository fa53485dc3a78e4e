"""TA-Lib's candlestick recognisers over :class:`hub.ohlcv.Bars`: detections, their confidence, and
the hub's names for them.

TA-Lib functions are causal (the output on bar ``i`` depends only on bars ``0..i``), so one
:func:`scan` per file gives the same hits as running the recognisers bar by bar; :func:`detect` does
the latter for one bar and is the reference the scan is tested against.

Pattern names come from ``store/reference_data/patterns.json``: the definition that lists a TA-Lib
function among its aliases names the event (``CDLENGULFING`` -> ``engulfing``); a function it does not
map keeps its TA-Lib name. Every event carries its direction in ``data.direction`` (``bullish``,
``bearish`` or ``neutral``): the catalog's direction for the definition (``hammer`` is bullish,
``doji`` neutral); the sign of TA-Lib's output (``indicators.talib``) for a definition that reports
both ways ("neutral" with ``bullish_<name>`` and ``bearish_<name>`` aliases) and for a function the
catalog does not map.

Confidence (:func:`confidence`)::

    strength = 1 for a TA-Lib output of +-100, 2 for +-200 (a confirmed hikkake)
    rv       = volume / mean volume of the 20 bars before it, clipped to [1/16, 16]; 1 when unknown
    confidence = clamp(0.5 + 0.2 * (strength - 1) + 0.15 * log2(rv), 0.3, 0.99)

so a plain signal on average volume is 0.5, on double volume 0.65, on half volume 0.35.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import talib

from hub.model import PatternEvent
from hub.ohlcv import Bars

__all__ = [
    "CANDLE_FUNCTIONS",
    "LIFETIMES",
    "WARMUP_BARS",
    "Detection",
    "PatternNames",
    "confidence",
    "detect",
    "scan",
]

log = logging.getLogger("tickstock.candles")

CANDLE_FUNCTIONS: tuple[str, ...] = tuple(talib.get_function_groups()["Pattern Recognition"])  # type: ignore[no-untyped-call]
_FUNCTIONS = frozenset(CANDLE_FUNCTIONS)
SOURCE = "demo-feed"
VOLUME_WINDOW = 20  # bars in the relative-volume average and the support/resistance range
RSI_PERIOD = 14
# The first bar with every indicator: the 20-bar volume average (and so the relative volume the
# confidence rests on) needs 20 bars before it, RSI(14) needs 14.
WARMUP_BARS = max(VOLUME_WINDOW, RSI_PERIOD)
MIN_CONFIDENCE, MAX_CONFIDENCE = 0.3, 0.99
LIFETIMES: dict[str, timedelta] = {
    "1min": timedelta(minutes=30),
    "5min": timedelta(hours=2),
    "15min": timedelta(hours=6),
    "30min": timedelta(hours=12),
    "hourly": timedelta(days=1),
    "daily": timedelta(days=3),
    "weekly": timedelta(weeks=3),
    "monthly": timedelta(days=90),
}
_PATTERNS_JSON = ("reference_data", "patterns.json")


# -- pattern names ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Name:
    pattern: str
    direction: str  # bullish, bearish, neutral, or "signed": the sign of the TA-Lib output decides


class PatternNames:
    """What each TA-Lib function is called in the pattern catalog, and which way it points."""

    def __init__(self, names: dict[str, _Name] | None = None) -> None:
        self._names = dict(names or {})

    def __len__(self) -> int:
        return len(self._names)

    @classmethod
    def load(cls, path: Path | None = None) -> PatternNames:
        """Read ``patterns.json`` (default: ``store/reference_data/patterns.json``).

        A definition maps each ``CDL*`` alias it lists. A missing or unreadable file gives an empty
        mapping (every event keeps its TA-Lib name) and one warning; it never raises.
        """
        source = path or resources.files("store").joinpath(*_PATTERNS_JSON)
        try:
            entries = json.loads(source.read_text(encoding="utf-8"))["patterns"]
            names: dict[str, _Name] = {}
            for entry in entries:
                name, direction = entry["name"], entry.get("direction", "neutral")
                aliases = entry.get("aliases", [])
                if direction == "neutral" and f"bullish_{name}" in aliases and f"bearish_{name}" in aliases:
                    direction = "signed"
                names.update({a.upper(): _Name(name, direction) for a in aliases if a.upper() in _FUNCTIONS})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "demo feed: no pattern names from %s (%s); publishing TA-Lib function names", source, exc
            )
            return cls()
        return cls(names)

    def resolve(self, function: str, signal: int) -> tuple[str, str]:
        """``(pattern name, direction)`` for ``function`` firing with ``signal``: the catalog's name
        and direction; the sign of ``signal`` decides for a definition that reports both ways and for
        a function the catalog does not know (which keeps its TA-Lib name)."""
        found = self._names.get(function)
        if found is None or found.direction == "signed":
            pattern = function if found is None else found.pattern
            return pattern, "bullish" if signal > 0 else "bearish" if signal < 0 else "neutral"
        return found.pattern, found.direction


# -- detections -------------------------------------------------------------------------------------


def confidence(signal: int, relative_volume: float | None) -> float:
    """The event confidence for a TA-Lib ``signal`` on a bar with ``relative_volume`` (``None``:
    unknown); the formula is in the module docstring. Always within [0.3, 0.99]."""
    strength = 2 if abs(signal) >= 200 else 1
    rv = 1.0 if relative_volume is None else min(max(relative_volume, 1 / 16), 16.0)
    score = 0.5 + 0.2 * (strength - 1) + 0.15 * math.log2(rv)
    return round(min(max(score, MIN_CONFIDENCE), MAX_CONFIDENCE), 3)


@dataclass(frozen=True, slots=True)
class Detection:
    """One TA-Lib function firing on one bar, with what the event needs to describe it."""

    symbol: str
    timeframe: str
    file: str
    index: int
    bar_time: str
    function: str
    pattern: str
    direction: str
    signal: int
    confidence: float
    price: float
    volume: float
    relative_volume: float | None
    rsi: float | None
    support: float
    resistance: float

    def event_id(self, run_id: str, lap: int = 0) -> str:
        """``demo-<run_id>-<symbol>-<timeframe>-<bar index>-<function>``; from the second pass over a
        looping file on, the run id gains the pass number (``<run_id>.<lap>``), so passes differ."""
        run = run_id if lap == 0 else f"{run_id}.{lap}"
        return f"demo-{run}-{self.symbol}-{self.timeframe}-{self.index}-{self.function}"

    def to_event(self, *, run_id: str, now: datetime, lap: int = 0) -> PatternEvent:
        """The v1 ``pattern_detected`` event, detected at ``now`` (aware) and expiring after the
        timeframe's lifetime (:data:`LIFETIMES`). Raises pydantic's ``ValidationError`` if invalid."""
        indicators = {"talib": float(self.signal)}
        if self.relative_volume is not None:
            indicators["relative_volume"] = self.relative_volume
        if self.rsi is not None:
            indicators["rsi"] = self.rsi
        data: dict[str, Any] = {
            "bar_time": self.bar_time,
            "talib_function": self.function,
            "signal": self.signal,
            "file": self.file,
            "direction": self.direction,
        }
        return PatternEvent.model_validate(
            {
                "id": self.event_id(run_id, lap),
                "type": "pattern_detected",
                "symbol": self.symbol,
                "pattern": self.pattern,
                "timeframe": self.timeframe,
                "confidence": self.confidence,
                "detected_at": now,
                "expires_at": now + LIFETIMES[self.timeframe],
                "price": self.price,
                "volume": self.volume,
                "levels": {"support": self.support, "resistance": self.resistance},
                "indicators": indicators,
                "source": SOURCE,
                "data": data,
            }
        )


def _rolling(values: np.ndarray, window: int, func: Any, accumulate: Any) -> np.ndarray:
    """``func`` over the last ``window`` values, or over all of them before there are that many."""
    out = np.asarray(func(values, timeperiod=window), dtype=np.float64)
    head = min(window - 1, len(values))
    out[:head] = accumulate(values[:head])
    return out


def _optional(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def scan(bars: Bars, *, names: PatternNames | None = None) -> list[Detection]:
    """Every detection in ``bars``, by bar then TA-Lib function name.

    Runs the 61 ``CDL*`` functions, ``RSI(14)``, the 20-bar volume average and the 20-bar low/high
    once over the whole history (CPU only: a few milliseconds per thousand bars). ``names`` defaults
    to :meth:`PatternNames.load`.
    """
    names = PatternNames.load() if names is None else names
    o, h, lo, c, v = bars.open, bars.high, bars.low, bars.close, bars.volume
    signals = np.vstack([getattr(talib, fn)(o, h, lo, c) for fn in CANDLE_FUNCTIONS])
    rsi = talib.RSI(c, timeperiod=RSI_PERIOD)
    average = np.full(len(bars), np.nan)
    average[1:] = talib.SMA(v, timeperiod=VOLUME_WINDOW)[:-1]  # the 20 bars *before* each bar
    relative = np.full(len(bars), np.nan)
    np.divide(v, average, out=relative, where=average > 0)
    support = _rolling(lo, VOLUME_WINDOW, talib.MIN, np.minimum.accumulate)
    resistance = _rolling(h, VOLUME_WINDOW, talib.MAX, np.maximum.accumulate)
    found = []
    for index, fn_index in zip(*np.nonzero(signals.T), strict=True):
        i, function = int(index), CANDLE_FUNCTIONS[fn_index]
        signal = int(signals[fn_index, i])
        pattern, direction = names.resolve(function, signal)
        rv = _optional(relative[i], 3)
        found.append(
            Detection(
                symbol=bars.symbol,
                timeframe=bars.timeframe,
                file=bars.file,
                index=i,
                bar_time=bars.bar_time(i),
                function=function,
                pattern=pattern,
                direction=direction,
                signal=signal,
                confidence=confidence(signal, rv),
                price=float(c[i]),
                volume=float(v[i]),
                relative_volume=rv,
                rsi=_optional(rsi[i], 2),
                support=float(support[i]),
                resistance=float(resistance[i]),
            )
        )
    return found


def detect(bars: Bars, *, upto: int, names: PatternNames | None = None) -> list[Detection]:
    """The detections on bar ``upto``, computed from bars ``0..upto`` only, as a live feed would.

    Equal to ``[d for d in scan(bars) if d.index == upto]`` (TA-Lib is causal), but costs a scan
    per call: use :func:`scan` to replay a file. Raises :class:`ValueError` if ``upto`` is not a bar.
    """
    if not 0 <= upto < len(bars):
        raise ValueError(f"upto={upto} is not a bar index of {bars.file} (0..{len(bars) - 1})")
    return [d for d in scan(bars.head(upto + 1), names=names) if d.index == upto]
