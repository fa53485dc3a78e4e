"""TickStock's per-user reads, over our per-user state: ``/api/users/watchlists`` (our watchlists, which
are keyed by name: the name is the ``id``) and ``/api/users/filter-presets`` (our saved scan filters,
none of them a default). The caller is the token's subject; upstream's ``X-User-ID`` is ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import requires
from api.openapi import operation
from api.routes.compat.models import TickStockFilterPresets, TickStockWatchlists
from api.routes.users import caller_subject, stamped
from api.state import HubState
from api.validation import read_query
from store.users import list_filters, list_watchlists

__all__ = ["routes"]


class _NoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")


@operation(
    summary="TickStock: the caller's watchlists",
    tags=["tickstock"],
    query=_NoQuery,
    responses={200: TickStockWatchlists},
    errors=(400,),
)
@requires("patterns:read")
async def watchlists(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    read_query(_NoQuery, request)
    async with hub.pool.connection() as conn:
        rows = await list_watchlists(conn, caller_subject(request))
    return JSONResponse({"watchlists": [{"id": r["name"], **stamped(r)} for r in rows]})


@operation(
    summary="TickStock: the caller's filter presets",
    tags=["tickstock"],
    query=_NoQuery,
    responses={200: TickStockFilterPresets},
    errors=(400,),
)
@requires("patterns:read")
async def filter_presets(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    read_query(_NoQuery, request)
    async with hub.pool.connection() as conn:
        rows = await list_filters(conn, caller_subject(request))
    presets = [{"id": r["id"], "name": r["name"], "filters": r["filter"], "is_default": False} for r in rows]
    return JSONResponse({"presets": presets})


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/api/users/watchlists", watchlists, methods=["GET"]),
        Route(f"{prefix}/api/users/filter-presets", filter_presets, methods=["GET"]),
    ]
