"""OHLCV price history from CSV files: the bars the demo feed replays.

:func:`load_bars` finds the columns by header name in any order (``date`` holding days or
``datetime_utc`` holding UTC times, then open, high, low, close, volume), so every file shipped in
``demo_data/`` loads; a file of another layout, or with a bad row, is a :class:`ValueError` naming
the file and line.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from hub.model import TIMEFRAMES, canonical_symbol

__all__ = ["DEMO_DATA_DIR", "Bars", "default_files", "load_bars"]


DEMO_DATA_DIR = Path(__file__).with_name("demo_data")
_BAR_SECONDS = {
    "1min": 60,
    "5min": 300,
    "15min": 900,
    "30min": 1800,
    "hourly": 3600,
    "daily": 86400,
    "weekly": 7 * 86400,
    "monthly": 2_629_746,
}
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
_TIME_COLUMNS = ("datetime_utc", "date")  # a "date" column holds days; "datetime_utc" holds UTC times


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
        return replace(
            self,
            timestamps=self.timestamps[:count],
            open=self.open[:count],
            high=self.high[:count],
            low=self.low[:count],
            close=self.close[:count],
            volume=self.volume[:count],
        )


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
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"{path.name}: unknown timeframe {timeframe!r}")
    table = np.ascontiguousarray(np.array(values, dtype=np.float64).T)
    return Bars(name, timeframe, path.name, time_column == "date", times, *table)


def default_files() -> list[Path]:
    """The CSV files shipped in ``demo_data/``, sorted by name."""
    return sorted(DEMO_DATA_DIR.glob("*.csv"))
