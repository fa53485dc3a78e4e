"""The documents TickStock's clients read (``tickstock-upstream.md`` §3), as OpenAPI models, and the
functions that build them from our rows. Only upstream's keys are required; where we add a key
(``id`` on a scan row, ``capped`` in the pagination) upstream's clients ignore it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.routes.pattern_models import json_time

__all__ = [
    "TIER_TIMEFRAMES",
    "TickStockDefinitions",
    "TickStockFilterPresets",
    "TickStockScan",
    "TickStockSymbolSearch",
    "TickStockSymbols",
    "TickStockTierPatterns",
    "TickStockUniverseTickers",
    "TickStockUniverses",
    "TickStockWatchlists",
    "scan_row",
    "symbol_row",
    "tier_name",
    "tier_row",
]

INTRADAY = ("1min", "5min", "15min", "30min")
# Upstream's tiers (and the scan's capitalised timeframes) -> our timeframes. Approximate where noted in
# docs/tickstock-compat.md: "intraday" is every sub-hourly timeframe, "daily_intraday" (upstream's
# combination tier) is daily plus intraday, and "combo" has no timeframe of its own.
TIER_TIMEFRAMES: dict[str, tuple[str, ...]] = {
    "daily": ("daily",),
    "hourly": ("hourly",),
    "intraday": INTRADAY,
    "weekly": ("weekly",),
    "monthly": ("monthly",),
    "daily_intraday": ("daily", *INTRADAY),
}
# Our symbol types -> the Polygon-style codes upstream's directory carries.
TYPE_CODES = {
    "stock": "CS",
    "etf": "ETF",
    "fund": "FUND",
    "preferred": "PFD",
    "warrant": "WARRANT",
    "unit": "UNIT",
    "right": "RIGHT",
    "note": "ETN",
    "index": "INDEX",
    "other": "OS",
}
MARKET = "stocks"  # every symbol in our directory is a US-listed security


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TickStockPattern(_Model):
    id: str = Field(description="ours: the event id (an addition)")
    symbol: str
    pattern: str
    confidence: float
    price: float = Field(description="the event's price; 0 when it has none (upstream's default)")
    change_percent: float = Field(description="data.change_percent or data.price_change; else 0")
    rs: float = Field(description="indicators.relative_strength; else 1.0 (upstream's default)")
    volume: float = Field(description="the event's volume; else 0")
    timestamp: datetime = Field(description="detected_at")
    source: str = Field(description="the tier of the event's timeframe (daily, hourly, intraday, ...)")


class TickStockPagination(_Model):
    page: int
    per_page: int
    total: int
    pages: int
    capped: bool = Field(description="ours: the count stopped at the scan window (see the docs)")


class TickStockCacheInfo(_Model):
    cached: bool
    query_time_ms: float


class TickStockScan(_Model):
    patterns: list[TickStockPattern]
    pagination: TickStockPagination
    cache_info: TickStockCacheInfo


class TickStockDefinition(_Model):
    name: str
    aliases: list[str]
    category: str
    direction: str
    description: str
    timeframes: list[str]
    enabled: bool


class TickStockDefinitions(_Model):
    patterns: list[TickStockDefinition]
    count: int


class TickStockTierPattern(_Model):
    id: str
    symbol: str
    pattern_type: str
    confidence: float
    pattern_data: dict[str, Any]
    detection_timestamp: datetime
    expiration_date: datetime | None
    levels: dict[str, float]
    metadata: dict[str, Any]
    tier: str


class TickStockTierMetadata(_Model):
    count: int
    tier: str


class TickStockTierPatterns(_Model):
    patterns: list[TickStockTierPattern]
    metadata: TickStockTierMetadata


class TickStockSymbol(_Model):
    symbol: str
    name: str
    exchange: str | None
    market: Literal["stocks"]
    type: str = Field(description="CS, ETF, FUND, PFD, WARRANT, UNIT, RIGHT, ETN, INDEX or OS")
    active: bool


class TickStockSymbols(_Model):
    symbols: list[TickStockSymbol]
    count: int


class TickStockSymbolName(_Model):
    symbol: str
    name: str


class TickStockSymbolSearch(_Model):
    symbols: list[TickStockSymbolName]


class TickStockUniverse(_Model):
    key: str
    description: str
    criteria: str = Field(description="the universe's name")
    count: int
    category: str = Field(description="the universe's kind (index, sector, etf, theme, custom)")


class TickStockUniverses(_Model):
    universes: list[TickStockUniverse]
    total_universes: int


class TickStockUniverseTickers(_Model):
    universe_key: str
    tickers: list[str]
    count: int


class TickStockWatchlist(_Model):
    id: str = Field(description="the watchlist's name (our watchlists are keyed by name)")
    name: str
    symbols: list[str]
    created_at: datetime
    updated_at: datetime


class TickStockWatchlists(_Model):
    watchlists: list[TickStockWatchlist]


class TickStockFilterPreset(_Model):
    id: int
    name: str
    filters: dict[str, Any] = Field(description="the saved filter, in /api/patterns/scan's names")
    is_default: bool = Field(description="always false: we keep no default filter")


class TickStockFilterPresets(_Model):
    presets: list[TickStockFilterPreset]


def tier_name(timeframe: str) -> str:
    """The upstream tier of one of our timeframes."""
    return "intraday" if timeframe in INTRADAY else timeframe


def _number(data: dict[str, Any], *names: str, default: float = 0.0) -> float:
    """The first of ``names`` in ``data`` that holds a number, else ``default``."""
    for name in names:
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return default


def scan_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored event as upstream's scan lists it."""
    return {
        "id": row["id"],
        "symbol": row["symbol"],
        "pattern": row["pattern"],
        "confidence": row["confidence"],
        "price": row["price"] if row["price"] is not None else 0.0,
        "change_percent": _number(row["data"], "change_percent", "price_change"),
        "rs": _number(row["indicators"], "relative_strength", default=1.0),
        "volume": row["volume"] if row["volume"] is not None else 0.0,
        "timestamp": json_time(row["detected_at"]),
        "source": tier_name(row["timeframe"]),
    }


def tier_row(row: dict[str, Any], tier: str) -> dict[str, Any]:
    """A stored event as upstream's tier endpoints list it."""
    return {
        "id": row["id"],
        "symbol": row["symbol"],
        "pattern_type": row["pattern"],
        "confidence": row["confidence"],
        "pattern_data": row["data"],
        "detection_timestamp": json_time(row["detected_at"]),
        "expiration_date": json_time(row["expires_at"]),
        "levels": row["levels"],
        "metadata": {"timeframe": row["timeframe"], "source": row["source"], "indicators": row["indicators"]},
        "tier": tier,
    }


def symbol_row(row: dict[str, Any]) -> dict[str, Any]:
    """A directory row as upstream's ``/api/symbols`` lists it."""
    return {
        "symbol": row["symbol"],
        "name": row["name"],
        "exchange": row["exchange"],
        "market": MARKET,
        "type": TYPE_CODES.get(row["type"], "OS"),
        "active": row["active"],
    }
