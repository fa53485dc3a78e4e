"""Reading the reference files in ``store/reference_data/`` (sources and licences are in its README).

:func:`read_reference_files` parses them into a :class:`ReferenceData` without touching the database;
:mod:`store.reference` writes it. What the files say, and how it is read:

* **Symbols** are ACT symbols (``BRK.B``, ``AAC.U``, ``ACHR.W``, ``ABR$D``), the form the NYSE and
  "other listed" files use. Nasdaq symbols are already in that form. Names come from ``Security Name``,
  or from the S&P 500 file for its members, with runs of whitespace collapsed. The S&P 500 file also
  supplies the GICS sector and sub-industry. An index member that is in neither listing is still added,
  under the index file's name, and a log line says so.
* **Type**: an ETF flag gives ``etf``. Otherwise the ACT suffix decides (``$`` -> ``preferred``, ``.W``
  -> ``warrant``, ``.U`` -> ``unit``, ``.R`` -> ``right``). Failing that, the security name does
  (warrant, right, preferred, note or unit, else ``stock``). Only the part after a Nasdaq-style
  "Issuer - " counts, and only the words before a clause such as "each", "representing" or
  "exercisable", because those words say what the security is, not what it holds: an ADS "representing
  the right to receive shares" is a stock. Limited-partnership and trust "units" are equity, so they
  are ``stock``. Preferred stock named as such (Nasdaq has no ``$`` suffix) is ``preferred``.
* **Universes**: ``sp500``, ``dow30``, ``nasdaq100``, ``nasdaq``, ``nyse`` (kind ``index``), ``etfs``
  (kind ``etf``), and one ``sector-<gics-sector>`` (kind ``sector``) per S&P 500 sector. No source file
  has index weights, so ``weight`` stays NULL.
* **Pattern definitions** come from ``patterns.json`` (its ``about`` string gives the naming scheme).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from typing import Any

from store.definitions import match_key

__all__ = ["FIXED_KEYS", "Listing", "ReferenceData", "ReferenceDataError", "read_reference_files"]

log = logging.getLogger("tickstock.store.reference")

# These mirror the CHECK constraints in migrations/0001_reference.sql (and hub.model.TIMEFRAMES).
_TIMEFRAMES = ("1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly")
_SYMBOL = re.compile(r"[A-Z0-9.$\-/^=]{1,15}")
_UNIVERSE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
_PATTERN_NAME = re.compile(r"[a-z0-9_]{1,64}")
_CATEGORIES = frozenset({"candlestick", "chart", "indicator"})
_DIRECTIONS = frozenset({"bullish", "bearish", "neutral"})

_EXCHANGES = {"N": "NYSE", "P": "NYSE ARCA", "Z": "CBOE BZX", "A": "NYSE AMERICAN"}
_SUFFIX_TYPES = {"W": "warrant", "U": "unit", "R": "right"}
_CLAUSE = re.compile(
    r"\b(?:each|representing|consisting|entitling|exercisable|to receive|to purchase)\b", re.IGNORECASE
)
_WARRANT = re.compile(r"\bwarrants?\b", re.IGNORECASE)
_RIGHT = re.compile(r"\brights?\b", re.IGNORECASE)
_PREFERRED = re.compile(
    r"\b(?:preferred|preference) (?:stock|shares?|securities|units)\b|- preferred\b", re.IGNORECASE
)
_NOT_PREFERRED = re.compile(r"\bamerican depositary\b|\bADRs?\b|\bcommon\b", re.IGNORECASE)
_NOTE = re.compile(r"\b(?:notes|debentures)\b", re.IGNORECASE)
_UNIT = re.compile(r"\bunits?\b", re.IGNORECASE)
_EQUITY_UNIT = re.compile(
    r"\b(?:common|depositary|partnership|class [a-z]|beneficial)\s+units?\b"
    r"|\bunits? of (?:beneficial interest|limited partnership)\b|\bL\.?P\.?\s+units\b",
    re.IGNORECASE,
)

_SP500, _DOW30, _NDX = "sp500_constituents.csv", "dow30.csv", "nasdaq100.csv"
_NASDAQ, _NYSE, _OTHER = "nasdaq_listed.csv", "nyse_listed.csv", "other_listed.csv"
_PATTERNS = "patterns.json"
# As-of dates of the shipped files (store/reference_data/README.md); update them with the files.
_AS_OF = {
    _SP500: "2026-08-08",
    _DOW30: "2026-04-01",
    _NDX: "2026-04-01",
    _NASDAQ: "2026-07-31",
    _NYSE: "2026-08-21",
    _OTHER: "2026-08-22",
}
_FIXED_UNIVERSES = (
    (
        "sp500",
        "S&P 500",
        "index",
        f"S&P 500 constituents from {_SP500} (datasets/s-and-p-500-companies), as of {_AS_OF[_SP500]}.",
    ),
    (
        "dow30",
        "Dow Jones Industrial Average",
        "index",
        f"Dow 30 constituents from {_DOW30} (yfiua/index-constituents), as of {_AS_OF[_DOW30]}.",
    ),
    (
        "nasdaq100",
        "Nasdaq-100",
        "index",
        f"Nasdaq-100 constituents from {_NDX} (yfiua/index-constituents), as of {_AS_OF[_NDX]}.",
    ),
    (
        "nasdaq",
        "All Nasdaq-listed",
        "index",
        f"Every Nasdaq-listed security except test issues, from {_NASDAQ} (Nasdaq Trader), as of "
        + _AS_OF[_NASDAQ]
        + ".",
    ),
    (
        "nyse",
        "All NYSE-listed",
        "index",
        f"Every NYSE-listed security (not NYSE Arca or NYSE American), from {_NYSE}, as of {_AS_OF[_NYSE]}.",
    ),
    (
        "etfs",
        "All ETFs",
        "etf",
        f"Every security flagged as an ETF in {_NASDAQ} ({_AS_OF[_NASDAQ]}) and {_OTHER} ({_AS_OF[_OTHER]}).",
    ),
)
FIXED_KEYS = [key for key, *_ in _FIXED_UNIVERSES]


class ReferenceDataError(ValueError):
    """A reference file is malformed, or loading it would take over a universe that is not ours."""


@dataclass
class Listing:
    symbol: str
    name: str
    exchange: str | None
    type: str
    sector: str | None = None
    industry: str | None = None


@dataclass
class ReferenceData:
    """Everything the files hold, ready to write."""

    symbols: dict[str, Listing] = field(default_factory=dict)
    universes: list[tuple[str, str, str, str]] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    patterns: list[tuple[Any, ...]] = field(default_factory=list)
    unlisted: dict[str, list[str]] = field(default_factory=dict)  # index file -> members in no listing


def read_reference_files(root: Traversable) -> ReferenceData:
    """Parse every reference file under ``root``; raises :class:`ReferenceDataError` or ``OSError``."""
    data = ReferenceData()
    _read_listings(root, data)
    sectors = _read_sp500(root, data)
    for file, key in ((_DOW30, "dow30"), (_NDX, "nasdaq100")):
        data.members[key] = [
            _index_member(data, where, row["Symbol"], row["Name"])
            for where, row in _rows(root, file, ("Symbol", "Name"))
        ]
    data.members["etfs"] = [s.symbol for s in data.symbols.values() if s.type == "etf"]
    data.universes = [*_FIXED_UNIVERSES, *sectors]
    for file, symbols in data.unlisted.items():
        log.warning(
            "%s: %d member(s) in no listing file, added under the index file's name: %s",
            file,
            len(symbols),
            ", ".join(symbols),
        )
    data.patterns = _read_patterns(root)
    return data


def _rows(root: Traversable, file: str, columns: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``("file:line", row)``, values stripped; raises ReferenceDataError if a column is missing."""
    with (root / file).open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ReferenceDataError(f"{file}: missing column(s) {', '.join(missing)}")
        for row in reader:
            yield f"{file}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k}


