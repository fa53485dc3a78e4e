"""``/api/symbols``: search the symbol directory, one symbol in detail, the admin's bulk upsert."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import requires
from api.cache import REFERENCE_GENERATION, dumps, serve
from api.cursors import symbols_after
from api.errors import ApiError
from api.hotreads import hot_response
from api.openapi import link, operation
from api.state import HubState
from api.validation import MAX_ERRORS, SymbolName, path_symbol, read_body, read_model, read_query
from hub.model import TIMEFRAMES, EventType, Timeframe
from store.cache import Computed, Dependencies, Served
from store.symbols import SYMBOL_TYPES, SymbolQuery, encode_cursor, get_symbol, search_symbols, upsert_symbols
from store.universes import is_universe_key, unknown_universes

__all__ = ["MAX_UNION_PARTS", "NO_NUL", "SYMBOL_SCHEMA", "routes", "symbols_answer"]

REFERENCE_TTL_S = 300.0  # responses built on reference data only; a change invalidates them at once
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_UPSERT = 5_000
MAX_UPSERT_BYTES = 4 * 1024 * 1024
MAX_UNION_PARTS = 50

SYMBOL_SCHEMA = {
    "type": "string",
    "pattern": "^[A-Za-z0-9./^=$-]{1,15}$",
    "description": "a symbol in ACT notation (BRK.B); lower case is upper-cased",
}
SymbolType = Literal[
    "stock", "etf", "fund", "preferred", "warrant", "unit", "right", "note", "index", "other"
]

# -- GET /api/symbols -------------------------------------------------------------------------------

# PostgreSQL text cannot hold NUL: without this check a NUL in a filter or a field was a 500.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_NUL)]


def _symbol_type(value: str) -> str:
    if value not in SYMBOL_TYPES:
        raise PydanticCustomError("invalid_type", "type must be one of " + " ".join(SYMBOL_TYPES))
    return value


class _Search(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: Annotated[str, StringConstraints(strip_whitespace=True, max_length=64, pattern=NO_NUL)] | None = None
    sector: Text | None = None
    exchange: Text | None = None
    type: (
        Annotated[
            str, AfterValidator(_symbol_type), WithJsonSchema({"enum": list(SYMBOL_TYPES), "type": "string"})
        ]
        | None
    ) = None
    universe: list[str] = Field(
        default_factory=list, description="a universe key, or keys joined with `:` (their union); repeatable"
    )
    active: bool | None = None
    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, StringConstraints(max_length=256)] | None = None


def _union_keys(raw: list[str], loc: str) -> list[str]:
    """``["sp500:nasdaq100", "dow30"]`` -> ``["sp500", "nasdaq100", "dow30"]`` (distinct, in order)."""
    keys = list(dict.fromkeys(part for value in raw for part in value.split(":")))
    bad = [k for k in keys if not is_universe_key(k)]
    if bad:
        raise ApiError(
            "not a universe key: " + ", ".join(map(repr, bad)),
            errors=[{"loc": loc, "msg": f"{k!r} is not a universe key"} for k in bad[:MAX_ERRORS]],
        )
    if len(keys) > MAX_UNION_PARTS:
        raise ApiError(
            f"at most {MAX_UNION_PARTS} universes at once",
            errors=[{"loc": loc, "msg": f"{len(keys)} universes given"}],
        )
    return keys


def _fingerprint(search: _Search, universes: list[str]) -> str:
    filters = {
        "q": search.q or None,
        "sector": search.sector,
        "exchange": search.exchange,
        "type": search.type,
        "universe": sorted(universes),
        "active": search.active,
    }
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def _symbol_json(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "updated_at": row["updated_at"].isoformat()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Symbol(_Strict):
    symbol: str
    name: str
    exchange: str | None
    type: SymbolType
    sector: str | None
    industry: str | None
    market_cap: int | None
    active: bool
    updated_at: datetime


class SymbolPage(_Strict):
    items: list[Symbol]
    next_cursor: str | None = Field(description="pass as `cursor` (with the same filters) for the next page")


class LatestPattern(_Strict):
    id: str
    pattern: str
    timeframe: Timeframe
    confidence: float
    detected_at: datetime
    type: EventType


class SymbolDetail(Symbol):
    universes: list[str]
    latest_patterns: list[LatestPattern] = Field(description="the most recent events, newest first")


class Upserted(_Strict):
    upserted: int


@operation(
    summary="Search the symbol directory",
    tags=["symbols"],
    query=_Search,
    responses={200: SymbolPage},
    errors=(400,),
    links={200: {"GetSymbol": link("get_symbols_by_symbol", symbol="$response.body#/items/0/symbol")}},
)
@requires("patterns:read")
async def list_symbols(request: Request) -> Response:
    """Query: ``q`` (prefix of the symbol or the name), ``sector``, ``exchange``, ``type``, ``universe``
    (repeatable; ``a:b`` is a union), ``active``, ``limit`` (1-500), ``cursor`` (``next_cursor`` of the
    previous page of the same search)."""
    return hot_response(request, await symbols_answer(request.app.state.hub, request.query_params))


async def symbols_answer(hub: HubState, query: QueryParams) -> Served:
    """A page of the symbol directory, whatever the transport (REST's query string, the NATS service's
    request), from the hub's response cache. Raises :class:`ApiError` 400 for a bad parameter, an unknown
    universe or a bad cursor, and the store's errors (503), as the error table maps them."""
    search = read_query(_Search, query, lists=("universe",))
    universes = _union_keys(search.universe, "query.universe")
    fingerprint = _fingerprint(search, universes)
    after = None if search.cursor is None else symbols_after(hub, search.cursor, fingerprint=fingerprint)

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            unknown = await unknown_universes(conn, universes)
            if unknown:
                listed = sorted(unknown)
                raise ApiError(
                    "no such universe: " + ", ".join(listed),
                    errors=[{"loc": "query.universe", "msg": f"unknown universe {k!r}"} for k in listed],
                )
            page = await search_symbols(
                conn,
                SymbolQuery(
                    q=search.q or None,
                    sector=search.sector,
                    exchange=search.exchange,
                    type=search.type,
                    universes=tuple(universes),
                    active=search.active,
                    after=after,
                    limit=search.limit,
                ),
            )
        next_cursor = (
            None
            if page.next_after is None
            else encode_cursor(page.next_after, fingerprint=fingerprint, codec=hub.cursors)
        )
        return Computed(
            dumps({"items": [_symbol_json(r) for r in page.items], "next_cursor": next_cursor}),
            REFERENCE_TTL_S,
        )

    return await serve(
        hub.cache,
        "symbols",
        {"f": fingerprint, "after": after, "limit": search.limit},
        Dependencies(strict=(REFERENCE_GENERATION,)),
        compute,
    )


