"""Request validation shared by the resource routes: a bounded JSON body read into a pydantic model,
query parameters read into one, and pydantic errors as the problem document's ``errors``
(``{"loc": "body.symbols[3].name", "msg": "..."}``), plus the symbol and universe-key field types.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError
from starlette.requests import Request

from api.errors import ApiError
from hub.model import EventError, canonical_symbol
from store.universes import is_universe_key

__all__ = [
    "MAX_ERRORS", "SymbolName", "UniverseKey", "field_errors", "read_body", "read_bytes", "read_model", "read_query",
]

MAX_ERRORS = 50  # field errors listed in one problem document

M = TypeVar("M", bound=BaseModel)


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def field_errors(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    """Pydantic's errors as ``[{"loc": "<prefix>.a[0].b", "msg": "..."}]``, the first :data:`MAX_ERRORS`."""
    errors = exc.errors(include_url=False)[:MAX_ERRORS]
    return [{"loc": _loc(prefix, e["loc"]), "msg": e["msg"]} for e in errors]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; PostgreSQL does not


async def read_bytes(request: Request, *, max_bytes: int) -> bytes:
    """The raw body, refused with :class:`ApiError` 413 as soon as it is known to exceed ``max_bytes``
    (from ``Content-Length`` before reading, or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(f"the body is larger than {max_bytes} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(f"the body is larger than {max_bytes} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, *, max_bytes: int) -> Any:
    """The request's JSON body. Raises :class:`ApiError` 413 beyond ``max_bytes``, 400 if not JSON."""
    body = await read_bytes(request, max_bytes=max_bytes)
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError("the body is not valid JSON",
                       errors=[{"loc": "body", "msg": "not valid JSON"}]) from None


def read_model(model: type[M], document: Any) -> M:
    """``document`` (a decoded body) validated as ``model``; raises :class:`ApiError` 400 listing fields."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ApiError("the body is not valid", errors=field_errors(exc, "body")) from None


def read_query(model: type[M], request: Request, *, lists: tuple[str, ...] = ()) -> M:
    """The query parameters validated as ``model``; names in ``lists`` may repeat and arrive as lists."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in lists:
            params.setdefault(key, []).append(value)
        elif key in params:
            raise ApiError(f"{key} may be given once",
                           errors=[{"loc": f"query.{key}", "msg": "given more than once"}])
        else:
            params[key] = value
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise ApiError("the query is not valid", errors=field_errors(exc, "query")) from None


def _symbol(value: object) -> str:
    try:
        return canonical_symbol(value)  # type: ignore[arg-type]  # it rejects non-strings itself
    except EventError as exc:
        raise PydanticCustomError("invalid_symbol", exc.detail) from None


def _universe_key(value: str) -> str:
    if not is_universe_key(value):
        raise PydanticCustomError(
            "invalid_universe_key",
            "a universe key is 1-64 characters of a-z 0-9 _ - starting with a letter or digit",
        )
    return value


SymbolName = Annotated[str, PlainValidator(_symbol)]
"""A symbol, upper-cased and checked against the symbol alphabet."""
UniverseKey = Annotated[str, AfterValidator(_universe_key)]
"""A universe key as the ``universes`` table spells them (existence is checked separately)."""
