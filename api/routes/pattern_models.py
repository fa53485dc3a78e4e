"""The documents ``/api/patterns/…`` answers with: a stored event as JSON, and the response models
the OpenAPI document describes (the routes build the JSON directly; the models state its shape)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hub.model import EventType, Timeframe

__all__ = [
    "CacheInfo",
    "DayCount",
    "Definition",
    "Definitions",
    "PatternCount",
    "PatternEvent",
    "ScanPage",
    "Stats",
    "event_json",
    "json_time",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatternEvent(_Strict):
    """A stored event, canonicalised: every property present (null when unset), times in UTC."""

    id: str
    type: EventType
    symbol: str
    pattern: str
    timeframe: Timeframe
    confidence: float
    detected_at: datetime
    expires_at: datetime | None
    price: float | None
    volume: float | None
    levels: dict[str, float]
    indicators: dict[str, float]
    source: str
    data: dict[str, Any] = Field(description="the producer's free-form JSON object")
    seq: int | None = Field(description="the clean-stream sequence")
    received_at: datetime
    superseded: bool = Field(
        description="a later event of the same pattern instance exists (only `history=true` scans show these)"
    )


class CacheInfo(_Strict):
    hit: bool
    age_ms: float | None


class ScanPage(_Strict):
    items: list[PatternEvent]
    next_cursor: str | None = Field(description="pass as `cursor` (with the same filters) for the next page")
    query_ms: float
    cache: CacheInfo


class Definition(_Strict):
    name: str
    aliases: list[str]
    category: Literal["candlestick", "chart", "indicator"]
    direction: Literal["bullish", "bearish", "neutral"]
    description: str
    timeframes: list[str]
    enabled: bool


class Definitions(_Strict):
    items: list[Definition]


class PatternCount(_Strict):
    pattern: str
    timeframe: Timeframe
    events: int
    avg_confidence: float
    max_confidence: float
    last_detected_at: datetime


class DayCount(_Strict):
    day: date
    events: int


class Stats(_Strict):
    days: int
    by_pattern: list[PatternCount]
    by_day: list[DayCount]


def json_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = value.astimezone(UTC)
    return (
        value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds")
        + "Z"
    )


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored event as the API returns it."""
    return {
        "id": row["id"],
        "type": row["type"],
        "symbol": row["symbol"],
        "pattern": row["pattern"],
        "timeframe": row["timeframe"],
        "confidence": row["confidence"],
        "detected_at": json_time(row["detected_at"]),
        "expires_at": json_time(row["expires_at"]),
        "price": row["price"],
        "volume": row["volume"],
        "levels": row["levels"],
        "indicators": row["indicators"],
        "source": row["source"],
        "data": row["data"],
        "seq": row["seq"],
        "received_at": json_time(row["received_at"]),
        "superseded": row["superseded"],
    }
