"""store.reference: loading the symbol directory, universes and pattern definitions into PostgreSQL.

Every test here shares the module's database (the ``pool`` fixture, empty of reference data at the
start). Tests that load altered files do so from a temporary copy and reload the shipped files after.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache, PatternCatalog
from store import reference
from store.reference import ReferenceCounts, ReferenceDataError, load_reference_data, reference_counts

DATA = Path(reference.__file__).with_name("reference_data")
MIGRATION = Path(reference.__file__).with_name("migrations") / "0001_reference.sql"
TIMEFRAMES = ["1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly"]
SECTORS = {
    "sector-communication-services": 23,
    "sector-consumer-discretionary": 47,
    "sector-consumer-staples": 34,
    "sector-energy": 21,
    "sector-financials": 76,
    "sector-health-care": 59,
    "sector-industrials": 83,
    "sector-information-technology": 73,
    "sector-materials": 25,
    "sector-real-estate": 31,
    "sector-utilities": 31,
}
MEMBERS = {"sp500": 503, "dow30": 30, "nasdaq100": 101, "nasdaq": 5561, "nyse": 2918, "etfs": 5624, **SECTORS}
# nasdaq_listed without its 8 test issues, all of other_listed, and AVB and EQR (S&P 500 only).
SYMBOLS = 5561 + 7543 + 2
# TA-Lib's pattern-recognition group, in its own order.
TALIB_CANDLESTICKS = (
    "CDL2CROWS",
    "CDL3BLACKCROWS",
    "CDL3INSIDE",
    "CDL3LINESTRIKE",
    "CDL3OUTSIDE",
    "CDL3STARSINSOUTH",
    "CDL3WHITESOLDIERS",
    "CDLABANDONEDBABY",
    "CDLADVANCEBLOCK",
    "CDLBELTHOLD",
    "CDLBREAKAWAY",
    "CDLCLOSINGMARUBOZU",
    "CDLCONCEALBABYSWALL",
    "CDLCOUNTERATTACK",
    "CDLDARKCLOUDCOVER",
    "CDLDOJI",
    "CDLDOJISTAR",
    "CDLDRAGONFLYDOJI",
    "CDLENGULFING",
    "CDLEVENINGDOJISTAR",
    "CDLEVENINGSTAR",
    "CDLGAPSIDESIDEWHITE",
    "CDLGRAVESTONEDOJI",
    "CDLHAMMER",
    "CDLHANGINGMAN",
    "CDLHARAMI",
    "CDLHARAMICROSS",
    "CDLHIGHWAVE",
    "CDLHIKKAKE",
    "CDLHIKKAKEMOD",
    "CDLHOMINGPIGEON",
    "CDLIDENTICAL3CROWS",
    "CDLINNECK",
    "CDLINVERTEDHAMMER",
    "CDLKICKING",
    "CDLKICKINGBYLENGTH",
    "CDLLADDERBOTTOM",
    "CDLLONGLEGGEDDOJI",
    "CDLLONGLINE",
    "CDLMARUBOZU",
    "CDLMATCHINGLOW",
    "CDLMATHOLD",
    "CDLMORNINGDOJISTAR",
    "CDLMORNINGSTAR",
    "CDLONNECK",
    "CDLPIERCING",
    "CDLRICKSHAWMAN",
    "CDLRISEFALL3METHODS",
    "CDLSEPARATINGLINES",
    "CDLSHOOTINGSTAR",
    "CDLSHORTLINE",
    "CDLSPINNINGTOP",
    "CDLSTALLEDPATTERN",
    "CDLSTICKSANDWICH",
    "CDLTAKURI",
    "CDLTASUKIGAP",
    "CDLTHRUSTING",
    "CDLTRISTAR",
    "CDLUNIQUE3RIVER",
    "CDLUPSIDEGAP2CROWS",
    "CDLXSIDEGAP3METHODS",
)


Params = tuple[Any, ...] | None


def _patterns() -> list[dict[str, Any]]:
    return json.loads((DATA / "patterns.json").read_text(encoding="utf-8"))["patterns"]


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


async def _all(pool: AsyncConnectionPool, query: str, params: Params = None) -> list[dict[str, Any]]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchall()


async def _one(pool: AsyncConnectionPool, query: str, params: Params = None) -> dict[str, Any]:
    (row,) = await _all(pool, query, params)
    return row


@pytest_asyncio.fixture(scope="module")
async def loaded(pool: AsyncConnectionPool) -> ReferenceCounts:
    """The counts of the first load into the module's empty database."""
    return await load_reference_data(pool)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A writable copy of the shipped reference files."""
    return Path(shutil.copytree(DATA, tmp_path / "reference_data"))


@pytest_asyncio.fixture
async def restore(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> AsyncIterator[None]:
    """Reload the shipped files after the test and drop the made-up symbols (ZZ9…) it added."""
    yield
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM symbols WHERE symbol LIKE 'ZZ9%'")
        await conn.execute("DELETE FROM universes WHERE key = 'my-picks'")
    assert await load_reference_data(pool) == loaded


def edit_csv(path: Path, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(change(rows))


def edit_patterns(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    doc = json.loads((path / "patterns.json").read_text(encoding="utf-8"))
    result = change(doc)
    (path / "patterns.json").write_text(json.dumps(doc if result is None else result), encoding="utf-8")


# -- the shipped files ------------------------------------------------------------------------------


async def test_first_load_counts(loaded: ReferenceCounts) -> None:
    assert loaded == ReferenceCounts(
        symbols=SYMBOLS, universes=17, sector_universes=11, members=MEMBERS, patterns=97
    )
    assert sum(loaded.members[key] for key in SECTORS) == loaded.members["sp500"] == 503


async def test_reference_counts_reads_back_the_same(
    pool: AsyncConnectionPool, loaded: ReferenceCounts
) -> None:
    assert await reference_counts(pool) == loaded


async def test_test_issues_are_skipped(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    with (DATA / "nasdaq_listed.csv").open(newline="", encoding="utf-8") as handle:
        tests = [row["Symbol"] for row in csv.DictReader(handle) if row["Test Issue"] == "Y"]
    assert len(tests) == 8
    row = await _one(pool, "SELECT count(*) AS n FROM symbols WHERE symbol = ANY(%s)", (tests,))
    assert row["n"] == 0


@pytest.mark.parametrize(
    ("symbol", "type_", "exchange"),
    [
        ("BRK.B", "stock", "NYSE"),
        ("AAPL", "stock", "NASDAQ"),
        ("AAC.U", "unit", "NYSE"),  # ACT suffix .U
        ("ACHR.W", "warrant", "NYSE"),  # .W
        ("AIIA.R", "right", "NYSE"),  # .R
        ("ABR$D", "preferred", "NYSE"),  # $
        ("SPY", "etf", "NYSE ARCA"),
        ("QQQ", "etf", "NASDAQ"),
        ("AACBU", "unit", "NASDAQ"),  # Nasdaq: "Issuer - Units"
        ("AACIW", "warrant", "NASDAQ"),
        ("SMXWW", "warrant", "NASDAQ"),  # a parenthesis in the issuer's name
        ("AACBR", "right", "NASDAQ"),
        ("ADAMG", "note", "NASDAQ"),  # "Senior Notes due 2030"
        ("ACGLN", "preferred", "NASDAQ"),  # depositary shares of a preferred share
        ("BPYPM", "preferred", "NASDAQ"),  # "Preferred Units": preferred, not unit
        ("PFBC", "stock", "NASDAQ"),  # Preferred Bank - Common Stock
        ("AMX", "stock", "NYSE"),  # ADS "representing the right to receive" shares
        ("ITUB", "stock", "NYSE"),  # ADS of preferred shares
        ("ET", "stock", "NYSE"),  # LP common units are equity
        ("AB", "stock", "NYSE"),
        ("DUKU", "unit", "NYSE"),  # corporate (equity) units
        ("A", "stock", "NYSE"),
        ("AVB", "stock", None),  # S&P 500 member in neither listing
    ],
)
async def test_symbol_types_and_exchanges(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, symbol: str, type_: str, exchange: str | None
) -> None:
    row = await _one(
        pool, "SELECT type, exchange, active, market_cap FROM symbols WHERE symbol = %s", (symbol,)
    )
    assert (row["type"], row["exchange"], row["active"], row["market_cap"]) == (type_, exchange, True, None)


async def test_sp500_names_and_sectors(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    rows = await _all(
        pool, "SELECT symbol, name, sector, industry FROM symbols WHERE symbol IN ('BRK.B', 'AMZN', 'AVB')"
    )
    assert {row["symbol"]: (row["name"], row["sector"], row["industry"]) for row in rows} == {
        "BRK.B": ("Berkshire Hathaway", "Financials", "Multi-Sector Holdings"),
        "AMZN": ("Amazon", "Consumer Discretionary", "Broadline Retail"),  # not dow30's "Inc.amazon.com"
        "AVB": ("AvalonBay Communities", "Real Estate", "Multi-Family Residential REITs"),
    }
    row = await _one(pool, "SELECT count(*) AS n FROM symbols WHERE sector IS NOT NULL")
    assert row["n"] == 503


async def test_names_are_trimmed_and_whole(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    row = await _one(
        pool, "SELECT count(*) AS n FROM symbols WHERE name = '' OR name <> btrim(name) OR name LIKE '%  %'"
    )
    assert row["n"] == 0
    # Company Name is cut at the first hyphen ("T"); Security Name is whole.
    row = await _one(pool, "SELECT name FROM symbols WHERE symbol = 'AAPX'")
    assert row["name"] == "T-Rex 2X Long Apple Daily Target ETF"


async def test_universe_rows(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    rows = await _all(pool, "SELECT key, name, kind, description FROM universes ORDER BY key")
    universes = {row["key"]: row for row in rows}
    assert set(universes) == set(MEMBERS)
    assert {key: row["kind"] for key, row in universes.items()} == {
        **dict.fromkeys(SECTORS, "sector"),
        "sp500": "index",
        "dow30": "index",
        "nasdaq100": "index",
        "nasdaq": "index",
        "nyse": "index",
        "etfs": "etf",
    }
    assert universes["nasdaq"]["name"] == "All Nasdaq-listed"
    assert universes["sector-information-technology"]["name"] == "S&P 500 Information Technology"
    assert "sp500_constituents.csv" in universes["sp500"]["description"]
    assert "2026-08-08" in universes["sector-energy"]["description"]
    assert "2026-04-01" in universes["dow30"]["description"]
    row = await _one(pool, "SELECT count(*) AS n FROM universe_members WHERE weight IS NOT NULL")
    assert row["n"] == 0


async def test_index_members_outside_the_sp500_are_symbols(
    pool: AsyncConnectionPool, loaded: ReferenceCounts
) -> None:
    outside = [
        "ASML",
        "ARM",
        "SHOP",
        "PDD",
        "MELI",
        "EA",
        "FER",
        "ALNY",
        "MSTR",
        "CCEP",
        "TRI",
        "INSM",
        "ZS",
        "TEAM",
    ]
    rows = await _all(
        pool,
        "SELECT m.symbol, s.exchange FROM universe_members m JOIN symbols s USING (symbol)"
        " WHERE m.universe = 'nasdaq100' AND NOT EXISTS"
        " (SELECT 1 FROM universe_members p WHERE p.universe = 'sp500' AND p.symbol = m.symbol)",
    )
    assert sorted(row["symbol"] for row in rows) == sorted(outside)
    assert {row["exchange"] for row in rows} == {"NASDAQ"}


async def test_reload_changes_nothing(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    before = (await _one(pool, "SELECT clock_timestamp() AS t"))["t"]
    again = await load_reference_data(pool)
    assert again == loaded
    for table in ("symbols", "universes", "pattern_definitions"):
        row = await _one(pool, f"SELECT count(*) AS n FROM {table} WHERE updated_at >= %s", (before,))
        assert row["n"] == 0, f"{table} rows were rewritten"
    row = await _one(
        pool, "SELECT count(*) AS n, count(DISTINCT (universe, symbol)) AS d FROM universe_members"
    )
    assert row["n"] == row["d"] == sum(MEMBERS.values())


async def test_concurrent_loads_serialise(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    results = await asyncio.gather(load_reference_data(pool), load_reference_data(pool))
    assert results == [loaded, loaded]


async def test_logs_index_members_in_no_listing(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tickstock.store.reference"):
        await load_reference_data(pool)
    messages = [r.getMessage() for r in caplog.records]
    unlisted = "sp500_constituents.csv: 2 member(s) in no listing file, added under the index file's name"
    assert any(m.startswith(unlisted) and m.endswith("AVB, EQR") for m in messages)
    assert any(m.startswith("reference data loaded in") for m in messages)


# -- altered files ----------------------------------------------------------------------------------


async def test_removed_member_is_pruned_and_user_data_kept(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, source: Path, restore: None
) -> None:
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO universes (key, name, kind) VALUES ('my-picks', 'Mine', 'custom')")
        await conn.execute(
            "INSERT INTO universe_members (universe, symbol) VALUES ('my-picks', 'CAT'), ('my-picks', 'AAPL')"
        )
        await conn.execute("INSERT INTO user_watchlists (subject, name, symbols) VALUES ('u1', 'w', '{CAT}')")
    edit_csv(source / "dow30.csv", lambda rows: [row for row in rows if row[0] != "CAT"])
    counts = await load_reference_data(pool, source_dir=source)
    assert counts.members["dow30"] == 29
    assert "my-picks" not in counts.members and counts.universes == loaded.universes
    rows = await _all(pool, "SELECT universe FROM universe_members WHERE symbol = 'CAT' ORDER BY universe")
    assert [row["universe"] for row in rows] == ["my-picks", "nyse", "sector-industrials", "sp500"]
    row = await _one(pool, "SELECT symbols FROM user_watchlists WHERE subject = 'u1' AND name = 'w'")
    assert row["symbols"] == ["CAT"]
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM user_watchlists WHERE subject = 'u1'")


async def test_sector_gone_from_the_file_is_dropped(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, source: Path, restore: None
) -> None:
    def rename(rows: list[list[str]]) -> list[list[str]]:
        return [[*row[:2], "Oil & Gas" if row[2] == "Energy" else row[2], *row[3:]] for row in rows]

    edit_csv(source / "sp500_constituents.csv", rename)
    counts = await load_reference_data(pool, source_dir=source)
    assert "sector-energy" not in counts.members
    assert counts.members["sector-oil-gas"] == 21 and counts.sector_universes == 11
    row = await _one(pool, "SELECT count(*) AS n FROM universes WHERE key = 'sector-energy'")
    assert row["n"] == 0


async def test_extra_rows(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, source: Path, restore: None
) -> None:
    edit_csv(source / "nasdaq100.csv", lambda rows: [*rows, ["ZZ9A", "  Zed   Nine Corp "]])
    edit_csv(source / "nyse_listed.csv", lambda rows: [*rows, ["ZZ9B", "Zed Holdings Warrants"]])
    edit_csv(
        source / "other_listed.csv",
        lambda rows: [*rows, ["ZZ9C", "Test", "Test Issue", "N", "ZZ9C", "N", "100.0", "Y", "ZZ9C"]],
    )
    counts = await load_reference_data(pool, source_dir=source)
    assert counts.members["nasdaq100"] == 102 and counts.members["nyse"] == 2919
    assert counts.symbols == loaded.symbols + 2
    rows = await _all(
        pool, "SELECT symbol, name, exchange, type FROM symbols WHERE symbol LIKE 'ZZ9%' ORDER BY 1"
    )
    assert [tuple(row.values()) for row in rows] == [
        ("ZZ9A", "Zed Nine Corp", None, "stock"),
        ("ZZ9B", "Zed Holdings Warrants", "NYSE", "warrant"),
    ]


async def test_updated_definitions_are_rewritten_and_enabled_kept(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, source: Path, restore: None
) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["patterns"][0]["description"] = "changed"
        for entry in doc["patterns"]:
            entry["enabled"] = entry["name"] != "hammer"

    async with pool.connection() as conn:
        await conn.execute("UPDATE pattern_definitions SET enabled = false WHERE name = 'doji'")
    edit_patterns(source, change)
    await load_reference_data(pool, source_dir=source)
    rows = await _all(
        pool,
        "SELECT name, description, enabled FROM pattern_definitions"
        " WHERE name IN ('two_crows', 'doji', 'hammer') ORDER BY name",
    )
    assert [tuple(row.values()) for row in rows] == [
        ("doji", rows[0]["description"], False),  # an operator's choice stands
        ("hammer", rows[1]["description"], True),  # enabled only applies on insert
        ("two_crows", "changed", True),
    ]
    async with pool.connection() as conn:
        await conn.execute("UPDATE pattern_definitions SET enabled = true WHERE name = 'doji'")


async def test_refuses_a_universe_key_held_by_a_custom_universe(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, restore: None
) -> None:
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM universe_members WHERE universe = 'dow30' AND symbol = 'CAT'")
        await conn.execute("UPDATE universes SET kind = 'custom' WHERE key = 'dow30'")
    with pytest.raises(ReferenceDataError, match=r"already used by other universes: dow30 \(custom\)"):
        await load_reference_data(pool)
    row = await _one(pool, "SELECT count(*) AS n FROM universe_members WHERE universe = 'dow30'")
    assert row["n"] == 29  # rolled back: the custom universe was not touched
    async with pool.connection() as conn:
        await conn.execute("UPDATE universes SET kind = 'index' WHERE key = 'dow30'")


def _drop_column(rows: list[list[str]]) -> list[list[str]]:
    return [row[1:] for row in rows]


def _bad_symbol(rows: list[list[str]]) -> list[list[str]]:
    return [*rows, ["brk b", "Lower Case"]]


def _duplicate(rows: list[list[str]]) -> list[list[str]]:
    return [*rows, rows[1]]


def _bad_exchange(rows: list[list[str]]) -> list[list[str]]:
    return [*rows, ["ZZ9D", "X", "X", "Q", "ZZ9D", "N", "100.0", "N", "ZZ9D"]]


def _bad_sector(rows: list[list[str]]) -> list[list[str]]:
    return [rows[0], [*rows[1][:2], "!!!", *rows[1][3:]], *rows[2:]]


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("dow30.csv", _drop_column, r"dow30\.csv: missing column\(s\) Symbol"),
        ("dow30.csv", _bad_symbol, r"dow30\.csv:32: 'brk b' is not an ACT symbol"),
        ("nasdaq_listed.csv", _duplicate, r"nasdaq_listed\.csv:\d+: AAAP is listed twice"),
        ("other_listed.csv", _bad_exchange, r"other_listed\.csv:\d+: unknown exchange code 'Q'"),
        ("sp500_constituents.csv", _bad_sector, r"sp500_constituents\.csv:2: GICS sector '!!!'"),
    ],
)
async def test_malformed_csv_is_refused(
    pool: AsyncConnectionPool,
    loaded: ReferenceCounts,
    source: Path,
    file: str,
    change: Callable[[list[list[str]]], list[list[str]]],
    message: str,
) -> None:
    edit_csv(source / file, change)
    with pytest.raises(ReferenceDataError, match=message):
        await load_reference_data(pool, source_dir=source)
    assert await reference_counts(pool) == loaded


def _entry(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["patterns"][1].update(fields)

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda doc: "{not json", r"patterns\.json: Expecting"),
        (lambda doc: [doc], r"expected an object with a 'patterns' list"),
        (lambda doc: {"patterns": {}}, r"expected an object with a 'patterns' list"),
        (lambda doc: {"patterns": ["hammer"]}, r"patterns\[0\]: name None"),
        (_entry(name="Three Black Crows"), r"patterns\[1\]: name 'Three Black Crows' must be"),
        (_entry(category="candle"), r"patterns\[1\] \(three_black_crows\): needs category"),
        (_entry(direction="up"), r"needs category"),
        (_entry(description=None), r"needs category"),
        (_entry(enabled="yes"), r"needs category"),
        (_entry(aliases="CDL3BLACKCROWS"), r"needs category"),
        (_entry(timeframes=["1min", "4h"]), r"needs category"),
        (_entry(timeframes=[]), r"needs category"),
        (_entry(aliases=["CDL2CROWS"]), r"'CDL2CROWS' is blank or also names 'two_crows'"),
        (_entry(aliases=["two-Crows"]), r"'two-Crows' is blank or also names 'two_crows'"),
        (_entry(aliases=[" - "]), r"' - ' is blank"),
        (_entry(name="two_crows"), r"'two_crows' is blank or also names 'two_crows'"),
    ],
)
async def test_malformed_patterns_are_refused(
    pool: AsyncConnectionPool,
    loaded: ReferenceCounts,
    source: Path,
    change: Callable[[dict[str, Any]], object],
    message: str,
) -> None:
    result = change(json.loads((source / "patterns.json").read_text(encoding="utf-8")))
    if isinstance(result, str):
        (source / "patterns.json").write_text(result, encoding="utf-8")
    else:
        edit_patterns(source, change)
    with pytest.raises(ReferenceDataError, match=message):
        await load_reference_data(pool, source_dir=source)
    assert await reference_counts(pool) == loaded


async def test_defaults_for_optional_pattern_fields(
    pool: AsyncConnectionPool, loaded: ReferenceCounts, source: Path, restore: None
) -> None:
    edit_patterns(source, lambda doc: doc["patterns"].append({"name": "zz9_minimal", "category": "chart"}))
    await load_reference_data(pool, source_dir=source)
    row = await _one(pool, "SELECT * FROM pattern_definitions WHERE name = 'zz9_minimal'")
    assert (row["aliases"], row["direction"], row["description"], row["timeframes"], row["enabled"]) == (
        [],
        "neutral",
        "",
        TIMEFRAMES,
        True,
    )
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM pattern_definitions WHERE name = 'zz9_minimal'")


# -- patterns.json ----------------------------------------------------------------------------------


def test_aliases_name_one_definition_each() -> None:
    owners: dict[str, set[str]] = {}
    for entry in _patterns():
        assert len(entry["aliases"]) == len(set(entry["aliases"])), entry["name"]
        for alias in (entry["name"], *entry["aliases"]):
            owners.setdefault(_key(alias), set()).add(entry["name"])
    assert {key: names for key, names in owners.items() if len(names) > 1} == {}
    catalog = PatternCatalog((entry["name"], entry["aliases"]) for entry in _patterns())
    legacy = {
        "Bull_Flag": "bull_flag",
        "Doji": "doji",
        "Hammer": "hammer",
        "WeeklyBO": "weekly_breakout",
        "DailyBO": "daily_breakout",
        "Weekly_Breakout": "weekly_breakout",
        "Price_Breakout": "breakout",
        "Engulfing": "engulfing",
        "ThreeWhiteSoldiers": "three_white_soldiers",
        "CDLENGULFING": "engulfing",
        "bearish_engulfing": "engulfing",
        "Morning Star": "morning_star",
    }
    assert {name: catalog.canonical(name) for name in legacy} == legacy


def test_names_satisfy_the_database_check() -> None:
    sql = MIGRATION.read_text(encoding="utf-8")
    check = re.search(r"CHECK \(name ~ '([^']+)'\)", sql)
    assert check is not None
    names = [entry["name"] for entry in _patterns()]
    assert len(names) == len(set(names))
    assert [name for name in names if not re.search(check[1], name)] == []
    assert "CHECK (symbol ~ '^[A-Z0-9.$\\-/^=]{1,15}$')" in sql


def test_candlesticks_are_the_talib_recognisers() -> None:
    entries = _patterns()
    by_category: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_category.setdefault(entry["category"], []).append(entry)
    assert {category: len(items) for category, items in by_category.items()} == {
        "candlestick": 61,
        "chart": 20,
        "indicator": 16,
    }
    candlesticks, chart = by_category["candlestick"], by_category["chart"]
    indicators = by_category["indicator"]
    functions = [alias for entry in candlesticks for alias in entry["aliases"] if alias.startswith("CDL")]
    assert sorted(functions) == sorted(TALIB_CANDLESTICKS)
    assert all(entry["timeframes"] == TIMEFRAMES for entry in candlesticks + indicators)
    assert all(entry["timeframes"] == TIMEFRAMES[2:] for entry in chart)
    directions = {entry["name"]: entry["direction"] for entry in entries}
    some = ("hammer", "evening_star", "doji", "engulfing", "head_and_shoulders", "golden_cross")
    assert [directions[name] for name in some] == [
        "bullish",
        "bearish",
        "neutral",
        "neutral",
        "bearish",
        "bullish",
    ]
    assert all(entry["description"] and entry["description"].count("\n") == 0 for entry in entries)


async def test_definitions_in_the_database(pool: AsyncConnectionPool, loaded: ReferenceCounts) -> None:
    row = await _one(
        pool, "SELECT name, category, direction FROM pattern_definitions WHERE 'WeeklyBO' = ANY(aliases)"
    )
    assert tuple(row.values()) == ("weekly_breakout", "indicator", "bullish")
    rows = await _all(pool, "SELECT name, aliases, timeframes, enabled FROM pattern_definitions")
    assert {row["name"]: (row["aliases"], row["timeframes"]) for row in rows} == {
        entry["name"]: (entry["aliases"], entry["timeframes"]) for entry in _patterns()
    }
    assert all(row["enabled"] for row in rows)


async def test_a_reload_gives_an_existing_deployment_the_upstream_vocabulary(
    pool: AsyncConnectionPool, loaded: ReferenceCounts
) -> None:
    """A database loaded before the upstream names existed (DailyBO and WeeklyBO were aliases of
    breakout): `tickstock load-reference-data` (or `tickstock run`) moves them to their own definitions."""
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM pattern_definitions WHERE name IN ('daily_breakout', 'weekly_breakout')"
        )
        await conn.execute(
            "UPDATE pattern_definitions SET aliases = aliases || ARRAY['DailyBO', 'WeeklyBO'] WHERE name = 'breakout'"
        )
    await load_reference_data(pool)
    catalog = CatalogCache()
    await catalog.refresh(pool)
    names = {
        n: catalog.current.canonical(n)
        for n in ("DailyBO", "WeeklyBO", "Price_Breakout", "High_Volume_Surge")
    }
    assert names == {
        "DailyBO": "daily_breakout",
        "WeeklyBO": "weekly_breakout",
        "Price_Breakout": "breakout",
        "High_Volume_Surge": "volume_spike",
    }
