"""``/api/patterns/…`` reads (scope ``patterns:read``): scan, one event, daily stats.

``GET /api/patterns/scan`` query parameters (repeat a filter to OR its values; filters AND together):
``pattern``, ``symbol``, ``universe`` (a key, ``my``, or keys joined with ``:``), ``sector``,
``timeframe``, ``type``, ``confidence_min``/``confidence_max`` (0-1), ``detected_after`` (inclusive)
/ ``detected_before`` (exclusive, RFC 3339), ``active_only``, ``history``, ``sort`` (``detected_at`` |
``confidence`` | ``symbol``), ``order`` (``desc`` | ``asc``), ``limit`` (1-500) and ``cursor`` (the
previous page's ``next_cursor``; valid only with the same filters and sort). Pages follow a keyset, so
they stay stable while events arrive.

A pattern instance is (symbol, pattern, timeframe, ``detected_at``): its ``pattern_updated`` and
``pattern_expired`` events carry the detection's ``detected_at``. A scan shows the latest event of
each instance (the filters apply to it); ``history=true`` shows every stored event, the older ones
with ``superseded: true``. ``active_only`` drops an instance whose latest event is
``pattern_expired`` or whose ``expires_at`` has passed.

TickStock's names are accepted too: ``pattern_types`` and ``symbols`` (comma-separated), ``per_page``
(= ``limit``), ``sort_by`` / ``sort_order`` and ``page``. ``page`` > 1 skips rows with ``OFFSET``: such
pages shift when new events arrive; follow ``next_cursor`` instead. Unknown parameters are a 400.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import requires
from api.cache import digest, dumps
from api.cursors import scan_after
from api.errors import ApiError
from api.hotreads import hot_response
from api.openapi import link, operation
from api.querymemo import QueryMemo
from api.routes.pattern_models import PatternEvent, ScanPage, Stats, event_json, json_time
from api.routes.scan_cache import scan_body, scan_dependencies, scan_key, scan_ttl_s
from api.state import HubState
from api.validation import ParsedQuery, QueryAliases, parse_query, query_error, read_query
from hub.model import RFC3339 as _RFC3339
from hub.model import EventError, canonical_symbol
from store.cache import Computed, Served
from store.scans import (
    MAX_LIMIT,
    MY_UNIVERSE,
    UNIVERSE_SEPARATOR,
    ScanFilter,
    Sort,
    encode_cursor,
    get_event,
    scan_events,
)
from store.stats import pattern_stats

__all__ = ["LEGACY_QUERY", "PatternEvent", "ScanParams", "event_json", "routes", "scan_answer"]

DEFAULT_LIMIT = 50
DEFAULT_STATS_DAYS = 30
MAX_STATS_DAYS = 365
MAX_VALUES = 100  # per repeatable filter
MAX_PAGE_NUMBER = (2**63 - 1) // MAX_LIMIT + 1  # beyond it the OFFSET overflows bigint (it was a 500)
_SMALLEST_REAL = struct.unpack("f", struct.pack("I", 1))[0]  # 1.4e-45, the smallest positive float4
_UNIVERSE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
# TickStock's parameter names -> ours; the comma-separated ones are split.
_LEGACY = QueryAliases(
    names={
        "pattern_types": "pattern",
        "symbols": "symbol",
        "per_page": "limit",
        "sort_by": "sort",
        "sort_order": "order",
    },
    split=frozenset({"pattern_types", "symbols"}),
    values={"sort_by": {"timestamp": "detected_at", "time": "detected_at"}},
)


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value.upper()).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    raise ValueError("expected an RFC 3339 date-time with a timezone, e.g. 2024-05-01T14:30:00Z")


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
Confidence = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
# PostgreSQL text cannot hold NUL (a sector with one was a 500).
Values = Annotated[list[Annotated[str, Field(pattern=r"^[^\x00]*$")]], Field(max_length=MAX_VALUES)]
Timeframes = Annotated[
    list[Literal["1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly"]],
    Field(max_length=MAX_VALUES),
]


class ScanParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: Values = []
    symbol: Values = []
    universe: Values = []
    sector: Values = []
    timeframe: Timeframes = []
    type: Annotated[
        list[Literal["pattern_detected", "pattern_updated", "pattern_expired"]], Field(max_length=MAX_VALUES)
    ] = []
    confidence_min: Confidence | None = None
    confidence_max: Confidence | None = None
    detected_after: Timestamp | None = None
    detected_before: Timestamp | None = None
    active_only: bool = False
    history: bool = Field(default=False, description="every stored event, not only each instance's latest")
    sort: Literal["detected_at", "confidence", "symbol"] = "detected_at"
    order: Literal["desc", "asc"] = "desc"
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    page: Annotated[int, Field(ge=1, le=MAX_PAGE_NUMBER)] = 1
    cursor: Annotated[str, Field(max_length=4096)] | None = None


class StatsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    days: Annotated[int, Field(ge=1, le=MAX_STATS_DAYS)] = DEFAULT_STATS_DAYS
    pattern: Values = []
    timeframe: Timeframes = []


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


# TickStock's names for scan parameters (see the module docstring); documented beside ScanParams.
LEGACY_QUERY: dict[str, dict[str, Any]] = {
    "pattern_types": {"type": "string", "description": "TickStock's name: comma-separated `pattern` values"},
    "symbols": {"type": "string", "description": "TickStock's name: comma-separated `symbol` values"},
    "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": "TickStock's `limit`"},
    "sort_by": {
        "enum": ["detected_at", "confidence", "symbol", "timestamp", "time"],
        "type": "string",
        "description": "TickStock's `sort` (`timestamp` and `time` mean `detected_at`)",
    },
    "sort_order": {"enum": ["desc", "asc"], "type": "string", "description": "TickStock's `order`"},
}


def _canonical_patterns(
    hub: HubState, names: Iterable[str], loc: str, errors: list[dict[str, str]]
) -> list[str]:
    found = []
    for name in names:
        try:
            found.append(hub.catalog.current.canonical(name))
        except EventError as exc:
            errors.append({"loc": loc, "msg": exc.detail})
    return found


def _real_bound(value: float | None, *, lower: bool) -> float | None:
    """``value`` as a bound on a ``real`` column. Confidences are compared as ``real``, and a positive
    value too small for one (1e-300) made PostgreSQL fail the cast (a 500): as a lower bound it means
    "above zero" (the smallest positive real), as an upper bound zero."""
    if value is not None and value > 0 and struct.unpack("f", struct.pack("f", value))[0] == 0.0:
        return _SMALLEST_REAL if lower else 0.0
    return value


def _filter(hub: HubState, query: ParsedQuery[ScanParams]) -> ScanFilter:
    """The scan's filter from its checked parameters; raises :class:`ApiError` 400 listing every value
    that names nothing (a pattern, a symbol) or contradicts another."""
    params = query.params
    errors: list[dict[str, str]] = []
    patterns = _canonical_patterns(hub, params.pattern, query.loc("pattern"), errors)
    symbols = []
    for raw in params.symbol:
        try:
            symbols.append(canonical_symbol(raw))
        except EventError as exc:
            errors.append({"loc": query.loc("symbol"), "msg": exc.detail})
    for value in params.universe:
        keys = value.split(UNIVERSE_SEPARATOR)
        if not all(k == MY_UNIVERSE or _UNIVERSE_KEY.fullmatch(k) for k in keys):
            errors.append(
                {
                    "loc": "query.universe",
                    "msg": f"{value!r} is not a universe key, 'my' or keys joined with ':'",
                }
            )
    if (
        params.confidence_min is not None
        and params.confidence_max is not None
        and params.confidence_min > params.confidence_max
    ):
        errors.append({"loc": "query.confidence_min", "msg": "is greater than confidence_max"})
    if (
        params.detected_after is not None
        and params.detected_before is not None
        and params.detected_after >= params.detected_before
    ):
        errors.append({"loc": "query.detected_after", "msg": "is not before detected_before"})
    if params.cursor is not None and params.page > 1:
        errors.append({"loc": "query.page", "msg": "page cannot be combined with cursor"})
    if errors:
        raise query_error(errors)
    return ScanFilter(
        confidence_min=_real_bound(params.confidence_min, lower=True),
        confidence_max=_real_bound(params.confidence_max, lower=False),
        patterns=tuple(patterns),
        symbols=tuple(symbols),
        universes=tuple(params.universe),
        sectors=tuple(params.sector),
        timeframes=tuple(params.timeframe),
        types=tuple(params.type),
        detected_after=params.detected_after,
        detected_before=params.detected_before,
        active_only=params.active_only,
        history=params.history,
    )


@operation(
    summary="Scan stored events",
    tags=["patterns"],
    query=ScanParams,
    extra_query=LEGACY_QUERY,
    description=__doc__.split("\n\n", 1)[1],
    responses={200: ScanPage},
    errors=(400,),
    links={200: {"GetEvent": link("get_patterns_by_id", id="$response.body#/items/0/id")}},
)
@requires("patterns:read")
async def scan(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    catalog = hub.catalog.current  # what the query is validated against (scan_answer reads it too)
    query, subject = request.scope.get("query_string", b""), request.state.principal.subject
    served, content = await scan_answer(hub, request.app.state.scan_queries, query, subject=subject)
    # The rows and cursor are the cached body; the figures after them vary per request: a weak tag. The
    # same query string is answered before the router (api.hotreads) while the catalog is the same.
    return hot_response(
        request,
        served,
        content=content,
        compose=scan_body,
        weak=True,
        still=lambda: hub.catalog.current is catalog,  # by identity, as api.querymemo compares it
    )


async def scan_answer(
    hub: HubState, memo: QueryMemo[_Scan], query: bytes, *, subject: str
) -> tuple[Served, bytes]:
    """A scan for the token subject ``subject``, whatever the transport: ``query`` is the query string
    (REST's own; the NATS service's request written as one), ``memo`` the app's validated queries.
    Returns the served rows and cursor (cached by the hub's response cache) and the answer's body: them,
    plus ``query_ms`` and ``cache``. Raises :class:`ApiError` 400 for a bad parameter, ``ScanError`` and
    ``CursorError`` (400), and the store's errors (503), as the error table maps them."""
    catalog = hub.catalog.current
    known = memo.get(query, catalog)
    if known is None:
        known = _read_scan(hub, QueryParams(query))
        memo.put(query, catalog, known)
    params, filt, sort = known.params, known.filt, known.sort
    started = time.perf_counter()
    cache = hub.cache
    my = None
    if cache is not None and known.mine:
        my = await cache.user_universe(subject)
    offset = (params.page - 1) * params.limit

    async def compute() -> Computed:
        # The hub's resolver reads the in-process directory when it can be trusted, else SQL.
        resolver = cache.resolver if cache is not None else None
        async with hub.pool.connection() as conn:
            page = await scan_events(
                conn,
                filt,
                sort=sort,
                limit=params.limit,
                after=known.after,
                offset=offset,
                subject=subject,
                resolver=resolver,
            )  # ScanError: a 400
        next_cursor = None
        if page.last_values is not None:
            next_cursor = encode_cursor(
                page.last_values, sort=sort, fingerprint=known.fingerprint, codec=hub.cursors
            )
        return Computed(
            dumps({"items": [event_json(r) for r in page.items], "next_cursor": next_cursor}),
            scan_ttl_s(hub.settings, filt, page.items),
        )

    if cache is None:
        served = Served((await compute()).body, "bypass", None)
    else:
        # "my" is replaced by what the caller saved, so callers with the same universe share entries.
        key = known.key if my is None else digest([known.key, list(my.symbols), list(my.universe_keys)])
        served = await cache.fetch("scan", key, scan_dependencies(filt), compute)
    query_ms = (time.perf_counter() - started) * 1000
    if my is not None:  # the caller's own universe: not an answer for anyone else (api.hotreads)
        served = replace(served, source=None)
    return served, scan_body(served.body, served.age_s if served.hit else None, query_ms)


@dataclass(frozen=True)
class _Scan:
    """What a scan's query string comes to, kept by its raw text (:class:`api.querymemo.QueryMemo`)."""

    params: ScanParams
    filt: ScanFilter
    sort: Sort
    fingerprint: str
    after: tuple[Any, ...] | None
    key: str  # the cache key, but for the caller's own universe when ``mine``
    mine: bool  # a universe filter names "my"


def _read_scan(hub: HubState, source: QueryParams) -> _Scan:
    """Validate and normalise a scan's query; raises :class:`ApiError` 400 (see :func:`_filter`)."""
    query = parse_query(ScanParams, source, aliases=_LEGACY)
    params, filt = query.params, _filter(hub, query)
    sort = Sort(params.sort, params.order)
    fingerprint = filt.fingerprint()
    after = (
        None if params.cursor is None else scan_after(hub, params.cursor, sort=sort, fingerprint=fingerprint)
    )
    key = scan_key(
        params, fingerprint=fingerprint, sort=sort, offset=(params.page - 1) * params.limit, after=after
    )
    mine = any(MY_UNIVERSE in u.split(UNIVERSE_SEPARATOR) for u in filt.universes)
    return _Scan(params, filt, sort, fingerprint, after, key, mine)


@operation(
    summary="One stored event",
    tags=["patterns"],
    query=NoParams,
    responses={200: PatternEvent},
    errors=(400, 404),
)
@requires("patterns:read")
async def show(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    read_query(NoParams, request)
    async with hub.pool.connection() as conn:
        # An id with NUL cannot be stored (and PostgreSQL refuses to compare one): absent, not a 500.
        event_id = request.path_params["id"]
        row = None if "\x00" in event_id else await get_event(conn, event_id)
    if row is None:
        raise ApiError("no such pattern event", status=404)
    return JSONResponse(event_json(row))


@operation(
    summary="Event counts per pattern, timeframe and day",
    tags=["patterns"],
    query=StatsParams,
    responses={200: Stats},
    errors=(400,),
)
@requires("patterns:read")
async def stats(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    params = read_query(StatsParams, request)
    errors: list[dict[str, str]] = []
    patterns = _canonical_patterns(hub, params.pattern, "query.pattern", errors)
    if errors:
        raise query_error(errors)
    async with hub.pool.connection() as conn:
        by_pattern, by_day = await pattern_stats(
            conn, days=params.days, patterns=patterns, timeframes=params.timeframe
        )
    return JSONResponse(
        {
            "days": params.days,
            "by_pattern": [{**r, "last_detected_at": json_time(r["last_detected_at"])} for r in by_pattern],
            "by_day": [{"day": r["day"].isoformat(), "events": r["events"]} for r in by_day],
        }
    )


# The fixed paths come before /{id} (and api.routes.definitions before these): an event whose id is
# "scan", "stats" or "definitions" is only reachable through a scan.
routes = [
    Route("/api/patterns/scan", scan, methods=["GET"]),
    Route("/api/patterns/stats", stats, methods=["GET"]),
    Route("/api/patterns/{id}", show, methods=["GET"]),
]
