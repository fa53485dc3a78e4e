"""Reference data: the symbol directory, index, sector and exchange universes, and pattern definitions.

:func:`load_reference_data` reads the files in ``store/reference_data/`` (sources and licences are in its
README) and writes them in one transaction.

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

Ownership: the loader owns the universes named above and every ``sector`` universe whose key starts
with ``sector-``. It deletes a sector universe that is no longer in the files, and it removes members
that are no longer in the files from the universes it owns. It never touches custom universes, users'
data, symbols missing from the files, or pattern definitions missing from ``patterns.json``. If a custom
or theme universe already holds one of its keys, it refuses to load rather than take that universe over.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

__all__ = ["ReferenceCounts", "ReferenceDataError", "load_reference_data", "reference_counts"]

log = logging.getLogger("tickstock.store.reference")

# These mirror the CHECK constraints in migrations/0001_reference.sql (and hub.model.TIMEFRAMES).
_TIMEFRAMES = ("1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly")
_SYMBOL = re.compile(r"[A-Z0-9.$\-/^=]{1,15}")
_UNIVERSE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
_PATTERN_NAME = re.compile(r"[a-z0-9_]{1,64}")
_CATEGORIES = frozenset({"candlestick", "chart", "indicator"})
_DIRECTIONS = frozenset({"bullish", "bearish", "neutral"})
_MATCH_IGNORED = re.compile(r"[\s_\-]+")  # as hub.catalog.PatternCatalog matches names

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
_AS_OF = {_SP500: "2026-08-08", _DOW30: "2026-04-01", _NDX: "2026-04-01", _NASDAQ: "2026-07-31",
          _NYSE: "2026-08-21", _OTHER: "2026-08-22"}
_FIXED_UNIVERSES = (
    ("sp500", "S&P 500", "index",
     f"S&P 500 constituents from {_SP500} (datasets/s-and-p-500-companies), as of {_AS_OF[_SP500]}."),
    ("dow30", "Dow Jones Industrial Average", "index",
     f"Dow 30 constituents from {_DOW30} (yfiua/index-constituents), as of {_AS_OF[_DOW30]}."),
    ("nasdaq100", "Nasdaq-100", "index",
     f"Nasdaq-100 constituents from {_NDX} (yfiua/index-constituents), as of {_AS_OF[_NDX]}."),
    ("nasdaq", "All Nasdaq-listed", "index",
     f"Every Nasdaq-listed security except test issues, from {_NASDAQ} (Nasdaq Trader), as of "
     + _AS_OF[_NASDAQ] + "."),
    ("nyse", "All NYSE-listed", "index",
     f"Every NYSE-listed security (not NYSE Arca or NYSE American), from {_NYSE}, as of {_AS_OF[_NYSE]}."),
    ("etfs", "All ETFs", "etf",
     f"Every security flagged as an ETF in {_NASDAQ} ({_AS_OF[_NASDAQ]}) and {_OTHER} ({_AS_OF[_OTHER]})."),
)
_FIXED_KEYS = [key for key, *_ in _FIXED_UNIVERSES]
_LOCK_KEY = 0x74726566  # "tref": one loader at a time per database


class ReferenceDataError(ValueError):
    """A reference file is malformed, or loading it would take over a universe that is not ours."""


@dataclass(frozen=True)
class ReferenceCounts:
    """What the database holds.

    ``symbols`` and ``patterns`` count every row of their tables. ``universes`` counts the loader's
    universes, ``sector_universes`` those of kind ``sector``, and ``members`` maps each of the loader's
    universe keys to its member count.
    """

    symbols: int
    universes: int
    sector_universes: int
    members: dict[str, int]
    patterns: int


@dataclass
class _Listing:
    symbol: str
    name: str
    exchange: str | None
    type: str
    sector: str | None = None
    industry: str | None = None


@dataclass
class _Data:
    symbols: dict[str, _Listing] = field(default_factory=dict)
    universes: list[tuple[str, str, str, str]] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    patterns: list[tuple[Any, ...]] = field(default_factory=list)
    unlisted: dict[str, list[str]] = field(default_factory=dict)  # index file -> members in no listing


async def load_reference_data(
    pool: AsyncConnectionPool, *, source_dir: Path | None = None
) -> ReferenceCounts:
    """Load the reference files in one transaction and return the counts the database then holds.

    ``source_dir`` replaces the package's ``reference_data`` folder (same file names).

    Idempotent: rows are upserted and unchanged rows are not rewritten, so a second run changes nothing
    and returns the same counts. Waits for a pool connection (the pool's timeout) and for any other
    loader on the same database (advisory lock). Raises :class:`ReferenceDataError` for a malformed file
    or a reserved universe key held by a custom or theme universe, ``OSError`` if a file cannot be read,
    and ``psycopg.Error`` if the database refuses the data. Nothing is written in those cases.
    """
    started = time.perf_counter()
    root: Traversable = source_dir if source_dir is not None else resources.files("store") / "reference_data"
    data = await asyncio.to_thread(_read, root)  # ~0.1 s of parsing, off the event loop
    read_s = time.perf_counter() - started
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await _write_symbols(conn, data)
        await _write_universes(conn, data)
        await _write_patterns(conn, data)
        counts = await _counts(conn)
    log.info(
        "reference data loaded in %.0f ms (%.0f ms reading files): %d symbols, %d universes, %d patterns",
        (time.perf_counter() - started) * 1000, read_s * 1000,
        counts.symbols, counts.universes, counts.patterns,
    )
    return counts


async def reference_counts(pool: AsyncConnectionPool) -> ReferenceCounts:
    """Read the counts back from the database (one pooled connection, no lock)."""
    async with pool.connection() as conn:
        return await _counts(conn)


# -- reading the files ------------------------------------------------------------------------------


def _read(root: Traversable) -> _Data:
    data = _Data()
    _read_listings(root, data)
    sectors = _read_sp500(root, data)
    for file, key in ((_DOW30, "dow30"), (_NDX, "nasdaq100")):
        data.members[key] = [_index_member(data, where, row["Symbol"], row["Name"])
                             for where, row in _rows(root, file, ("Symbol", "Name"))]
    data.members["etfs"] = [s.symbol for s in data.symbols.values() if s.type == "etf"]
    data.universes = [*_FIXED_UNIVERSES, *sectors]
    for file, symbols in data.unlisted.items():
        log.warning("%s: %d member(s) in no listing file, added under the index file's name: %s",
                    file, len(symbols), ", ".join(symbols))
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


def _add(data: _Data, listing: _Listing, where: str) -> None:
    if listing.symbol in data.symbols:
        raise ReferenceDataError(f"{where}: {listing.symbol} is listed twice")
    data.symbols[listing.symbol] = listing


def _read_listings(root: Traversable, data: _Data) -> None:
    nasdaq = data.members.setdefault("nasdaq", [])
    for where, row in _rows(root, _NASDAQ, ("Symbol", "Security Name", "Test Issue", "ETF")):
        if row["Test Issue"] == "Y":
            continue
        symbol, name = _symbol(row["Symbol"], where), _name(row["Security Name"])
        _add(data, _Listing(symbol, name, "NASDAQ", _security_type(symbol, name, row["ETF"] == "Y")), where)
        nasdaq.append(symbol)
    for where, row in _rows(root, _OTHER, ("ACT Symbol", "Security Name", "Exchange", "ETF", "Test Issue")):
        if row["Test Issue"] == "Y":
            continue
        if row["Exchange"] not in _EXCHANGES:
            raise ReferenceDataError(f"{where}: unknown exchange code {row['Exchange']!r}")
        symbol, name = _symbol(row["ACT Symbol"], where), _name(row["Security Name"])
        type_ = _security_type(symbol, name, row["ETF"] == "Y")
        _add(data, _Listing(symbol, name, _EXCHANGES[row["Exchange"]], type_), where)
    nyse = data.members.setdefault("nyse", [])
    for where, row in _rows(root, _NYSE, ("ACT Symbol", "Company Name")):
        symbol = _symbol(row["ACT Symbol"], where)
        if symbol not in data.symbols:  # its names are cut at the first hyphen: only a fallback
            name = _name(row["Company Name"])
            _add(data, _Listing(symbol, name, "NYSE", _security_type(symbol, name, False)), where)
        nyse.append(symbol)


def _read_sp500(root: Traversable, data: _Data) -> list[tuple[str, str, str, str]]:
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


def _index_member(data: _Data, where: str, value: str, name: str) -> str:
    symbol = _symbol(value, where)
    if symbol not in data.symbols:
        data.unlisted.setdefault(where.partition(":")[0], []).append(symbol)
        data.symbols[symbol] = _Listing(symbol, _name(name), None, "stock")
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
    if (category not in _CATEGORIES or direction not in _DIRECTIONS or not isinstance(description, str)
            or not isinstance(enabled, bool) or not _strings(aliases) or not _strings(timeframes)
            or not timeframes or not set(timeframes) <= set(_TIMEFRAMES)):
        raise ReferenceDataError(
            f"{where} ({name}): needs category in {sorted(_CATEGORIES)}, direction in "
            f"{sorted(_DIRECTIONS)}, a string description, a boolean enabled, a list of string aliases "
            f"and a non-empty list of timeframes from {' '.join(_TIMEFRAMES)}"
        )
    for alias in (name, *aliases):
        key = _MATCH_IGNORED.sub("", alias).casefold()
        owner = keys.setdefault(key, (index, name))
        if not key or owner[0] != index:
            raise ReferenceDataError(f"{where} ({name}): {alias!r} is blank or also names {owner[1]!r}")
    return (name, aliases, category, direction, description, timeframes, enabled)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# -- writing ----------------------------------------------------------------------------------------


async def _copy(
    conn: psycopg.AsyncConnection[Any], table: LiteralString, columns: LiteralString,
    rows: list[tuple[Any, ...]],
) -> None:
    """COPY ``rows`` into a new temporary ``table`` dropped at commit; ANALYZE it for the planner."""
    await conn.execute(f"CREATE TEMP TABLE {table} ({columns}) ON COMMIT DROP")
    names = ", ".join(part.split()[0] for part in columns.split(","))
    async with conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)
    await conn.execute(f"ANALYZE {table}")


async def _write_symbols(conn: psycopg.AsyncConnection[Any], data: _Data) -> None:
    rows = [(s.symbol, s.name, s.exchange, s.type, s.sector, s.industry) for s in data.symbols.values()]
    await _copy(conn, "ref_symbols",
                "symbol text, name text, exchange text, type text, sector text, industry text", rows)
    await conn.execute(
        "INSERT INTO symbols AS s (symbol, name, exchange, type, sector, industry, active)"
        " SELECT symbol, name, exchange, type, sector, industry, true FROM ref_symbols"
        " ON CONFLICT (symbol) DO UPDATE SET name = EXCLUDED.name, exchange = EXCLUDED.exchange,"
        " type = EXCLUDED.type, sector = EXCLUDED.sector, industry = EXCLUDED.industry, active = true,"
        " updated_at = now()"
        " WHERE (s.name, s.exchange, s.type, s.sector, s.industry, s.active)"
        " IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.exchange, EXCLUDED.type, EXCLUDED.sector,"
        " EXCLUDED.industry, true)"
    )


async def _write_universes(conn: psycopg.AsyncConnection[Any], data: _Data) -> None:
    keys = [key for key, *_ in data.universes]
    async with conn.cursor(row_factory=tuple_row) as held:
        await held.execute(
            "SELECT key, kind FROM universes"
            " WHERE key = ANY(%s) AND kind IN ('custom', 'theme') ORDER BY key",
            (keys,),
        )
        taken = ", ".join(f"{key} ({kind})" for key, kind in await held.fetchall())
    if taken:
        raise ReferenceDataError(f"reference universe keys already used by other universes: {taken}")
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO universes AS u (key, name, kind, description) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,"
            " description = EXCLUDED.description, updated_at = now()"
            " WHERE (u.name, u.kind, u.description) IS DISTINCT FROM"
            " (EXCLUDED.name, EXCLUDED.kind, EXCLUDED.description)",
            data.universes,
        )
    await conn.execute(
        "DELETE FROM universes WHERE kind = 'sector' AND key LIKE 'sector-%%' AND key <> ALL(%s)", (keys,)
    )
    rows = [(key, symbol) for key, symbols in data.members.items() for symbol in dict.fromkeys(symbols)]
    await _copy(conn, "ref_members", "universe text, symbol text", rows)
    await conn.execute(
        "INSERT INTO universe_members (universe, symbol) SELECT universe, symbol FROM ref_members"
        " ON CONFLICT (universe, symbol) DO NOTHING"
    )
    await conn.execute(
        "DELETE FROM universe_members m WHERE m.universe = ANY(%s) AND NOT EXISTS"
        " (SELECT 1 FROM ref_members r WHERE r.universe = m.universe AND r.symbol = m.symbol)",
        (keys,),
    )


async def _write_patterns(conn: psycopg.AsyncConnection[Any], data: _Data) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO pattern_definitions AS p"
            " (name, aliases, category, direction, description, timeframes, enabled)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET aliases = EXCLUDED.aliases, category = EXCLUDED.category,"
            " direction = EXCLUDED.direction, description = EXCLUDED.description,"
            " timeframes = EXCLUDED.timeframes, updated_at = now()"
            " WHERE (p.aliases, p.category, p.direction, p.description, p.timeframes) IS DISTINCT FROM"
            " (EXCLUDED.aliases, EXCLUDED.category, EXCLUDED.direction, EXCLUDED.description,"
            " EXCLUDED.timeframes)",
            data.patterns,
        )


async def _counts(conn: psycopg.AsyncConnection[Any]) -> ReferenceCounts:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT u.key, u.kind, count(m.symbol) AS members FROM universes u"
            " LEFT JOIN universe_members m ON m.universe = u.key"
            " WHERE u.key = ANY(%s) OR (u.kind = 'sector' AND u.key LIKE 'sector-%%')"
            " GROUP BY u.key, u.kind ORDER BY u.key",
            (_FIXED_KEYS,),
        )
        universes = await cur.fetchall()
        await cur.execute(
            "SELECT (SELECT count(*) FROM symbols) AS symbols,"
            " (SELECT count(*) FROM pattern_definitions) AS patterns"
        )
        (totals,) = await cur.fetchall()
    return ReferenceCounts(
        symbols=totals["symbols"],
        universes=len(universes),
        sector_universes=sum(1 for row in universes if row["kind"] == "sector"),
        members={row["key"]: row["members"] for row in universes},
        patterns=totals["patterns"],
    )
