"""TickStock's reads of reference data: pattern definitions, the symbol directory and its search, the
universes a user may choose from and their tickers. Each is one of our store reads, reshaped, behind
the response cache (invalidated with the reference data)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import requires
from api.cache import REFERENCE_GENERATION, dumps, serve
from api.errors import ApiError
from api.openapi import operation
from api.routes.compat.models import (
    MARKET,
    TickStockDefinitions,
    TickStockSymbols,
    TickStockSymbolSearch,
    TickStockUniverses,
    TickStockUniverseTickers,
    symbol_row,
)
from api.routes.symbols import REFERENCE_TTL_S
from api.state import HubState
from api.validation import read_query
from store.cache import Computed, Dependencies
from store.definitions import list_definitions
from store.symbols import SymbolQuery, search_symbols
from store.universes import is_universe_key, list_universes, universe_members

__all__ = ["routes"]

MAX_SYMBOLS = 5_000
DEFAULT_SYMBOLS = 1_000
MAX_SEARCH_RESULTS = 100
_REFERENCE = Dependencies(strict=(REFERENCE_GENERATION,))
Search = Annotated[str, StringConstraints(strip_whitespace=True, max_length=64, pattern=r"^[^\x00]*$")]


class _NoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SymbolsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    market: Literal["stocks", "crypto", "fx", "otc", "indices"] | None = Field(
        default=None, description="every symbol we hold is `stocks`; another market lists none"
    )
    search: Search | None = Field(default=None, description="a prefix of the symbol or of the name")
    limit: int = Field(default=DEFAULT_SYMBOLS, description="clamped to 1-5000")


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    query: Search | None = Field(default=None, description="a prefix of the symbol or of the name")


async def _json(hub: HubState, route: str, name: str, key: Any, build: Any) -> Response:
    """``build(conn)``'s document through the response cache, counted under our ``route`` (its
    metrics label) and keyed apart from our own routes' entries by ``name``."""

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            return Computed(dumps(await build(conn)), REFERENCE_TTL_S)

    served = await serve(hub.cache, route, {"tickstock": name, "key": key}, _REFERENCE, compute)
    return Response(served.body, media_type="application/json", headers={"X-Cache": served.outcome})


@operation(
    summary="TickStock: the pattern catalog",
    tags=["tickstock"],
    query=_NoQuery,
    responses={200: TickStockDefinitions},
    errors=(400,),
)
@requires("patterns:read")
async def definitions(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    read_query(_NoQuery, request)

    async def build(conn: Any) -> dict[str, Any]:
        items = await list_definitions(conn)  # psycopg reads the text[] columns as lists
        return {"patterns": items, "count": len(items)}

    return await _json(hub, "symbols", "definitions", None, build)


@operation(
    summary="TickStock: the symbol directory",
    tags=["tickstock"],
    query=SymbolsQuery,
    responses={200: TickStockSymbols},
    errors=(400,),
)
@requires("patterns:read")
async def symbols(request: Request) -> Response:
    """Query: ``market``, ``search`` (a prefix of the symbol or the name; upstream matched anywhere in
    them), ``limit`` (clamped to 1-5000, default 1000). In symbol order."""
    hub: HubState = request.app.state.hub
    params = read_query(SymbolsQuery, request)
    limit = min(max(params.limit, 1), MAX_SYMBOLS)

    async def build(conn: Any) -> dict[str, Any]:
        if params.market not in (None, MARKET):
            return {"symbols": [], "count": 0}
        page = await search_symbols(conn, SymbolQuery(q=params.search or None, limit=limit))
        rows = [symbol_row(r) for r in page.items]
        return {"symbols": rows, "count": len(rows)}

    return await _json(hub, "symbols", "symbols", [params.market, params.search, limit], build)


@operation(
    summary="TickStock: symbol search",
    tags=["tickstock"],
    query=SearchQuery,
    responses={200: TickStockSymbolSearch},
    errors=(400,),
)
@requires("patterns:read")
async def symbol_search(request: Request) -> Response:
    """Query: ``query`` (a prefix of the symbol or the name); at most 100 symbols, in symbol order."""
    hub: HubState = request.app.state.hub
    params = read_query(SearchQuery, request)

    async def build(conn: Any) -> dict[str, Any]:
        page = await search_symbols(conn, SymbolQuery(q=params.query or None, limit=MAX_SEARCH_RESULTS))
        return {"symbols": [{"symbol": r["symbol"], "name": r["name"]} for r in page.items]}

    return await _json(hub, "symbols", "search", params.query, build)


@operation(
    summary="TickStock: the universes to choose from",
    tags=["tickstock"],
    query=_NoQuery,
    responses={200: TickStockUniverses},
    errors=(400,),
)
@requires("patterns:read")
async def universes(request: Request) -> Response:
    """Every universe, by category (our kind) then largest first, as upstream orders them."""
    hub: HubState = request.app.state.hub
    read_query(_NoQuery, request)

    async def build(conn: Any) -> dict[str, Any]:
        rows = sorted(await list_universes(conn), key=lambda r: (r["kind"], -r["count"], r["key"]))
        items = [
            {
                "key": r["key"],
                "description": r["description"],
                "criteria": r["name"],
                "count": r["count"],
                "category": r["kind"],
            }
            for r in rows
        ]
        return {"universes": items, "total_universes": len(items)}

    return await _json(hub, "universes", "universes", None, build)


@operation(
    summary="TickStock: one universe's tickers",
    tags=["tickstock"],
    query=_NoQuery,
    responses={200: TickStockUniverseTickers},
    errors=(400,),
    path={"key": {"type": "string", "minLength": 1, "examples": ["sp500"]}},
)
@requires("patterns:read")
async def universe_tickers(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    read_query(_NoQuery, request)
    key: str = request.path_params["key"]
    if not is_universe_key(key):
        raise ApiError(f"no universe {key!r}", status=404)

    async def build(conn: Any) -> dict[str, Any]:
        members = (await universe_members(conn, [key])).get(key)
        if members is None:
            raise ApiError(f"no universe {key!r}", status=404)
        return {"universe_key": key, "tickers": members, "count": len(members)}

    return await _json(hub, "universe", "universe", key, build)


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/api/patterns/definitions", definitions, methods=["GET"]),
        Route(f"{prefix}/api/symbols", symbols, methods=["GET"]),
        Route(f"{prefix}/api/symbols/search", symbol_search, methods=["GET"]),
        Route(f"{prefix}/api/users/universe", universes, methods=["GET"]),
        Route(f"{prefix}/api/users/universe/{{key}}", universe_tickers, methods=["GET"]),
    ]
