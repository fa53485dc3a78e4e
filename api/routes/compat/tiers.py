"""TickStock's tier endpoints, ``GET /api/patterns/{daily|hourly|intraday|weekly|monthly|daily_intraday}``.

As upstream: ``limit`` (clamped to 1-200; default 50, 75 for intraday), ``confidence_min`` (clamped to
0-1, default 0.6) and ``symbols`` (comma-separated); the events of the tier's timeframes detected in the
last 7 days, highest confidence first. Upstream keeps one table per tier; we map a tier to timeframes
(``intraday``: 1min-30min, ``daily_intraday``: daily and intraday) and read them with our scan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import requires
from api.cache import dumps, serve
from api.openapi import operation
from api.routes.compat.models import TIER_TIMEFRAMES, TickStockTierPatterns, tier_row
from api.routes.patterns import _real_bound
from api.routes.scan_cache import scan_dependencies, scan_ttl_s
from api.state import HubState
from api.validation import QueryAliases, SymbolName, read_query
from store.cache import Computed
from store.scans import ScanFilter, Sort, scan_events

__all__ = ["routes"]

MAX_LIMIT = 200
DEFAULT_LIMITS = {"intraday": 75}
DEFAULT_LIMIT = 50
RECENT = timedelta(days=7)
_SPLIT = QueryAliases(names={"symbols": "symbols"}, split=frozenset({"symbols"}))


class TierQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(default=None, description="clamped to 1-200; default 50 (intraday 75)")
    confidence_min: Annotated[float, Field(allow_inf_nan=False, description="clamped to 0-1")] = 0.6
    symbols: Annotated[list[SymbolName], Field(max_length=100, description="comma-separated")] = []


def _tier_endpoint(tier: str) -> Callable[[Request], Awaitable[Response]]:
    """The guarded, documented endpoint of one tier."""

    async def endpoint(request: Request) -> Response:
        hub: HubState = request.app.state.hub
        params = read_query(TierQuery, request, aliases=_SPLIT)
        limit = min(
            max(params.limit if params.limit is not None else DEFAULT_LIMITS.get(tier, DEFAULT_LIMIT), 1),
            MAX_LIMIT,
        )
        # To the minute, so that requests within one minute share a cache entry.
        since = (datetime.now(UTC) - RECENT).replace(second=0, microsecond=0)
        filt = ScanFilter(
            symbols=tuple(params.symbols),
            timeframes=TIER_TIMEFRAMES[tier],
            confidence_min=_real_bound(min(max(params.confidence_min, 0.0), 1.0), lower=True),
            detected_after=since,
        )

        async def compute() -> Computed:
            async with hub.pool.connection() as conn:
                page = await scan_events(conn, filt, sort=Sort("confidence", "desc"), limit=limit)
            rows = [tier_row(r, tier) for r in page.items]
            body = {"patterns": rows, "metadata": {"count": len(rows), "tier": tier}}
            return Computed(dumps(body), scan_ttl_s(hub.settings, filt, page.items))

        key = {"tickstock": tier, "f": filt.fingerprint(), "l": limit}
        served = await serve(hub.cache, "scan", key, scan_dependencies(filt), compute)
        return Response(served.body, media_type="application/json", headers={"X-Cache": served.outcome})

    endpoint.__name__ = f"tier_{tier}"
    endpoint.__doc__ = __doc__
    return operation(
        summary=f"TickStock: recent {tier} patterns",
        tags=["tickstock"],
        query=TierQuery,
        responses={200: TickStockTierPatterns},
        errors=(400,),
    )(requires("patterns:read")(endpoint))


def routes(prefix: str) -> list[Route]:
    """One route per tier under ``prefix``."""
    return [
        Route(f"{prefix}/api/patterns/{tier}", _tier_endpoint(tier), methods=["GET"])
        for tier in TIER_TIMEFRAMES
    ]
