"""TickStock's ``GET /api/patterns/scan``: page-numbered, with a total, over our scan.

Parameters are upstream's (``tickstock-upstream.md`` §3): ``pattern_types`` and ``symbols`` (repeat
them, or join values with commas), ``confidence_min`` (0-1, default 0.5), ``rs_min`` and ``vol_min``
(negative counts as 0), ``rsi_range=min,max`` (each clamped to 0-100, swapped when reversed),
``timeframe`` (``All`` | ``Daily`` | ``Hourly`` | ``Intraday`` | ``Weekly`` | ``Monthly`` | ``Combo`` |
``DailyIntraday``), ``sectors`` (repeatable), ``page`` (below 1 counts as 1), ``per_page`` (clamped to
1-100, default 30), ``sort_by`` (``confidence`` | ``detected_at`` | ``symbol`` | ``rs`` | ``volume``,
default ``confidence``) and ``sort_order`` (``desc`` | ``asc``); its browser page's ``universe``,
``sector`` (``all`` = any) and ``limit`` (= ``per_page``) too. Only events that have not expired are
listed, as upstream's cache holds them.

Pages are numbered over a window of the first 10,000 matching events in the scan's order (newest first
for ``rs`` and ``volume``): ``total`` counts the matches in it and ``pagination.capped`` says it is
full; a page beyond it is empty. Each request reads at most the window, however deep the page.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from api.auth import requires
from api.cache import dumps, serve
from api.openapi import operation
from api.routes.compat.models import INTRADAY, TIER_TIMEFRAMES, TickStockScan, scan_row
from api.routes.patterns import _canonical_patterns, _real_bound
from api.routes.scan_cache import scan_dependencies, scan_ttl_s
from api.state import HubState
from api.validation import ParsedQuery, QueryAliases, SymbolName, parse_query, query_error
from store.cache import Computed
from store.scan_window import DEFAULT_WINDOW, INDICATOR_SORTS, IndicatorFilter, window_page
from store.scans import MY_UNIVERSE, UNIVERSE_SEPARATOR, ScanFilter, Sort
from store.universes import is_universe_key

__all__ = ["MAX_PER_PAGE", "SPLIT", "TIMEFRAMES", "Text", "Values", "scan"]

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30
MAX_VALUES = 100  # per repeatable parameter
# Upstream's scan timeframes -> ours ("All": no filter). "Combo" has no timeframe of its own: it is read
# as upstream's combination tier, daily plus intraday (an approximation, see the docs).
TIMEFRAMES: dict[str, tuple[str, ...]] = {
    "All": (),
    "Daily": ("daily",),
    "Hourly": ("hourly",),
    "Intraday": INTRADAY,
    "Weekly": ("weekly",),
    "Monthly": ("monthly",),
    "Combo": TIER_TIMEFRAMES["daily_intraday"],
    "DailyIntraday": TIER_TIMEFRAMES["daily_intraday"],
}
Text = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]
Values = Annotated[list[Text], Field(max_length=MAX_VALUES)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
# Values may be repeated or joined with commas; the browser page's ``limit`` is ``per_page``.
SPLIT = QueryAliases(
    names={"pattern_types": "pattern_types", "symbols": "symbols", "limit": "per_page"},
    split=frozenset({"pattern_types", "symbols"}),
)


class ScanQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern_types: Values = []
    symbols: Annotated[list[SymbolName], Field(max_length=MAX_VALUES)] = []
    confidence_min: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5
    rs_min: Finite | None = None
    vol_min: Finite | None = None
    rsi_range: Annotated[str, Field(max_length=64, description="min,max (0-100)")] | None = None
    timeframe: Literal[
        "All", "Daily", "Hourly", "Intraday", "Weekly", "Monthly", "Combo", "DailyIntraday"
    ] = "All"
    sectors: Values = []
    sector: Text | None = Field(default=None, description="a sector name; `all` = any")
    universe: Text | None = Field(default=None, description="a universe key, or keys joined with `:`")
    page: int = Field(default=1, description="below 1 counts as 1")
    per_page: int = Field(default=DEFAULT_PER_PAGE, description="clamped to 1-100; `limit` is the same")
    sort_by: Literal["confidence", "detected_at", "symbol", "rs", "volume"] = "confidence"
    sort_order: Literal["desc", "asc"] = "desc"


def _rsi_range(raw: str | None, errors: list[dict[str, str]]) -> tuple[float | None, float | None]:
    """``min,max`` (or ``min``) clamped to 0-100 and put in order, as upstream does; a value that is not
    a finite number is an error."""
    if raw is None:
        return None, None
    parts = [p.strip() for p in raw.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 2 or not all(v == v and abs(v) != float("inf") for v in values):
        errors.append({"loc": "query.rsi_range", "msg": "expected min,max: two numbers from 0 to 100"})
        return None, None
    low, high = (min(max(v, 0.0), 100.0) for v in (values[0], values[1] if len(values) > 1 else 100.0))
    return (low, high) if low <= high else (high, low)


def _filter(hub: HubState, query: ParsedQuery[ScanQuery]) -> tuple[ScanFilter, IndicatorFilter]:
    """Our scan filter and the indicator bounds; raises :class:`ApiError` 400 listing every value that
    names nothing or does not parse."""
    params = query.params
    errors: list[dict[str, str]] = []
    patterns = _canonical_patterns(hub, params.pattern_types, query.loc("pattern_types"), errors)
    rsi_min, rsi_max = _rsi_range(params.rsi_range, errors)
    universes: tuple[str, ...] = ()
    if params.universe is not None:
        keys = params.universe.split(UNIVERSE_SEPARATOR)
        if not all(is_universe_key(k) for k in keys):
            errors.append({"loc": "query.universe", "msg": "not a universe key or keys joined with ':'"})
        universes = (params.universe,)
    if errors:
        raise query_error(errors)
    sectors = list(params.sectors)
    if params.sector is not None and params.sector.casefold() != "all":
        sectors.append(params.sector)
    scan_filter = ScanFilter(
        patterns=tuple(patterns),
        symbols=tuple(params.symbols),
        universes=universes,
        sectors=tuple(sectors),
        timeframes=TIMEFRAMES[params.timeframe],
        confidence_min=_real_bound(params.confidence_min, lower=True),
        active_only=True,
    )
    indicators = IndicatorFilter(
        rs_min=None if params.rs_min is None else max(params.rs_min, 0.0),
        vol_min=None if params.vol_min is None else max(params.vol_min, 0.0),
        rsi_min=rsi_min,
        rsi_max=rsi_max,
    )
    return scan_filter, indicators


@operation(
    summary="TickStock: scan stored events by page",
    tags=["tickstock"],
    query=ScanQuery,
    extra_query={"limit": {"type": "integer", "description": "the browser page's name for `per_page`"}},
    description=__doc__.split("\n\n", 1)[1],
    responses={200: TickStockScan},
    errors=(400,),
)
@requires("patterns:read")
async def scan(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    query = parse_query(ScanQuery, request, aliases=SPLIT)
    params = query.params
    filt, indicators = _filter(hub, query)
    per_page = min(max(params.per_page, 1), MAX_PER_PAGE)
    page = max(params.page, 1)
    # Python's ints do not overflow; the offset is cut at the window, past which every page is empty.
    offset = min((page - 1) * per_page, DEFAULT_WINDOW)
    by = INDICATOR_SORTS.get(params.sort_by)
    sort = Sort("detected_at", "desc") if by is not None else Sort(params.sort_by, params.sort_order)
    subject = request.state.principal.subject
    cache = hub.cache
    my = None
    if cache is not None and params.universe is not None and MY_UNIVERSE in params.universe.split(":"):
        my = await cache.user_universe(subject)
    started = time.perf_counter()

    async def compute() -> Computed:
        resolver = cache.resolver if cache is not None else None
        async with hub.pool.connection() as conn:
            found = await window_page(
                conn,
                filt,
                sort=sort,
                indicators=indicators,
                by=by,
                order=params.sort_order,
                limit=per_page,
                offset=offset,
                subject=subject,
                resolver=resolver,
            )  # ScanError: a 400
        body: dict[str, Any] = {
            "patterns": [scan_row(r) for r in found.items],
            "pagination": {
                "page": page,
                "per_page": per_page,
                "total": found.total,
                "pages": -(-found.total // per_page),
                "capped": found.capped,
            },
        }
        return Computed(dumps(body), scan_ttl_s(hub.settings, filt, found.items))

    key = {
        "tickstock": "scan",
        "f": filt.fingerprint(),
        "i": [indicators.rs_min, indicators.vol_min, indicators.rsi_min, indicators.rsi_max],
        "s": [params.sort_by, params.sort_order],
        "p": [page, per_page],
        "my": [list(my.symbols), list(my.universe_keys)] if my is not None else None,
    }
    served = await serve(cache, "scan", key, scan_dependencies(filt), compute)
    query_ms = round((time.perf_counter() - started) * 1000, 3)
    tail = dumps({"cache_info": {"cached": served.hit, "query_time_ms": query_ms}})
    return Response(
        served.body[:-1] + b"," + tail[1:], media_type="application/json", headers={"X-Cache": served.outcome}
    )
