"""The demo feed: real OHLCV history replayed through TA-Lib's candlestick recognisers into the hub.

Data flow: :func:`load_bars` reads a CSV into :class:`Bars`; :func:`scan` runs all 61 TA-Lib ``CDL*``
functions over the whole history once and returns every :class:`Detection`; :class:`DemoFeed` walks
the files' bars round-robin and publishes each bar's detections to ``tickstock.ingest.<tf>.<token>``
as schema-v1 events, paced at about ``rate`` events per second. :func:`run` is the ``tickstock
demo-feed`` entry point. The shipped files and their licences are listed in ``demo_data/README.md``.

TA-Lib functions are causal (the output on bar ``i`` depends only on bars ``0..i``), so the one scan
per file gives the same hits as running the recognisers bar by bar; :func:`detect` does the latter
for one bar and is the reference the scan is tested against.

Pattern names come from ``store/reference_data/patterns.json``: the definition that lists a TA-Lib
function among its aliases names the event (``CDLENGULFING`` -> ``engulfing``); a function it does not
map keeps its TA-Lib name. A definition that reports both ways ("neutral" with ``bullish_<name>`` and
``bearish_<name>`` aliases) does not carry the sign in its name, so the event carries it, as the file
asks: ``indicators.talib`` is the raw TA-Lib output and ``data.direction`` is ``bullish``/``bearish``.

Confidence (:func:`confidence`)::

    strength = 1 for a TA-Lib output of +-100, 2 for +-200 (a confirmed hikkake)
    rv       = volume / mean volume of the 20 bars before it, clipped to [1/16, 16]; 1 when unknown
    confidence = clamp(0.5 + 0.2 * (strength - 1) + 0.15 * log2(rv), 0.3, 0.99)

so a plain signal on average volume is 0.5, on double volume 0.65, on half volume 0.35.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import math
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import talib
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from hub.broker import open_nats
from hub.events import PatternEvent, canonical_symbol, ingest_subject

__all__ = [
    "CANDLE_FUNCTIONS", "DEFAULT_RATE", "DEMO_DATA_DIR", "LIFETIMES", "Bars", "DemoFeed", "Detection",
    "PatternNames", "confidence", "default_files", "detect", "load_bars", "run", "scan",
]

log = logging.getLogger("tickstock.demo_feed")

CANDLE_FUNCTIONS: tuple[str, ...] = tuple(talib.get_function_groups()["Pattern Recognition"])
_FUNCTIONS = frozenset(CANDLE_FUNCTIONS)
DEMO_DATA_DIR = Path(__file__).with_name("demo_data")
SOURCE = "demo-feed"
DEFAULT_RATE = 5.0  # events per second
DEFAULT_PUBLISH_TIMEOUT_S = 2.0
DEFAULT_MAX_BACKOFF_S = 5.0
INITIAL_BACKOFF_S = 0.1
STOP_GRACE_S = 0.1
MAX_LAG_S = 1.0  # after a stall, catch up at most this much of the schedule in a burst
VOLUME_WINDOW = 20  # bars in the relative-volume average and the support/resistance range
RSI_PERIOD = 14
MIN_CONFIDENCE, MAX_CONFIDENCE = 0.3, 0.99
LIFETIMES: dict[str, timedelta] = {
    "1min": timedelta(minutes=30), "5min": timedelta(hours=2), "15min": timedelta(hours=6),
    "30min": timedelta(hours=12), "hourly": timedelta(days=1), "daily": timedelta(days=3),
    "weekly": timedelta(weeks=3), "monthly": timedelta(days=90),
}
_BAR_SECONDS = {"1min": 60, "5min": 300, "15min": 900, "30min": 1800, "hourly": 3600, "daily": 86400,
                "weekly": 7 * 86400, "monthly": 2_629_746}
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
_TIME_COLUMNS = ("datetime_utc", "date")  # a "date" column holds days; "datetime_utc" holds UTC times
_RUN_ID = re.compile(r"[A-Za-z0-9_]{1,40}")  # no "-" or ".": ids stay unambiguous
_PATTERNS_JSON = ("reference_data", "patterns.json")


# -- bars -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, slots=True)
class Bars:
    """One file's price history, oldest first. Price arrays are float64; ``timestamps`` is
    ``datetime64[s]`` in UTC (midnight for a ``dated`` file, whose bars are whole days)."""

    symbol: str
    timeframe: str
    file: str
    dated: bool
    timestamps: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.close)

    def bar_time(self, index: int) -> str:
        """Bar ``index``'s timestamp as in the file: ``2012-02-15``, or ``2011-03-01T09:01:00Z``."""
        stamp = self.timestamps[index]
        if self.dated:
            return str(stamp.astype("datetime64[D]"))
        return f"{np.datetime_as_string(stamp, unit='s')}Z"

    def head(self, count: int) -> Bars:
        """The first ``count`` bars (views, not copies)."""
        return replace(self, timestamps=self.timestamps[:count], open=self.open[:count],
                       high=self.high[:count], low=self.low[:count], close=self.close[:count],
                       volume=self.volume[:count])