def _symbol(value: str, where: str) -> str:
    if not _SYMBOL.fullmatch(value):
        raise ReferenceDataError(f"{where}: {value!r} is not an ACT symbol (1-15 of A-Z 0-9 . $ - / ^ =)")
    return value


def _name(value: str) -> str:
    return " ".join(value.split())


def _add(data: ReferenceData, listing: Listing, where: str) -> None:
    if listing.symbol in data.symbols:
        raise ReferenceDataError(f"{where}: {listing.symbol} is listed twice")
    data.symbols[listing.symbol] = listing


def _read_listings(root: Traversable, data: ReferenceData) -> None:
    nasdaq = data.members.setdefault("nasdaq", [])
    for where, row in _rows(root, _NASDAQ, ("Symbol", "Security Name", "Test Issue", "ETF")):
        if row["Test Issue"] == "Y":
            continue
        symbol, name = _symbol(row["Symbol"], where), _name(row["Security Name"])
        _add(data, Listing(symbol, name, "NASDAQ", _security_type(symbol, name, row["ETF"] == "Y")), where)
        nasdaq.append(symbol)
    for where, row in _rows(root, _OTHER, ("ACT Symbol", "Security Name", "Exchange", "ETF", "Test Issue")):
        if row["Test Issue"] == "Y":
            continue
        if row["Exchange"] not in _EXCHANGES:
            raise ReferenceDataError(f"{where}: unknown exchange code {row['Exchange']!r}")
        symbol, name = _symbol(row["ACT Symbol"], where), _name(row["Security Name"])
        type_ = _security_type(symbol, name, row["ETF"] == "Y")
        _add(data, Listing(symbol, name, _EXCHANGES[row["Exchange"]], type_), where)
    nyse = data.members.setdefault("nyse", [])
    for where, row in _rows(root, _NYSE, ("ACT Symbol", "Company Name")):
        symbol = _symbol(row["ACT Symbol"], where)
        if symbol not in data.symbols:  # its names are cut at the first hyphen: only a fallback
            name = _name(row["Company Name"])
            _add(data, Listing(symbol, name, "NYSE", _security_type(symbol, name, False)), where)
        nyse.append(symbol)


