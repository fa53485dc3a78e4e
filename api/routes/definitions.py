"""``/api/patterns/definitions``: the pattern catalog (scope ``patterns:read``), and one definition
created or changed at run time (scope ``admin``).

``PUT /api/patterns/definitions/{name}`` takes ``aliases``, ``category``, ``direction``,
``description``, ``timeframes`` and ``enabled``; a field left out keeps its stored value (or its
default for a new definition; a new one needs ``category``). The same request twice changes nothing
the second time. A name or alias that already names another definition (spellings match ignoring
case, whitespace, ``_`` and ``-``) is a 409 listing them, and nothing changes. The node that answers
uses the new definition at once; every other node reloads its catalog when PostgreSQL announces the
change (milliseconds). Events dead-lettered ``unknown_pattern`` meanwhile are replayed with
``POST /api/admin/dlq/replay?reason=unknown_pattern`` (or ``tickstock dlq replay --reason unknown_pattern``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import requires
from api.cache import REFERENCE_GENERATION, dumps, serve
from api.errors import ApiError
from api.hotreads import hot_response
from api.jsonbound import MAX_DEPTH
from api.openapi import operation
from api.routes.pattern_models import Definition, Definitions
from api.routes.symbols import REFERENCE_TTL_S
from api.state import HubState
from api.validation import read_body, read_model, read_query
from hub.model import Timeframe
from store.cache import Computed, Dependencies
from store.definitions import list_definitions, put_definition

__all__ = ["DefinitionChange", "DefinitionWritten", "check_name", "routes"]

_REFERENCE = Dependencies(strict=(REFERENCE_GENERATION,))  # the catalog's answer: reference data

NAME = re.compile(r"[a-z0-9_]{1,64}")
MAX_ALIASES = 32
MAX_ALIAS_CHARS = 64
MAX_DESCRIPTION_CHARS = 1000
# Letters and digits first (a spelling must keep one once spaces, '_' and '-' are ignored), then what
# the seeded aliases use: "Up/Down-gap side-by-side white lines", "Hikkake (modified)".
Alias = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 &()/._\-]*$", max_length=MAX_ALIAS_CHARS)]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DefinitionChange(BaseModel):
    """A definition's fields, each optional (left out: the stored value, or the default)."""

    model_config = ConfigDict(extra="forbid")

    aliases: list[Alias] | None = Field(
        default=None, max_length=MAX_ALIASES, description="replaces the stored aliases (default: none)"
    )
    category: Literal["candlestick", "chart", "indicator"] | None = Field(
        default=None, description="required for a new definition"
    )
    direction: Literal["bullish", "bearish", "neutral"] | None = Field(
        default=None, description="default neutral"
    )
    description: (
        Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS, pattern=r"^[^\x00-\x1f\x7f]*$")] | None
    ) = None
    timeframes: Annotated[list[Timeframe], Field(min_length=1, max_length=8)] | None = Field(
        default=None, description="default: all eight"
    )
    enabled: bool | None = None

    def fields(self) -> dict[str, object]:
        """The fields given, ready for :func:`store.definitions.put_definition`."""
        given = self.model_dump(exclude_none=True)
        if "timeframes" in given:
            given["timeframes"] = list(dict.fromkeys(given["timeframes"]))
        return given


class DefinitionWritten(Definition):
    created: bool = Field(description="true when the name was new (status 201)")
    changed: bool = Field(description="false when the definition already read so (nothing was written)")


NAME_PARAM = {"type": "string", "pattern": "^[a-z0-9_]{1,64}$", "description": "the canonical name"}


def check_name(name: str) -> str:
    """``name`` when it is a canonical name (``[a-z0-9_]{1,64}``); else :class:`ApiError` 400."""
    if not NAME.fullmatch(name):
        raise ApiError(
            "a pattern name is 1-64 of a-z, 0-9 and _",
            errors=[{"loc": "path.name", "msg": "must match ^[a-z0-9_]{1,64}$"}],
        )
    return name


@operation(
    summary="The pattern catalog",
    tags=["patterns"],
    query=NoParams,
    responses={200: Definitions},
    errors=(400,),
)
@requires("patterns:read")
async def definitions(request: Request) -> Response:
    """Answered from memory while the catalog is unchanged: a change (PUT here, ``tickstock patterns
    define``, a reference load) sends PostgreSQL's reference notice, which drops it on every node."""
    hub: HubState = request.app.state.hub
    read_query(NoParams, request)

    async def compute() -> Computed:
        async with hub.pool.connection() as conn:
            items = await list_definitions(conn)  # psycopg reads the text[] columns as lists
        return Computed(dumps({"items": items}), REFERENCE_TTL_S)

    served = await serve(hub.cache, "definitions", None, _REFERENCE, compute)
    return hot_response(request, served)


@operation(
    summary="Create or change a pattern definition",
    tags=["patterns"],
    description=__doc__.split("\n\n", 1)[1],
    path={"name": NAME_PARAM},
    body=DefinitionChange,
    responses={200: DefinitionWritten, 201: DefinitionWritten},
    errors=(400, 409, 413),
)
@requires("admin")
async def put_definition_route(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    name = check_name(request.path_params["name"])
    body = read_model(
        DefinitionChange,
        await read_body(request, max_bytes=hub.settings.admin_max_body_bytes, max_depth=MAX_DEPTH),
    )
    async with hub.pool.connection() as conn:  # DefinitionConflict: 409, DefinitionError: 400
        stored, created, changed = await put_definition(conn, name, body.fields())
    if changed:
        await hub.catalog.refresh(hub.pool)  # this node at once; the others on the notice
    document = {**stored, "created": created, "changed": changed}
    return JSONResponse(document, status_code=201 if created else 200)


routes = [
    Route("/api/patterns/definitions", definitions, methods=["GET"]),
    Route("/api/patterns/definitions/{name}", put_definition_route, methods=["PUT"]),
]
