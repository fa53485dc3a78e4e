"""``/api/users/…``: the caller's universe, watchlists and saved scan filters.

Everything is keyed by the token subject: a caller reads and changes only their own state. Reading
needs ``patterns:read``, changing needs ``universe:write``. After a change to the universe the hub
publishes ``{"subject": …, "version": <updated_at>}`` on core NATS subject
``tickstock.users.universe.changed``, best effort (a failed publish is logged; the change stands).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Annotated, Any

from nats.errors import Error as NatsError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import requires
from api.errors import ApiError
from api.openapi import link, operation
from api.routes.symbols import SYMBOL_SCHEMA
from api.state import HubState
from api.validation import MAX_ERRORS, SymbolName, UniverseKey, read_body, read_model
from hub.subjects import UNIVERSE_CHANGED_SUBJECT
from store.symbols import unknown_symbols
from store.universes import unknown_universes
from store.users import (
    UserUniverse,
    delete_watchlist,
    get_user_universe,
    list_watchlists,
    patch_user_universe,
    put_watchlist,
    replace_user_universe,
)

__all__ = ["MAX_BODY_BYTES", "MAX_NAME", "caller_subject", "routes", "stamped"]

log = logging.getLogger("tickstock.api.users")

MAX_UNIVERSE_SYMBOLS = 2_000
MAX_UNIVERSE_KEYS = 50
MAX_WATCHLISTS = 50
MAX_WATCHLIST_SYMBOLS = 500
MAX_NAME = 64
MAX_BODY_BYTES = 256 * 1024


def caller_subject(request: Request) -> str:
    return str(request.state.principal.subject)


async def _check_exist(hub: HubState, fields: dict[str, tuple[list[str], bool]]) -> None:
    """Raise 400 listing every unknown item: ``fields`` maps a body field to ``(values, are_symbols)``."""
    errors: list[dict[str, str]] = []
    names: set[str] = set()
    async with hub.pool.connection() as conn:
        for field, (values, are_symbols) in fields.items():
            unknown = await (unknown_symbols if are_symbols else unknown_universes)(conn, values)
            what = "symbol" if are_symbols else "universe"
            errors += [
                {"loc": f"body.{field}[{i}]", "msg": f"unknown {what} {v!r}"}
                for i, v in enumerate(values)
                if v in unknown
            ]
            names |= unknown
    if errors:
        listed = sorted(names)
        raise ApiError(
            "unknown symbols or universes: "
            + ", ".join(listed[:MAX_ERRORS])
            + (f" and {len(listed) - MAX_ERRORS} more" if len(listed) > MAX_ERRORS else ""),
            errors=errors[:MAX_ERRORS],
        )


Symbol = Annotated[SymbolName, WithJsonSchema(SYMBOL_SCHEMA)]
Key = Annotated[UniverseKey, WithJsonSchema({"type": "string", "pattern": "^[a-z0-9][a-z0-9_\\-]{0,63}$"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserUniverseOut(_Strict):
    symbols: list[str]
    universe_keys: list[str]
    resolved_count: int = Field(description="distinct directory symbols the symbols and universes cover")
    updated_at: datetime | None = Field(description="null for a user who never set one")


class Watchlist(_Strict):
    name: str
    symbols: list[str]
    created_at: datetime
    updated_at: datetime


class Watchlists(_Strict):
    items: list[Watchlist]


# -- the user's universe ----------------------------------------------------------------------------


class _Universe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[Symbol] = Field(default_factory=list, max_length=MAX_UNIVERSE_SYMBOLS)
    universe_keys: list[Key] = Field(default_factory=list, max_length=MAX_UNIVERSE_KEYS)


class _UniversePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add_symbols: list[Symbol] = Field(default_factory=list, max_length=MAX_UNIVERSE_SYMBOLS)
    remove_symbols: list[Symbol] = Field(default_factory=list, max_length=MAX_UNIVERSE_SYMBOLS)
    add_universes: list[Key] = Field(default_factory=list, max_length=MAX_UNIVERSE_KEYS)
    remove_universes: list[Key] = Field(default_factory=list, max_length=MAX_UNIVERSE_KEYS)


async def _notify(hub: HubState, subject: str, universe: UserUniverse) -> None:
    version = universe.updated_at.isoformat() if universe.updated_at else None
    payload = json.dumps({"subject": subject, "version": version}).encode()
    try:
        await hub.nats.publish(UNIVERSE_CHANGED_SUBJECT, payload)
    except (NatsError, OSError) as exc:
        log.warning(
            "universe change of %r not announced on %s: %s",
            subject,
            UNIVERSE_CHANGED_SUBJECT,
            exc or type(exc).__name__,
        )


@operation(summary="The caller's universe", tags=["users"], responses={200: UserUniverseOut})
@requires("patterns:read")
async def get_universe(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    async with hub.pool.connection() as conn:
        universe = await get_user_universe(conn, caller_subject(request))
    return JSONResponse(universe.as_dict())


@operation(
    summary="Replace the caller's universe",
    tags=["users"],
    body=_Universe,
    responses={200: UserUniverseOut},
    errors=(400, 413),
)
@requires("universe:write")
async def put_universe(request: Request) -> JSONResponse:
    """Body: ``{"symbols": [...], "universe_keys": [...]}`` (at most 2,000 and 50), replacing both."""
    hub: HubState = request.app.state.hub
    body = read_model(_Universe, await read_body(request, max_bytes=MAX_BODY_BYTES))
    await _check_exist(hub, {"symbols": (body.symbols, True), "universe_keys": (body.universe_keys, False)})
    subject = caller_subject(request)
    async with hub.pool.connection() as conn:
        universe, changed = await replace_user_universe(
            conn,
            subject,
            symbols=body.symbols,
            universe_keys=body.universe_keys,
            max_symbols=MAX_UNIVERSE_SYMBOLS,
            max_universes=MAX_UNIVERSE_KEYS,
        )
    if changed:
        await _notify(hub, subject, universe)
    return JSONResponse(universe.as_dict())


@operation(
    summary="Change the caller's universe",
    tags=["users"],
    body=_UniversePatch,
    responses={200: UserUniverseOut},
    errors=(400, 413),
)
@requires("universe:write")
async def patch_universe(request: Request) -> JSONResponse:
    """Body: any of ``add_symbols``, ``remove_symbols``, ``add_universes``, ``remove_universes``;
    removals apply first. The result is bounded as for ``PUT``."""
    hub: HubState = request.app.state.hub
    body = read_model(_UniversePatch, await read_body(request, max_bytes=MAX_BODY_BYTES))
    await _check_exist(
        hub, {"add_symbols": (body.add_symbols, True), "add_universes": (body.add_universes, False)}
    )
    subject = caller_subject(request)
    async with hub.pool.connection() as conn:  # LimitExceeded: a 400 (api.errors)
        universe, changed = await patch_user_universe(
            conn,
            subject,
            add_symbols=body.add_symbols,
            remove_symbols=body.remove_symbols,
            add_universes=body.add_universes,
            remove_universes=body.remove_universes,
            max_symbols=MAX_UNIVERSE_SYMBOLS,
            max_universes=MAX_UNIVERSE_KEYS,
        )
    if changed:
        await _notify(hub, subject, universe)
    return JSONResponse(universe.as_dict())


# -- watchlists -------------------------------------------------------------------------------------


class _Watchlist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[Symbol] = Field(max_length=MAX_WATCHLIST_SYMBOLS)


WATCHLIST_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "examples": ["tech"],
    "description": f"1-{MAX_NAME} printable characters",
}


def stamped(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _watchlist_name(request: Request) -> str | None:
    name: str = request.path_params["name"]
    return name if 1 <= len(name) <= MAX_NAME and name.isprintable() else None


@operation(summary="The caller's watchlists", tags=["users"], responses={200: Watchlists})
@requires("patterns:read")
async def get_watchlists(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    async with hub.pool.connection() as conn:
        rows = await list_watchlists(conn, caller_subject(request))
    return JSONResponse({"items": [stamped(r) for r in rows]})


@operation(
    summary="Create or replace a watchlist",
    tags=["users"],
    body=_Watchlist,
    responses={200: Watchlist, 201: Watchlist},
    errors=(400, 409, 413),
    path={"name": WATCHLIST_NAME},
    links={
        s: {"DeleteWatchlist": link("delete_users_watchlists_by_name", name="$request.path.name")}
        for s in (200, 201)
    },
)
@requires("universe:write")
async def put_one_watchlist(request: Request) -> JSONResponse:
    """Body: ``{"symbols": [...]}`` (at most 500). 201 when the watchlist is new; 409 beyond 50."""
    hub: HubState = request.app.state.hub
    name = _watchlist_name(request)
    if name is None:
        raise ApiError(
            f"a watchlist name is 1-{MAX_NAME} printable characters",
            errors=[{"loc": "path.name", "msg": f"must be 1-{MAX_NAME} printable characters"}],
        )
    body = read_model(_Watchlist, await read_body(request, max_bytes=MAX_BODY_BYTES))
    await _check_exist(hub, {"symbols": (body.symbols, True)})
    async with hub.pool.connection() as conn:  # LimitExceeded: a 409 (api.errors)
        saved, created = await put_watchlist(
            conn, caller_subject(request), name, body.symbols, max_watchlists=MAX_WATCHLISTS
        )
    return JSONResponse(stamped(saved), status_code=201 if created else 200)


@operation(summary="Delete a watchlist", tags=["users"], responses={204: None}, path={"name": WATCHLIST_NAME})
@requires("universe:write")
async def delete_one_watchlist(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    name = _watchlist_name(request)
    deleted = False
    if name is not None:
        async with hub.pool.connection() as conn:
            deleted = await delete_watchlist(conn, caller_subject(request), name)
    if not deleted:
        raise ApiError(f"no watchlist {request.path_params['name']!r}", status=404)
    return Response(status_code=204)


routes = [
    Route("/api/users/universe", get_universe, methods=["GET"]),
    Route("/api/users/universe", put_universe, methods=["PUT"]),
    Route("/api/users/universe", patch_universe, methods=["PATCH"]),
    Route("/api/users/watchlists", get_watchlists, methods=["GET"]),
    Route("/api/users/watchlists/{name}", put_one_watchlist, methods=["PUT"]),
    Route("/api/users/watchlists/{name}", delete_one_watchlist, methods=["DELETE"]),
]
