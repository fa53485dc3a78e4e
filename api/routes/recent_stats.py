"""``GET /api/patterns/stats/recent`` (scope ``patterns:read``): what the dashboard's pictures draw.

Over the last ``minutes`` (1-1440, default 60) whole minutes, up to and including the current one, of
``detected_at``: the events per minute and timeframe (``per_minute``; a minute without events is
absent), and per sector and pattern (``heat``: the busiest :data:`store.stats.MAX_HEAT_CELLS` cells,
each with its average confidence, its bullish/bearish/neutral split and the symbols it saw).
``timeframe`` (repeatable) narrows both. Unknown parameters are a 400.

Cached like the scans (``docs/cache.md``): the entry depends on the timeframes' generations and on
reference data (sectors), and dies when the current minute ends, since the window then moves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import requires
from api.cache import REFERENCE_GENERATION, dumps, serve
from api.openapi import operation
from api.routes.pattern_models import json_time
from api.state import HubState
from api.validation import read_query
from hub.model import TIMEFRAMES, Timeframe
from store.cache import Computed, Dependencies
from store.stats import MAX_CELL_SYMBOLS, recent_activity

__all__ = ["MAX_MINUTES", "RecentStats", "RecentStatsParams", "routes"]

DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60


class RecentStatsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    minutes: Annotated[int, Field(ge=1, le=MAX_MINUTES)] = DEFAULT_MINUTES
    timeframe: Annotated[list[Timeframe], Field(max_length=len(TIMEFRAMES))] = []


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MinuteCount(_Strict):
    minute: datetime = Field(description="the minute's start (UTC)")
    timeframe: Timeframe
    events: int


class HeatCell(_Strict):
    sector: str | None = Field(description="the symbol directory's sector; null when it has none")
    pattern: str
    events: int
    avg_confidence: float
    bullish: int
    bearish: int
    neutral: int = Field(description="events that are neither bullish nor bearish")
    symbols: list[str] = Field(description=f"the cell's symbols, the first {MAX_CELL_SYMBOLS} alphabetically")
    symbol_count: int


class RecentStats(_Strict):
    minutes: int
    since: datetime = Field(description="the window's start (inclusive)")
    until: datetime = Field(description="the window's end (exclusive): the end of the current minute")
    timeframes: list[Timeframe]
    per_minute: list[MinuteCount]
    heat: list[HeatCell]


@operation(
    summary="Events per minute and per sector and pattern, over the last minutes",
    tags=["patterns"],
    query=RecentStatsParams,
    description=__doc__.split("\n\n", 1)[1],
    responses={200: RecentStats},
    errors=(400,),
    headers={200: {"X-Cache": {"type": "string", "enum": ["hit", "miss", "coalesced", "bypass"]}}},
)
@requires("patterns:read")
async def recent(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    params = read_query(RecentStatsParams, request, lists=("timeframe",))
    now = datetime.now(UTC)
    until = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = until - timedelta(minutes=params.minutes)
    timeframes = sorted(set(params.timeframe))

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            activity = await recent_activity(conn, since=since, until=until, timeframes=timeframes)
        body = {
            "minutes": params.minutes,
            "since": json_time(since),
            "until": json_time(until),
            "timeframes": timeframes,
            "per_minute": [{**r, "minute": json_time(r["minute"])} for r in activity.per_minute],
            "heat": [
                {**r, "avg_confidence": round(float(r["avg_confidence"]), 4), "symbols": list(r["symbols"])}
                for r in activity.heat
            ],
        }
        # The window moves when the minute ends: the entry must not outlive it.
        ttl_s = min(hub.settings.cache_ttl_s, (until - datetime.now(UTC)).total_seconds())
        return Computed(dumps(body), max(0.0, ttl_s))

    deps = Dependencies(events=tuple(timeframes or TIMEFRAMES), strict=(REFERENCE_GENERATION,))
    key = {"m": params.minutes, "tf": timeframes, "u": json_time(until)}
    served = await serve(hub.cache, "stats", key, deps, compute)
    return Response(served.body, media_type="application/json", headers={"X-Cache": served.outcome})


routes = [Route("/api/patterns/stats/recent", recent, methods=["GET"])]
