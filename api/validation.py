"""Request validation shared by the routes: a bounded JSON body read into a pydantic model, the one
query reader, pydantic errors as the problem document's ``errors`` (``{"loc": "body.symbols[3].name",
"msg": "..."}``), plus the symbol and universe-key field types.

Every function here raises :class:`~api.errors.ApiError` with a documented status; none lets a bad
input through to a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar, get_origin

from pydantic import AfterValidator, BaseModel, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError
from starlette.datastructures import QueryParams
from starlette.requests import Request

from api.errors import ApiError
from hub.model import EventError, canonical_symbol
from hub.parsing import reject_constant
from store.universes import is_universe_key

__all__ = [
    "MAX_ERRORS",
    "ParsedQuery",
    "QueryAliases",
    "SymbolName",
    "UniverseKey",
    "field_errors",
    "parse_json",
    "parse_query",
    "query_error",
    "read_body",
    "read_bytes",
    "read_model",
    "read_query",
]

MAX_ERRORS = 50  # field errors listed in one problem document

M = TypeVar("M", bound=BaseModel)

# C0 and C1 control characters and DEL: no query value needs them, and PostgreSQL text cannot hold NUL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def field_errors(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    """Pydantic's errors as ``[{"loc": "<prefix>.a[0].b", "msg": "..."}]``, the first :data:`MAX_ERRORS`."""
    errors = exc.errors(include_url=False)[:MAX_ERRORS]
    return [{"loc": _loc(prefix, e["loc"]), "msg": e["msg"]} for e in errors]


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


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(
    raw: bytes, *, max_depth: int | None = None, loads: Callable[[bytes], Any] | None = None
) -> Any:
    """``raw`` decoded as JSON (NaN and Infinity refused), by ``loads`` when given (e.g. the event
    rules of :func:`hub.parsing.loads_json`). Raises :class:`ApiError` 400 when it is not JSON, or
    nests arrays and objects deeper than ``max_depth`` levels (``None``: Python's own recursion limit,
    also a 400)."""
    try:
        document = loads(raw) if loads is not None else json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(
            "the body is not valid JSON", errors=[{"loc": "body", "msg": "not valid JSON"}]
        ) from None
    if max_depth is not None and _deeper_than(document, max_depth):
        raise ApiError(
            f"the body nests arrays and objects deeper than {max_depth} levels",
            errors=[{"loc": "body", "msg": f"nested deeper than {max_depth} levels"}],
        )
    return document


async def read_body(request: Request, *, max_bytes: int, max_depth: int | None = None) -> Any:
    """The request's JSON body. Raises :class:`ApiError` 413 beyond ``max_bytes``, 400 if not JSON or
    nested deeper than ``max_depth`` (see :func:`parse_json`)."""
    return parse_json(await read_bytes(request, max_bytes=max_bytes), max_depth=max_depth)


def read_model(model: type[M], document: Any) -> M:
    """``document`` (a decoded body) validated as ``model``; raises :class:`ApiError` 400 listing fields."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ApiError("the body is not valid", errors=field_errors(exc, "body")) from None


# -- the query reader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryAliases:
    """Other names a route accepts for its query parameters (TickStock's, say): ``names`` maps an alias
    to the model field; an alias in ``split`` carries comma-separated values; ``values`` rewrites an
    alias's values (``{"sort_by": {"timestamp": "detected_at"}}``)."""

    names: Mapping[str, str] = field(default_factory=dict)
    split: frozenset[str] = frozenset()
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedQuery(Generic[M]):
    """The validated ``params`` and, for each field given, the parameter name the caller used."""

    params: M
    names: Mapping[str, str]

    def loc(self, name: str) -> str:
        """The error location of field ``name``: ``query.<the name the caller used>``."""
        return f"query.{self.names.get(name, name)}"


def query_error(errors: list[dict[str, str]]) -> ApiError:
    """A 400 listing ``errors`` (``{"loc": "query.x", "msg": …}``) in its detail too."""
    return ApiError(
        "invalid query: " + "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:MAX_ERRORS]),
        errors=errors[:MAX_ERRORS],
    )


def _is_list(model: type[BaseModel], name: str) -> bool:
    return get_origin(model.model_fields[name].annotation) is list


def parse_query(
    model: type[M],
    source: Request | QueryParams,
    *,
    lists: tuple[str, ...] = (),
    aliases: QueryAliases | None = None,
) -> ParsedQuery[M]:
    """The query string (a request's, or parameters another transport read) validated as ``model``, with
    the names the caller used.

    Fields annotated as lists (and names in ``lists``) may repeat and arrive as lists (an empty value
    adds nothing); any other parameter given twice, or under both its name and an alias, is an error. Raises :class:`ApiError`
    400 with ``errors`` located at ``query.<name>``: every unknown parameter at once (when the model
    forbids extra fields), then a value with a control character (NUL, CR, LF, DEL ...), a repeated
    parameter, and each wrong type or value out of range.
    """
    aliases = aliases or QueryAliases()
    query = source.query_params if isinstance(source, Request) else source
    fields = model.model_fields
    repeatable = {name for name in fields if name in lists or _is_list(model, name)}
    if model.model_config.get("extra") == "forbid":
        unknown = sorted({k for k in query if k not in fields and k not in aliases.names})
        if unknown:
            raise ApiError(
                f"unknown query parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                errors=[{"loc": f"query.{k}", "msg": "unknown parameter"} for k in unknown[:MAX_ERRORS]],
            )
    data: dict[str, Any] = {}
    used: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    for name, value in query.multi_items():
        target = aliases.names.get(name, name)
        if _CONTROL.search(value):
            errors.append({"loc": f"query.{name}", "msg": "contains a control character (NUL, CR, LF, ...)"})
            continue
        if target in used and used[target] != name:
            errors.append(
                {"loc": f"query.{name}", "msg": f"{name} and {used[target]} are the same parameter; give one"}
            )
            continue
        used[target] = name
        if target in repeatable:
            parts = [p.strip() for p in value.split(",")] if name in aliases.split else [value]
            data.setdefault(target, []).extend(p for p in parts if p)
        elif target in data:
            errors.append({"loc": f"query.{name}", "msg": "given more than once"})
        else:
            data[target] = aliases.values.get(name, {}).get(value, value)
    if not errors:
        try:
            return ParsedQuery(model.model_validate(data), used)
        except ValidationError as exc:
            for e in exc.errors(include_url=False, include_input=False, include_context=False):
                top = str(e["loc"][0]) if e["loc"] else ""
                errors.append({"loc": f"query.{used.get(top, top)}" if top else "query", "msg": e["msg"]})
    raise query_error(errors)


def read_query(
    model: type[M],
    source: Request | QueryParams,
    *,
    lists: tuple[str, ...] = (),
    aliases: QueryAliases | None = None,
) -> M:
    """The query parameters validated as ``model`` (see :func:`parse_query`, which also returns the
    names the caller used)."""
    return parse_query(model, source, lists=lists, aliases=aliases).params


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


def path_symbol(raw: str) -> str:
    """The canonical symbol in a path parameter; a value that cannot be a symbol names no resource, so
    it is :class:`ApiError` 404."""
    try:
        return canonical_symbol(raw)
    except EventError:
        raise ApiError(f"no symbol {raw!r}: {raw!r} is not a valid symbol", status=404) from None