def _read_sp500(root: Traversable, data: ReferenceData) -> list[tuple[str, str, str, str]]:
    """Add the S&P 500 members, names and sectors to ``data``; return the sector universes."""
    members = data.members.setdefault("sp500", [])
    sectors: dict[str, str] = {}
    for where, row in _rows(root, _SP500, ("Symbol", "Security", "GICS Sector", "GICS Sub-Industry")):
        listing = data.symbols[_index_member(data, where, row["Symbol"], row["Security"])]
        sector = row["GICS Sector"]
        key = "sector-" + re.sub(r"[^a-z0-9]+", "-", sector.lower()).strip("-")
        if not _UNIVERSE_KEY.fullmatch(key) or key == "sector-":
            raise ReferenceDataError(f"{where}: GICS sector {sector!r} does not make a universe key")
        listing.name, listing.sector = _name(row["Security"]), sector
        listing.industry = row["GICS Sub-Industry"] or None
        sectors[key] = sector
        members.append(listing.symbol)
        data.members.setdefault(key, []).append(listing.symbol)
    source = f"from {_SP500}, as of {_AS_OF[_SP500]}"
    return [
        (key, f"S&P 500 {sector}", "sector", f"S&P 500 members in the GICS sector {sector}, {source}.")
        for key, sector in sorted(sectors.items())
    ]


def _index_member(data: ReferenceData, where: str, value: str, name: str) -> str:
    symbol = _symbol(value, where)
    if symbol not in data.symbols:
        data.unlisted.setdefault(where.partition(":")[0], []).append(symbol)
        data.symbols[symbol] = Listing(symbol, _name(name), None, "stock")
    return symbol


def _security_type(symbol: str, name: str, etf: bool) -> str:
    if etf:
        return "etf"
    if "$" in symbol:
        return "preferred"
    _, dot, suffix = symbol.rpartition(".")
    if dot and suffix in _SUFFIX_TYPES:
        return _SUFFIX_TYPES[suffix]
    head = _CLAUSE.split(name.rpartition(" - ")[2], maxsplit=1)[0]  # Nasdaq: "Issuer - Security"
    if _WARRANT.search(head):
        return "warrant"
    if _RIGHT.search(head):
        return "right"
    if _PREFERRED.search(name) and not _NOT_PREFERRED.search(head):
        return "preferred"
    if _NOTE.search(head):
        return "note"
    if _UNIT.search(head) and not _EQUITY_UNIT.search(head):
        return "unit"
    return "stock"


def _read_patterns(root: Traversable) -> list[tuple[Any, ...]]:
    try:
        doc = json.loads((root / _PATTERNS).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReferenceDataError(f"{_PATTERNS}: {exc}") from exc
    entries = doc.get("patterns") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ReferenceDataError(f"{_PATTERNS}: expected an object with a 'patterns' list")
    keys: dict[str, tuple[int, str]] = {}
    return [_pattern(entry, index, keys) for index, entry in enumerate(entries)]


def _pattern(entry: object, index: int, keys: dict[str, tuple[int, str]]) -> tuple[Any, ...]:
    where = f"{_PATTERNS}: patterns[{index}]"
    fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
    name = fields.get("name")
    if not isinstance(name, str) or not _PATTERN_NAME.fullmatch(name):
        raise ReferenceDataError(f"{where}: name {name!r} must be 1-64 of a-z 0-9 _")
    category, direction = fields.get("category"), fields.get("direction", "neutral")
    description, enabled = fields.get("description", ""), fields.get("enabled", True)
    aliases, timeframes = fields.get("aliases", []), fields.get("timeframes", list(_TIMEFRAMES))
    if (
        category not in _CATEGORIES
        or direction not in _DIRECTIONS
        or not isinstance(description, str)
        or not isinstance(enabled, bool)
        or not _strings(aliases)
        or not _strings(timeframes)
        or not timeframes
        or not set(timeframes) <= set(_TIMEFRAMES)
    ):
        raise ReferenceDataError(
            f"{where} ({name}): needs category in {sorted(_CATEGORIES)}, direction in "
            f"{sorted(_DIRECTIONS)}, a string description, a boolean enabled, a list of string aliases "
            f"and a non-empty list of timeframes from {' '.join(_TIMEFRAMES)}"
        )
    for alias in (name, *aliases):
        key = match_key(alias)
        owner = keys.setdefault(key, (index, name))
        if not key or owner[0] != index:
            raise ReferenceDataError(f"{where} ({name}): {alias!r} is blank or also names {owner[1]!r}")
    return (name, aliases, category, direction, description, timeframes, enabled)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