# -- GET /api/symbols/{symbol} ----------------------------------------------------------------------


@operation(
    summary="One symbol with its universes and latest patterns",
    tags=["symbols"],
    responses={200: SymbolDetail},
    path={"symbol": {"type": "string", "minLength": 1, "examples": ["AAPL", "BRK.B"]}},
)
@requires("patterns:read")
async def show_symbol(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    raw = request.path_params["symbol"]
    symbol = path_symbol(raw)

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            found = await get_symbol(conn, symbol)
        if found is None:
            raise ApiError(f"no symbol {symbol!r} in the directory", status=404)
        found["latest_patterns"] = [
            {**p, "detected_at": p["detected_at"].isoformat()} for p in found["latest_patterns"]
        ]
        return Computed(dumps(_symbol_json(found)), hub.settings.cache_ttl_s)

    # latest_patterns follows the events of every timeframe; the rest is reference data.
    served = await serve(
        hub.cache, "symbol", symbol, Dependencies(events=TIMEFRAMES, strict=(REFERENCE_GENERATION,)), compute
    )
    return hot_response(request, served)


# -- PUT /api/symbols -------------------------------------------------------------------------------

Short = Annotated[str, StringConstraints(strip_whitespace=True, max_length=128, pattern=NO_NUL)]


class _SymbolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Annotated[SymbolName, WithJsonSchema(SYMBOL_SCHEMA)]
    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256, pattern=NO_NUL)
    ]
    exchange: Short | None = None
    type: Annotated[
        str, AfterValidator(_symbol_type), WithJsonSchema({"enum": list(SYMBOL_TYPES), "type": "string"})
    ] = "stock"
    sector: Short | None = None
    industry: Short | None = None
    market_cap: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    active: bool = True


class _Upsert(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[_SymbolIn] = Field(max_length=MAX_UPSERT)


@operation(
    summary="Bulk upsert symbols",
    tags=["symbols"],
    body=_Upsert,
    responses={200: Upserted},
    errors=(400, 413),
)
@requires("admin")
async def put_symbols(request: Request) -> JSONResponse:
    """Body: ``{"symbols": [{symbol, name, exchange?, type?, sector?, industry?, market_cap?, active?}]}``,
    at most 5,000. A field left out keeps its stored value (or the default for a new symbol)."""
    hub: HubState = request.app.state.hub
    document = await read_body(request, max_bytes=MAX_UPSERT_BYTES)
    given = document.get("symbols") if isinstance(document, dict) else None
    if isinstance(given, list) and len(given) > MAX_UPSERT:
        raise ApiError(
            f"at most {MAX_UPSERT} symbols per request",
            status=413,
            errors=[{"loc": "body.symbols", "msg": f"{len(document['symbols'])} given"}],
        )
    body = read_model(_Upsert, document)
    first: dict[str, int] = {}
    duplicates = []
    for index, item in enumerate(body.symbols):
        seen = first.setdefault(item.symbol, index)
        if seen != index:
            duplicates.append(
                {"loc": f"body.symbols[{index}].symbol", "msg": f"{item.symbol} is also symbols[{seen}]"}
            )
    if duplicates:
        raise ApiError("a symbol appears more than once", errors=duplicates[:MAX_ERRORS])
    async with hub.pool.connection() as conn:
        upserted = await upsert_symbols(
            conn, [item.model_dump(exclude_unset=True) | {"symbol": item.symbol} for item in body.symbols]
        )
    if hub.cache is not None:
        await hub.cache.reference_changed()
    return JSONResponse({"upserted": upserted})


routes = [
    Route("/api/symbols", list_symbols, methods=["GET"]),
    Route("/api/symbols", put_symbols, methods=["PUT"]),
    Route("/api/symbols/{symbol:path}", show_symbol, methods=["GET"]),
]
