"""docs/upstream.md says what the mapping does: its tables, cell by cell, against hub/upstream.py and the
corpus (a claim that stops being true fails here)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from hub.catalog import PatternCatalog
from hub.model import EventError, PatternEvent
from hub.parsing import parse_event
from hub.tiers import TimeframeTable
from hub.upstream import batch_items, shape
from ops.upstream_messages import CORPUS, Case
from store.reference_files import read_reference_files

DOC = Path(__file__).resolve().parents[2] / "docs" / "upstream.md"
TABLE = TimeframeTable()
MISSING = object()


def _catalog() -> PatternCatalog:
    data = read_reference_files(resources.files("store") / "reference_data")
    return PatternCatalog((row[0], row[1]) for row in data.patterns)


CATALOG = _catalog()


def _table(heading: str) -> list[dict[str, str]]:
    """The rows of the first markdown table whose header row starts with ``| heading |``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return MISSING
        obj = obj[part]
    return obj


def _first(raw: dict[str, Any], cell: str) -> tuple[str, Any]:
    """The first of the cell's paths present in ``raw`` (``else`` chains), as (path, value)."""
    for path in _ticked(cell):
        value = _get(raw, path)
        if value is not MISSING:
            return path, value
    raise AssertionError(f"none of {cell} in {raw}")


def _time(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _units(case: Case) -> list[tuple[dict[str, Any], PatternEvent]]:
    """(the raw message a row's paths refer to, its event): a batch gives one per detection, with the
    ``patterns[].`` prefix dropped."""
    raw = json.loads(case.message)
    if case.layout != "batch":
        return [(raw, parse_event(case.message, catalog=CATALOG))]
    return [(json.loads(item), parse_event(item, catalog=CATALOG)) for item in batch_items(raw)]


LAYOUTS = _table("layout")


def test_the_layout_table_names_every_layout_of_the_corpus() -> None:
    assert [row["layout"] for row in LAYOUTS] == [*"ABCDEFG", "streaming", "batch"]
    assert {case.layout for case in CORPUS} == {row["layout"] for row in LAYOUTS}


@pytest.mark.parametrize("row", LAYOUTS, ids=lambda row: row["layout"])
def test_each_layout_row_is_what_the_mapping_does(row: dict[str, str]) -> None:
    cases = [case for case in CORPUS if case.layout == row["layout"] and case.rows]
    assert len(cases) >= 3
    for case in cases:
        assert shape(json.loads(case.message)) == row["recognised as"]
        for raw, event in _units(case):
            if case.layout == "batch":
                row = {k: v.replace("patterns[].", "") for k, v in row.items()}
            assert _first(raw, row["symbol from"])[1].upper() == event.symbol
            assert CATALOG.canonical(_first(raw, row["pattern from"])[1]) == event.pattern
            assert _time(_first(raw, row["detected_at from"])[1]) == event.detected_at
            spellings = [v for p in _ticked(row["timeframe from"]) if (v := _get(raw, p)) is not MISSING]
            assert next(TABLE.lookup(v) for v in spellings if TABLE.lookup(v)) == event.timeframe
            assert _source(raw, row["source from"]) == event.source


def _source(raw: dict[str, Any], cell: str) -> str:
    names = _ticked(cell)
    if "when" in cell:  # "`tickstock` when `source` is a tier, else `source`"
        value = raw[names[1]]
        return names[0] if TABLE.lookup(value) else str(value)
    value = _get(raw, names[0])
    return str(value) if value is not MISSING and "none" not in cell else names[-1]


@pytest.mark.parametrize("row", _table("tier or spelling"), ids=lambda row: row["tier or spelling"])
def test_the_tier_table_is_the_default_table(row: dict[str, str]) -> None:
    spellings = _ticked(row["tier or spelling"])
    target = row["v1 timeframe"]
    if target == "(none)":
        expected: list[str | None] = [None] * len(spellings)
    elif target == "the same":
        expected = list(spellings)
    else:
        given = _ticked(target)
        expected = list(given) if len(given) == len(spellings) else [given[0]] * len(spellings)
    assert [TABLE.lookup(s) for s in spellings] == expected


@pytest.mark.parametrize("row", _table("upstream name"), ids=lambda row: row["upstream name"])
def test_the_vocabulary_table_is_the_catalog(row: dict[str, str]) -> None:
    names, canonical = _ticked(row["upstream name"]), _ticked(row["canonical pattern"])
    expected = canonical if len(canonical) == len(names) else canonical * len(names)
    assert [CATALOG.canonical(name) for name in names] == expected


def test_the_vocabulary_table_covers_every_upstream_name_in_the_facts() -> None:
    listed = {name for row in _table("upstream name") for name in _ticked(row["upstream name"])}
    facts = [
        "Bull_Flag",
        "High_Volume_Surge",
        "Price_Gap",
        "Weekly_Breakout",
        "Support_Test",
        "Resistance_Break",
        "Volume_Spike",
        "Price_Breakout",
        "Momentum_Shift",
        "Trendline_Hold",
        "Gap_Fill",
        "Reversal_Signal",
        "Engulfing_Bull",
        "Engulfing_Bear",
        "Shooting_Star",
        "Ascending_Triangle",
        "HeadShoulders",
        "MACrossover",
        "MomentumShift",
        "TrendReversal",
        "BreakoutPattern",
        "SupportBreakout",
        "BullFlag",
        "WeeklyBO",
        "DailyBO",
        "AscTri",
        "VolSpike",
    ]
    assert sorted(set(facts) - listed) == []
    assert CATALOG.canonical("WeeklyBO") != CATALOG.canonical("DailyBO")
    with pytest.raises(EventError):
        CATALOG.canonical("Performance_Test")