def _parse_time(text: str, *, utc: bool) -> datetime:
    if utc:
        stamp = datetime.fromisoformat(text)
        return stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = datetime.strptime(text, "%m/%d/%Y").date()
    return datetime(day.year, day.month, day.day)


def _infer_timeframe(stamps: np.ndarray, where: str) -> str:
    if len(stamps) < 2:
        raise ValueError(f"{where}: one bar is not enough to infer the timeframe; pass timeframe=")
    step = float(np.median(np.diff(stamps).astype("int64")))
    # The longest bar that fits: two daily bars either side of a weekend are 3 days apart.
    fitting = [tf for tf, seconds in _BAR_SECONDS.items() if seconds <= step * 1.25]
    if not fitting:
        raise ValueError(f"{where}: bars {step:g} s apart match no timeframe; pass timeframe=")
    return fitting[-1]


def load_bars(path: str | Path, *, symbol: str | None = None, timeframe: str | None = None) -> Bars:
    """Read an OHLCV CSV file into :class:`Bars`.

    The layout is found from the header, case-insensitively and in any column order: a time column
    (``date``: ``YYYY-MM-DD`` or ``M/D/YYYY`` days; or ``datetime_utc``: ISO date-times, UTC unless an
    offset is given) and ``open high low close volume``; other columns are ignored. That covers the
    zipline (``date,open,...,dividend,split``), Quandl-style (``Date,Open,...,AdjVolume``) and
    NinjaTrader (``Datetime_UTC,...``) files in ``demo_data/``. ``symbol`` defaults to the file name up
    to the first ``_`` (``AAPL_daily_2012-2014.csv`` -> ``AAPL``); ``timeframe`` to the longest one no
    longer than 1.25 times the median bar spacing. Reads the whole file; no other I/O. Raises
    :class:`ValueError` naming the file (and line) for an unknown layout, an unparsable or non-finite
    value, a negative volume, timestamps that do not strictly increase, an empty file or an invalid
    symbol or timeframe.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        time_column = next((name for name in _TIME_COLUMNS if name in header), None)
        if time_column is None or not set(_PRICE_COLUMNS) <= set(header):
            raise ValueError(
                f"{path.name}: unknown column layout {header}; expected a date or datetime_utc column "
                f"and {', '.join(_PRICE_COLUMNS)}"
            )
        columns = [header.index(name) for name in (time_column, *_PRICE_COLUMNS)]
        stamps: list[datetime] = []
        values: list[list[float]] = []
        for row in reader:
            if not row:
                continue
            where = f"{path.name} line {reader.line_num}"
            try:
                fields = [row[i] for i in columns]
                stamps.append(_parse_time(fields[0].strip(), utc=time_column == "datetime_utc"))
                values.append([float(field) for field in fields[1:]])
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{where}: cannot read row {row!r} ({exc})") from None
            if not all(map(math.isfinite, values[-1])) or values[-1][4] < 0:
                raise ValueError(f"{where}: prices must be finite numbers and volume non-negative")
    if not values:
        raise ValueError(f"{path.name}: no bars")
    times = np.array(stamps, dtype="datetime64[s]")
    if len(times) > 1 and not bool(np.all(np.diff(times) > np.timedelta64(0, "s"))):
        raise ValueError(f"{path.name}: timestamps must strictly increase")
    try:
        name = canonical_symbol(symbol if symbol is not None else path.name.split("_", 1)[0])
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    timeframe = timeframe or _infer_timeframe(times, path.name)
    if timeframe not in LIFETIMES:
        raise ValueError(f"{path.name}: unknown timeframe {timeframe!r}")
    table = np.ascontiguousarray(np.array(values, dtype=np.float64).T)
    return Bars(name, timeframe, path.name, time_column == "date", times, *table)


def default_files() -> list[Path]:
    """The CSV files shipped in ``demo_data/``, sorted by name."""
    return sorted(DEMO_DATA_DIR.glob("*.csv"))


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
            log.warning("demo feed: no pattern names from %s (%s); publishing TA-Lib function names",
                        source, exc)
            return cls()
        return cls(names)

    def resolve(self, function: str, signal: int) -> tuple[str, str | None]:
        """``(pattern name, direction)`` for ``function`` firing with ``signal``; direction is
        ``None`` when the catalog does not know the function."""
        found = self._names.get(function)
        if found is None:
            return function, None
        if found.direction == "signed":
            return found.pattern, "bullish" if signal > 0 else "bearish"
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
    direction: str | None
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
        data: dict[str, Any] = {"bar_time": self.bar_time, "talib_function": self.function,
                                "signal": self.signal, "file": self.file}
        if self.direction is not None:
            data["direction"] = self.direction
        return PatternEvent.model_validate({
            "id": self.event_id(run_id, lap), "type": "pattern_detected", "symbol": self.symbol,
            "pattern": self.pattern, "timeframe": self.timeframe, "confidence": self.confidence,
            "detected_at": now, "expires_at": now + LIFETIMES[self.timeframe], "price": self.price,
            "volume": self.volume, "levels": {"support": self.support, "resistance": self.resistance},
            "indicators": indicators, "source": SOURCE, "data": data,
        })


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
        found.append(Detection(
            symbol=bars.symbol, timeframe=bars.timeframe, file=bars.file, index=i,
            bar_time=bars.bar_time(i), function=function, pattern=pattern, direction=direction,
            signal=signal, confidence=confidence(signal, rv), price=float(c[i]), volume=float(v[i]),
            relative_volume=rv, rsi=_optional(rsi[i], 2), support=float(support[i]),
            resistance=float(resistance[i]),
        ))
    return found


def detect(bars: Bars, *, upto: int, names: PatternNames | None = None) -> list[Detection]:
    """The detections on bar ``upto``, computed from bars ``0..upto`` only, as a live feed would.

    Equal to ``[d for d in scan(bars) if d.index == upto]`` (TA-Lib is causal), but costs a scan
    per call: use :func:`scan` to replay a file. Raises :class:`ValueError` if ``upto`` is not a bar.
    """
    if not 0 <= upto < len(bars):
        raise ValueError(f"upto={upto} is not a bar index of {bars.file} (0..{len(bars) - 1})")
    return [d for d in scan(bars.head(upto + 1), names=names) if d.index == upto]


# -- the feed ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Track:
    length: int
    hits: dict[int, tuple[Detection, ...]]


def _load_tracks(files: Sequence[Path]) -> list[_Track]:
    names = PatternNames.load()
    tracks = []
    for path in files:
        bars = load_bars(path)
        hits: dict[int, list[Detection]] = {}
        for detection in scan(bars, names=names):
            hits.setdefault(detection.index, []).append(detection)
        log.info("demo feed: %s: %s %s, %d bars, %d detections", bars.file, bars.symbol,
                 bars.timeframe, len(bars), sum(map(len, hits.values())))
        if hits:
            tracks.append(_Track(len(bars), {i: tuple(found) for i, found in hits.items()}))
    return tracks


def _replay(tracks: Sequence[_Track], *, loop: bool) -> Iterator[tuple[Detection, int]]:
    """``(detection, lap)`` in replay order: one bar of each file in turn. Every track has a hit."""
    cursors, laps = [0] * len(tracks), [0] * len(tracks)
    active = list(range(len(tracks)))
    while active:
        for k in list(active):
            for detection in tracks[k].hits.get(cursors[k], ()):
                yield detection, laps[k]
            cursors[k] += 1
            if cursors[k] == tracks[k].length:
                if loop:
                    cursors[k], laps[k] = 0, laps[k] + 1
                else:
                    active.remove(k)


class DemoFeed:
    """Publishes TA-Lib detections over replayed OHLCV files to the ingest subjects.

    An async context manager. Entering loads and scans ``files`` (default :func:`default_files`) in a
    worker thread, then starts one task that walks the files round-robin, one bar of each in turn,
    and publishes each bar's detections at about ``rate`` events per second. Each publish waits for
    the JetStream ack (``publish_timeout_s``) before the next, so nothing queues up. With ``loop`` a
    file starts over when it ends (event ids then carry the pass number); without, the task ends
    when every file has been replayed.

    Event ids are ``demo-<run_id>-<symbol>-<timeframe>-<bar index>-<function>`` and are sent as
    ``Nats-Msg-Id``, so a restart with the same ``run_id`` is deduplicated by JetStream (within the
    stream's duplicate window). ``run_id`` defaults to a fresh random one: 1-40 of ``A-Za-z0-9_``.

    A failed publish (no stream, timeout, connection closed) adds to :attr:`errors` and is retried,
    after 0.1 s doubling up to ``max_backoff_s``, until it succeeds; one warning is logged per outage
    and one line when publishing recovers. Exiting stops the task between two events, waiting for
    the publish in flight (at most ``publish_timeout_s``) before it cancels the task, and re-raises
    anything unexpected the task died of. The constructor does no I/O and raises :class:`ValueError`
    for a non-positive rate or timeout, an empty ``files`` or a malformed ``run_id``.
    """

    def __init__(
        self, js: JetStreamContext, *, rate: float = DEFAULT_RATE, files: Sequence[Path] | None = None,
        loop: bool = True, run_id: str | None = None, publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        for label, value in (("rate", rate), ("publish_timeout_s", publish_timeout_s),
                             ("max_backoff_s", max_backoff_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number, not {value!r}")
        if files is not None and not files:
            raise ValueError("files is empty")
        if run_id is not None and not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r} must be 1-40 characters of A-Z a-z 0-9 _")
        self.run_id = run_id or secrets.token_hex(4)
        self._js = js
        self._rate = rate
        self._files = [Path(f) for f in files] if files is not None else None
        self._loop = loop
        self._publish_timeout_s = publish_timeout_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._published = self._duplicates = self._errors = 0
        self._outage = 0  # failed attempts since the last successful publish
        self._stop = asyncio.Event()

    @property
    def published(self) -> int:
        """Events JetStream acknowledged as new."""
        return self._published

    @property
    def duplicates(self) -> int:
        """Events JetStream acknowledged as duplicates of an id it already held (not stored again)."""
        return self._duplicates

    @property
    def errors(self) -> int:
        """Failed publish attempts (each is retried)."""
        return self._errors

    async def __aenter__(self) -> DemoFeed:
        if self._task is not None:
            raise RuntimeError("this DemoFeed is already running")
        self._stop = asyncio.Event()
        files = self._files if self._files is not None else default_files()
        tracks = await asyncio.to_thread(_load_tracks, files)
        log.info("demo feed: run %s, %d files with detections, %.3g events/s, loop=%s",
                 self.run_id, len(tracks), self._rate, self._loop)
        self._task = asyncio.create_task(self._run(tracks), name="tickstock-demo-feed")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Stop between events, so the publish in flight is acknowledged (and counted) or fails.
        self._stop.set()
        await asyncio.wait([task], timeout=self._publish_timeout_s + STOP_GRACE_S)
        while not task.done():
            # Python 3.11's wait_for (in nats-py's request) can swallow a cancellation that races a
            # reply (gh-86296), so cancel until the task is gone; _stop ends it at the next event.
            task.cancel()
            await asyncio.wait([task], timeout=STOP_GRACE_S)
        log.info("demo feed: stopped; %d published, %d duplicates, %d errors",
                 self._published, self._duplicates, self._errors)
        if not task.cancelled():
            task.result()  # re-raises what the task died of, if anything

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: for ever) for the feed to finish by itself (all
        files replayed, with ``loop=False``). Returns whether it has. Raises :class:`RuntimeError`
        if the feed is not running."""
        if self._task is None:
            raise RuntimeError("this DemoFeed is not running")
        done, _ = await asyncio.wait([self._task], timeout=timeout)
        return bool(done)

    async def _run(self, tracks: Sequence[_Track]) -> None:
        clock = asyncio.get_running_loop()
        interval = 1 / self._rate
        due = clock.time()
        try:
            for detection, lap in _replay(tracks, loop=self._loop):
                if self._stop.is_set():
                    return
                if (delay := due - clock.time()) > 0:
                    await self._pause(delay)
                await self._publish(detection, lap)
                due = max(due + interval, clock.time() - MAX_LAG_S)
        except Exception:
            log.exception("demo feed: stopped by an unexpected error")
            raise
        log.info("demo feed: every file replayed; %d published", self._published)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the feed is asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _publish(self, detection: Detection, lap: int) -> None:
        attempt = 0
        while not self._stop.is_set():
            event = detection.to_event(run_id=self.run_id, now=datetime.now(UTC), lap=lap)
            try:
                ack = await self._js.publish(
                    ingest_subject(event.timeframe, event.symbol), event.to_json_bytes(),
                    timeout=self._publish_timeout_s, headers={"Nats-Msg-Id": event.id},
                )
            except (NatsError, OSError) as exc:  # OSError covers TimeoutError
                self._errors += 1
                if not self._outage:
                    log.warning("demo feed: publishing failed (%s); retrying with back-off",
                                str(exc) or type(exc).__name__)
                self._outage += 1
                await self._pause(min(self._max_backoff_s, INITIAL_BACKOFF_S * 2 ** min(attempt, 16)))
                attempt += 1
                continue
            if self._outage:
                log.info("demo feed: publishing again after %d failed attempts", self._outage)
                self._outage = 0
            if ack.duplicate:
                self._duplicates += 1
            else:
                self._published += 1
            return


async def run(
    nats_url: str, *, rate: float = DEFAULT_RATE, duration_s: float | None = None, loop: bool = True,
    files: Sequence[Path] | None = None, run_id: str | None = None,
) -> int:
    """Connect to ``nats_url``, run a :class:`DemoFeed` and return how many events it published.

    Runs for ``duration_s`` seconds, or until every file is replayed (``loop=False``), or, with
    neither, until cancelled; cancellation stops the feed, drains the connection and propagates.
    Raises :class:`hub.broker.BrokerError` (a nats-py error) if NATS cannot be reached, and
    :class:`ValueError` for a negative duration or the arguments :class:`DemoFeed` rejects.
    """
    if duration_s is not None and not duration_s >= 0:
        raise ValueError(f"duration_s must be a non-negative number of seconds, not {duration_s!r}")
    async with open_nats(nats_url, name="tickstock-demo-feed") as client:
        async with DemoFeed(client.jetstream(), rate=rate, files=files, loop=loop, run_id=run_id) as feed:
            await feed.wait(duration_s)
        return feed.published
