"""Upstream timeframe spellings and detection tiers, mapped to v1 timeframes: one table, the operator's to change.

TickStock's enveloped messages carry no timeframe; the detection tier travels as ``tier`` or ``source``
(``daily``, ``intraday``, ``combo``, ``fallback`` …), and flat ones may spell a timeframe ``1D``, ``Daily``,
``1d`` or ``5m``. :class:`TimeframeTable` maps both to the v1 timeframe of the bars a detection was made on
(``docs/upstream.md`` has the table and why each tier means what it does).

Lookup: a spelling that starts with a digit or is one letter (``1m``, ``1M``, ``5m``, ``D``) must match a
key exactly, because case can change its meaning; a word (``Daily``, ``DAILY``, ``daily_intraday``,
``DailyIntraday``) matches case-insensitively, ignoring ``_``, ``-`` and spaces. A spelling that is not in
the table has no timeframe, unless the table has a ``default``: nothing is ever assumed silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from hub.model import TIMEFRAMES

__all__ = ["DEFAULT_TIMEFRAMES", "TimeframeTable", "parse_table"]

DEFAULT_TIMEFRAMES: Mapping[str, str] = {
    **{tf: tf for tf in TIMEFRAMES},
    # bar codes: case matters ("1m" is a minute; "1M" is left out, some write it for a month)
    "1m": "1min",
    "5m": "5min",
    "15m": "15min",
    "30m": "30min",
    "1h": "hourly",
    "1H": "hourly",
    "60m": "hourly",
    "60min": "hourly",
    "1d": "daily",
    "1D": "daily",
    "D": "daily",
    "1w": "weekly",
    "1W": "weekly",
    "W": "weekly",
    "1mo": "monthly",
    # words, any case
    "minute": "1min",
    "hour": "hourly",
    "day": "daily",
    "week": "weekly",
    "month": "monthly",
    # TickStock's detection tiers
    "intraday": "1min",  # TickStock detects intraday patterns on its 1-minute bars (ohlcv_1min)
    "fallback": "1min",  # the app's own tick-level fallback detector; 1min is the finest v1 timeframe
    "daily_intraday": "daily",  # a daily setup confirmed by an intraday signal: the pattern is daily
    "combo": "daily",  # the same combo tier under its other name
}
"""Spelling or tier -> v1 timeframe. ``test`` (upstream's test traffic) is deliberately absent."""

_WORD_IGNORED = re.compile(r"[\s_\-]+")
_ENTRY = re.compile(r"\s*([^=,\s][^=,]*?)\s*=\s*([^=,]*?)\s*(?:,|$)")


def _is_code(spelling: str) -> bool:
    return len(spelling) <= 1 or spelling[0].isdigit()


def _word_key(spelling: str) -> str:
    return _WORD_IGNORED.sub("", spelling).casefold()


class TimeframeTable:
    """The spelling -> v1 timeframe table, plus an optional ``default`` for a message without any.

    Immutable. Construction raises :class:`ValueError` for a value that is not a v1 timeframe or a blank
    spelling; it does no I/O.
    """

    def __init__(
        self, entries: Mapping[str, str] = DEFAULT_TIMEFRAMES, *, default: str | None = None
    ) -> None:
        self._codes: dict[str, str] = {}
        self._words: dict[str, str] = {}
        for spelling, timeframe in entries.items():
            if timeframe not in TIMEFRAMES:
                raise ValueError(f"{spelling!r} maps to {timeframe!r}, not one of {' '.join(TIMEFRAMES)}")
            if not spelling.strip():
                raise ValueError("a timeframe spelling is blank")
            if _is_code(spelling):
                self._codes[spelling] = timeframe
            else:
                self._words[_word_key(spelling)] = timeframe
        if default is not None and default not in TIMEFRAMES:
            raise ValueError(f"default timeframe {default!r} is not one of {' '.join(TIMEFRAMES)}")
        self.entries: Mapping[str, str] = dict(entries)
        self.default = default

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimeframeTable):
            return NotImplemented
        return (self._codes, self._words, self.default) == (other._codes, other._words, other.default)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking mappings inside: compare, do not hash

    def lookup(self, spelling: object) -> str | None:
        """The v1 timeframe ``spelling`` names, or None (not a string, or not in the table)."""
        if not isinstance(spelling, str) or not spelling:
            return None
        if _is_code(spelling):
            return self._codes.get(spelling)
        return self._words.get(_word_key(spelling))

    def with_overrides(
        self, overrides: Mapping[str, str | None], *, default: str | None = None
    ) -> TimeframeTable:
        """A copy with ``overrides`` applied: a spelling mapped to a timeframe is added or replaced, one
        mapped to None (or ``""``) is removed (for a word, every spelling with its key). Raises
        :class:`ValueError` like the constructor."""
        entries = dict(self.entries)
        for spelling, timeframe in overrides.items():
            for key in [k for k in entries if _same(k, spelling)]:
                del entries[key]
            if timeframe:
                entries[spelling] = timeframe
        return TimeframeTable(entries, default=default)


def _same(a: str, b: str) -> bool:
    if _is_code(a) or _is_code(b):
        return a == b
    return _word_key(a) == _word_key(b)


def parse_table(text: str) -> dict[str, str | None]:
    """An operator's table: a JSON object (``{"test": "daily", "combo": null}``) or ``k=v`` pairs
    separated by commas (``test=daily,combo=``). An empty value removes the spelling. Raises
    :class:`ValueError` naming what it cannot read (the values are checked by :class:`TimeframeTable`)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) or v is None for v in table.values()):
            raise ValueError("a JSON table maps spellings to timeframe names (or null to remove one)")
        return {str(k): (v or None) for k, v in table.items()}
    pairs: dict[str, str | None] = {}
    position = 0
    while position < len(text):
        match = _ENTRY.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"expected spelling=timeframe at {text[position : position + 20]!r}")
        pairs[match.group(1)] = match.group(2) or None
        position = match.end()
    return pairs
