"""``/api/universes``: every universe with its member count; one universe, or a union, with members."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import requires
from api.cache import REFERENCE_GENERATION, dumps, serve
from api.errors import ApiError
from api.hotreads import hot_response
from api.openapi import link, operation
from api.routes.symbols import MAX_UNION_PARTS, REFERENCE_TTL_S
from api.state import HubState
from api.validation import read_query
from store.cache import Computed, Dependencies, Served
from store.universes import UNIVERSE_KINDS, get_universe, is_universe_key, list_universes, unknown_universes

__all__ = ["routes", "universes_answer"]


def _kind(value: str) -> str:
    if value not in UNIVERSE_KINDS:
        raise PydanticCustomError("invalid_kind", "kind must be one of " + " ".join(UNIVERSE_KINDS))
    return value


class _ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: (
        Annotated[
            str, AfterValidator(_kind), WithJsonSchema({"enum": list(UNIVERSE_KINDS), "type": "string"})
        ]
        | None
    ) = None


_REFERENCE = Dependencies(strict=(REFERENCE_GENERATION,))
Kind = Literal["index", "sector", "etf", "theme", "custom"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UniverseSummary(_Strict):
    key: str
    name: str
    kind: Kind
    description: str
    updated_at: datetime
    count: int = Field(description="members")


class UniverseList(_Strict):
    items: list[UniverseSummary]


class Member(_Strict):
    symbol: str
    name: str
    sector: str | None
    weight: float | None = Field(description="the index weight; null in a union")


class Universe(_Strict):
    key: str
    name: str
    kind: Kind | Literal["union"]
    description: str
    updated_at: datetime
    parts: list[str] | None = Field(default=None, description="a union's keys (only for kind `union`)")
    members: list[Member]
    count: int


def _universe_json(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "updated_at": row["updated_at"].isoformat()}


@operation(
    summary="Universes with member counts",
    tags=["universes"],
    query=_ListQuery,
    responses={200: UniverseList},
    errors=(400,),
    links={200: {"GetUniverse": link("get_universes_by_key", key="$response.body#/items/0/key")}},
)
@requires("patterns:read")
async def index(request: Request) -> Response:
    """Query: ``kind`` (index, sector, etf, theme, custom)."""
    return hot_response(request, await universes_answer(request.app.state.hub, request.query_params))


async def universes_answer(hub: HubState, params: QueryParams) -> Served:
    """Every universe with its member count, whatever the transport (REST's query string, the NATS
    service's request), from the hub's response cache. Raises :class:`ApiError` 400 for a bad parameter,
    and the store's errors (503), as the error table maps them."""
    query = read_query(_ListQuery, params)

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            rows = await list_universes(conn, kind=query.kind)
        return Computed(dumps({"items": [_universe_json(r) for r in rows]}), REFERENCE_TTL_S)

    return await serve(hub.cache, "universes", query.kind, _REFERENCE, compute)


@operation(
    summary="One universe, or a union, with its members",
    tags=["universes"],
    responses={200: Universe},
    path={"key": {"type": "string", "minLength": 1, "examples": ["dow30", "dow30:nasdaq100"]}},
)
@requires("patterns:read")
async def show(request: Request) -> Response:
    """``{key}`` is one key or several joined by ``:`` (their union, kind ``union``)."""
    hub: HubState = request.app.state.hub
    raw: str = request.path_params["key"]
    keys = list(dict.fromkeys(raw.split(":")))
    # A key that cannot exist is as absent as one that does not: 404 either way.
    if len(keys) > MAX_UNION_PARTS or not all(is_universe_key(k) for k in keys):
        raise ApiError(f"no universe {raw!r}", status=404)

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            universe = await get_universe(conn, keys)
            missing = sorted(await unknown_universes(conn, keys)) if universe is None else []
        if universe is None:
            raise ApiError("no such universe: " + ", ".join(missing), status=404)
        return Computed(dumps(_universe_json(universe)), REFERENCE_TTL_S)

    # The order of the keys is kept: a union's key, name and parts follow it.
    served = await serve(hub.cache, "universe", keys, _REFERENCE, compute)
    return hot_response(request, served)


routes = [
    Route("/api/universes", index, methods=["GET"]),
    Route("/api/universes/{key}", show, methods=["GET"]),
]
