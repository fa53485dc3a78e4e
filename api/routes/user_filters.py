"""``/api/users/filters…``: the caller's saved scan filters (reading needs ``patterns:read``, changing
needs ``universe:write``; keyed by the token subject like the rest of :mod:`api.routes.users`).

A saved filter holds the scan's query parameters, checked for type, range and the scan's fixed
vocabularies when saved; pattern, symbol, universe and sector stay free text (checked when scanned).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import requires
from api.errors import ApiError
from api.openapi import link, operation
from api.routes.symbols import NO_NUL
from api.routes.users import MAX_BODY_BYTES, MAX_NAME, caller_subject, stamped
from api.state import HubState
from api.validation import read_body, read_model
from hub.model import EVENT_TYPES, TIMEFRAMES
from store.users import create_filter, delete_filter, list_filters

__all__ = ["routes"]

MAX_FILTERS = 100
MAX_FILTER_VALUES = 100
MAX_FILTER_TEXT = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _strings(allowed: tuple[str, ...] = ()) -> PlainValidator:
    """A string, or a list of 1-100 strings, each 1-128 characters (a filter value may be one or many),
    each one of ``allowed`` if given."""

    def check(value: object) -> str | list[str]:
        items = value if isinstance(value, list) else [value]
        if (
            not items
            or len(items) > MAX_FILTER_VALUES
            or not all(
                isinstance(v, str) and 1 <= len(v) <= MAX_FILTER_TEXT and "\x00" not in v for v in items
            )
        ):
            raise PydanticCustomError(
                "string_or_list",
                f"expected a string or a list of 1-{MAX_FILTER_VALUES} strings, "
                f"each 1-{MAX_FILTER_TEXT} characters without NUL",
            )
        if allowed and not set(items) <= set(allowed):
            raise PydanticCustomError("not_allowed", "each value must be one of " + " ".join(allowed))
        return value  # type: ignore[return-value]  # checked above

    return PlainValidator(check)


def _strings_schema(allowed: tuple[str, ...] = ()) -> WithJsonSchema:
    item: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_TEXT, "pattern": NO_NUL}
    if allowed:
        item = {"enum": list(allowed), "type": "string"}
    return WithJsonSchema(
        {"anyOf": [item, {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_FILTER_VALUES}]}
    )


Strings = Annotated[str | list[str], _strings(), _strings_schema()]
Confidence = Annotated[float, Field(ge=0, le=1)]


class _ScanFilter(BaseModel):
    """The scan's query parameters, checked for type, range and the scan's fixed vocabularies (timeframe,
    type, sort, order); pattern, symbol, universe and sector stay free text."""

    model_config = ConfigDict(extra="forbid")

    pattern: Strings | None = None
    symbol: Strings | None = None
    universe: Strings | None = None
    sector: Strings | None = None
    timeframe: Annotated[str | list[str], _strings(TIMEFRAMES), _strings_schema(TIMEFRAMES)] | None = None
    type: Annotated[str | list[str], _strings(EVENT_TYPES), _strings_schema(EVENT_TYPES)] | None = None
    confidence_min: Confidence | None = None
    confidence_max: Confidence | None = None
    detected_after: AwareDatetime | None = None
    detected_before: AwareDatetime | None = None
    active_only: bool | None = None
    sort: Literal["detected_at", "confidence", "symbol"] | None = None
    order: Literal["asc", "desc"] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> _ScanFilter:
        low, high = self.confidence_min, self.confidence_max
        if low is not None and high is not None and low > high:
            raise ValueError("confidence_min is above confidence_max")
        if self.detected_after and self.detected_before and self.detected_after >= self.detected_before:
            raise ValueError("detected_after is not before detected_before")
        return self


class _NewFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME, pattern=NO_NUL)
    ]
    filter: _ScanFilter


class SavedFilter(_Strict):
    id: int
    name: str
    filter: _ScanFilter
    created_at: datetime


class SavedFilters(_Strict):
    items: list[SavedFilter]


@operation(summary="The caller's saved scan filters", tags=["users"], responses={200: SavedFilters})
@requires("patterns:read")
async def get_filters(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    async with hub.pool.connection() as conn:
        rows = await list_filters(conn, caller_subject(request))
    return JSONResponse({"items": [stamped(r) for r in rows]})


@operation(
    summary="Save a scan filter",
    tags=["users"],
    body=_NewFilter,
    responses={201: SavedFilter},
    errors=(400, 409, 413),
    headers={201: {"Location": {"type": "string"}}},
    links={201: {"DeleteFilter": link("delete_users_filters_by_id", id="$response.body#/id")}},
)
@requires("universe:write")
async def post_filter(request: Request) -> JSONResponse:
    """Body: ``{"name": …, "filter": {…scan query parameters…}}``. 201 with the saved filter and its
    id; 409 for a name the caller already uses or beyond 100 filters."""
    hub: HubState = request.app.state.hub
    body = read_model(_NewFilter, await read_body(request, max_bytes=MAX_BODY_BYTES))
    stored = body.filter.model_dump(mode="json", exclude_none=True)
    async with hub.pool.connection() as conn:  # DuplicateName, LimitExceeded: a 409 (api.errors)
        saved = await create_filter(conn, caller_subject(request), body.name, stored, max_filters=MAX_FILTERS)
    return JSONResponse(
        stamped(saved), status_code=201, headers={"Location": f"/api/users/filters/{saved['id']}"}
    )


@operation(summary="Delete a saved scan filter", tags=["users"], responses={204: None})
@requires("universe:write")
async def delete_one_filter(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    raw: str = request.path_params["id"]
    deleted = False
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        async with hub.pool.connection() as conn:
            deleted = await delete_filter(conn, caller_subject(request), int(raw))
    if not deleted:
        raise ApiError(f"no saved filter {raw!r}", status=404)
    return Response(status_code=204)


routes = [
    Route("/api/users/filters", get_filters, methods=["GET"]),
    Route("/api/users/filters", post_filter, methods=["POST"]),
    Route("/api/users/filters/{id}", delete_one_filter, methods=["DELETE"]),
]
