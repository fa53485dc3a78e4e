"""The OpenAPI 3.1 document, generated from the routes.

An endpoint describes itself with :func:`operation` (applied above ``@requires(...)``, whose
``required_scope`` it reads); :func:`build_openapi` walks the app's ``Route`` objects and emits one
operation per method, with ``components.schemas`` generated from the pydantic models the operations
name. Every operation lists the problem documents (RFC 9457) it can answer with; guarded ones add
``bearerAuth``, 401, 403, 429 (the per-token rate limit) and 503 (authentication not configured or the
key set unavailable).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from api.errors import PROBLEM_TYPE
from api.problems import Problem

__all__ = [
    "OPENAPI_VERSION",
    "Content",
    "Operation",
    "build_openapi",
    "link",
    "operation",
]

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"
GUARD_ERRORS = (401, 403, 429, 503)  # bad token, missing scope, rate limit, auth not configured
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?}")

F = TypeVar("F", bound=Callable[..., Any])
Schema = dict[str, Any]


@dataclass(frozen=True)
class Content:
    """A response (or request) body that is not one pydantic model: a media type and a JSON Schema
    (which may ``$ref`` the entries of ``schemas``, added to ``components.schemas``)."""

    media_type: str = JSON
    schema: Schema = field(default_factory=dict)
    description: str | None = None
    schemas: Mapping[str, Schema] = field(default_factory=dict)


Body = type[BaseModel] | Content | None


@dataclass(frozen=True)
class Operation:
    summary: str
    tags: tuple[str, ...]
    description: str | None
    query: type[BaseModel] | None
    extra_query: Mapping[str, Schema]
    body: Body
    body_required: bool
    responses: Mapping[int, Body]
    errors: tuple[int, ...]
    path: Mapping[str, Schema]
    headers: Mapping[int, Mapping[str, Schema]]
    links: Mapping[int, Mapping[str, Schema]]


def link(operation_id: str, **parameters: str) -> Schema:
    """An OpenAPI link: how a response feeds another operation (``id="$response.body#/id"``)."""
    return {"operationId": operation_id, "parameters": parameters}


def operation(
    *,
    summary: str,
    tags: Sequence[str],
    responses: Mapping[int, Body],
    description: str | None = None,
    query: type[BaseModel] | None = None,
    extra_query: Mapping[str, Schema] | None = None,
    body: Body = None,
    body_required: bool = True,
    errors: Iterable[int] = (),
    path: Mapping[str, Schema] | None = None,
    headers: Mapping[int, Mapping[str, Schema]] | None = None,
    links: Mapping[int, Mapping[str, Schema]] | None = None,
) -> Callable[[F], F]:
    """Attach OpenAPI metadata to an endpoint; changes nothing about how it runs.

    ``responses`` maps each success status to a model, a :class:`Content`, or ``None`` (no body);
    ``errors`` lists the statuses answered with a problem document (401/403/429/503 are added for guarded
    endpoints, 404 for those with path parameters, 500 for all). ``query`` is the model the query
    string is validated against; ``extra_query`` adds parameters it does not name (aliases).
    ``links`` name, per success status, the operations the response feeds (see :func:`link`);
    operation ids are ``<method>_<path words>`` (``get_patterns_by_id``). ``description`` defaults to
    the endpoint's docstring.
    """

    def decorate(endpoint: F) -> F:
        endpoint.openapi = Operation(  # type: ignore[attr-defined]
            summary=summary,
            tags=tuple(tags),
            description=description if description is not None else inspect.getdoc(endpoint),
            query=query,
            extra_query=dict(extra_query or {}),
            body=body,
            body_required=body_required,
            responses=dict(responses),
            errors=tuple(errors),
            path=dict(path or {}),
            headers=dict(headers or {}),
            links=dict(links or {}),
        )
        return endpoint

    return decorate


class _Schemas:
    """Collects the models every operation names and generates their schemas in one pass, so that a
    model shared by several operations becomes one component."""

    def __init__(self) -> None:
        self.models: list[type[BaseModel]] = [Problem]
        self.extra: dict[str, Schema] = {}

    def add(self, body: Body) -> None:
        if isinstance(body, Content):
            for name, schema in body.schemas.items():
                if self.extra.setdefault(name, schema) != schema:
                    raise ValueError(f"two schemas named {name!r}")
        elif body is not None and body not in self.models:
            self.models.append(body)

    def build(self) -> tuple[dict[type[BaseModel], Schema], dict[str, Schema]]:
        keyed = [(m, "validation") for m in self.models]
        refs, top = models_json_schema(keyed, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
        defs: dict[str, Schema] = dict(top.get("$defs", {}))
        # Private names (``_Upsert``) read badly in the docs: the underscore is the route module's
        # business. They are request bodies, hence "Input" when the plain name is taken
        # (users._Universe beside universes.Universe).
        renames: dict[str, str] = {}
        for name in sorted(defs):
            if name.startswith("_"):
                new = name.lstrip("_")
                if new in defs or new in renames.values():
                    new += "Input"
                if new in defs or new in renames.values():
                    raise ValueError(f"schema name {new!r} is used twice")
                renames[name] = new
        defs = {renames.get(name, name): _rename(schema, renames) for name, schema in defs.items()}
        by_model = {m: _rename(refs[(m, "validation")], renames) for m in self.models}
        for name, schema in self.extra.items():
            if name in defs:
                raise ValueError(f"schema name {name!r} is used twice")
            defs[name] = schema
        return by_model, dict(sorted(defs.items()))


def _rename(value: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/schemas/"):
                name = v.rsplit("/", 1)[1]
                v = "#/components/schemas/" + renames.get(name, name)
            elif k == "title" and isinstance(v, str) and v in renames:
                v = renames[v]
            out[k] = _rename(v, renames)
        return out
    if isinstance(value, list):
        return [_rename(v, renames) for v in value]
    return value


def _without_null(schema: Schema) -> Schema:
    """A query parameter is absent or a string: ``X | None`` is just ``X`` there."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) != len(options):
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            merged = {**kept[0], **rest} if len(kept) == 1 else {"anyOf": kept, **rest}
            return merged
    if schema.get("default", 0) is None:
        schema = {k: v for k, v in schema.items() if k != "default"}
    return schema


def _query_parameters(
    model: type[BaseModel], extra: Mapping[str, Schema]
) -> tuple[list[Schema], dict[str, Schema]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    defs = schema.pop("$defs", {})
    required = set(schema.get("required", ()))
    params = []
    for name, prop in {**schema.get("properties", {}), **extra}.items():
        prop = _without_null({k: v for k, v in prop.items() if k != "title"})
        param: Schema = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop.pop("description")
        if prop.get("type") == "array":
            param["style"], param["explode"] = "form", True
        params.append(param)
    return params, defs


def _content(body: Body, refs: Mapping[type[BaseModel], Schema]) -> tuple[dict[str, Any] | None, str | None]:
    if body is None:
        return None, None
    if isinstance(body, Content):
        return {body.media_type: {"schema": body.schema}}, body.description
    return {JSON: {"schema": refs[body]}}, None


def _operation_id(method: str, path: str) -> str:
    """``GET /api/symbols/{symbol:path}`` -> ``get_symbols_by_symbol``."""
    words = [
        f"by_{m.group(1)}" if (m := _PARAM.fullmatch(part)) else re.sub(r"\W", "_", part)
        for part in path.strip("/").split("/")
        if part and part != "api"
    ]
    return "_".join([method.lower(), *words])


def _phrase(status: int) -> str:
    return HTTPStatus(status).phrase


def _describe(
    route: Route,
    method: str,
    op: Operation,
    refs: Mapping[type[BaseModel], Schema],
    components: dict[str, Schema],
) -> Schema:
    endpoint = route.endpoint
    scope: str | None = getattr(endpoint, "required_scope", None)
    names = _PARAM.findall(route.path)
    operation_id = _operation_id(method, route.path)
    doc: Schema = {"operationId": operation_id, "summary": op.summary, "tags": list(op.tags)}
    description = op.description or ""
    if scope is not None:
        note = (
            f"Requires a bearer token with the `{scope}` scope"
            + ("" if scope == "admin" else " (or `admin`)")
            + "."
        )
        description = f"{description}\n\n{note}" if description else note
    if description:
        doc["description"] = description
    params: list[Schema] = [
        {
            "name": n,
            "in": "path",
            "required": True,
            "schema": op.path.get(n, {"type": "string", "minLength": 1}),
        }
        for n in names
    ]
    if op.query is not None or op.extra_query:
        if op.query is None:
            raise ValueError(f"{operation_id}: extra_query needs a query model")
        query_params, defs = _query_parameters(op.query, op.extra_query)
        params += query_params
        for name, schema in defs.items():
            components.setdefault(name, schema)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        content, text = _content(op.body, refs)
        doc["requestBody"] = {
            "required": op.body_required,
            "content": content,
            **({"description": text} if text else {}),
        }
    responses: dict[str, Schema] = {}
    for status, body in sorted(op.responses.items()):
        content, text = _content(body, refs)
        responses[str(status)] = {
            "description": text or _phrase(status),
            **({"content": content} if content else {}),
        }
    errors = set(op.errors) | {500}
    if scope is not None:
        errors |= set(GUARD_ERRORS)
    if names:
        errors.add(404)
    for status in sorted(errors):
        entry = responses.setdefault(str(status), {"description": _phrase(status)})
        entry.setdefault("content", {})[PROBLEM_TYPE] = {
            "schema": {"$ref": REF_TEMPLATE.format(model="Problem")}
        }
    if scope is not None:
        responses["401"]["headers"] = {
            "WWW-Authenticate": {
                "description": '`Bearer realm="tickstock", error="invalid_token"`',
                "schema": {"type": "string"},
            }
        }
        responses["429"].setdefault("headers", {})["Retry-After"] = {
            "description": "seconds until a request is allowed again",
            "schema": {"type": "integer"},
        }
    for status, headers in op.headers.items():
        responses[str(status)].setdefault("headers", {}).update(
            {name: {"schema": schema} for name, schema in headers.items()}
        )
    for status, named in op.links.items():
        responses[str(status)]["links"] = dict(named)
    doc["responses"] = responses
    if scope is not None:
        doc["security"] = [{"bearerAuth": []}]
        doc["x-required-scope"] = scope
    return doc


def _routes(routes: Iterable[BaseRoute]) -> Iterable[Route]:
    for route in routes:
        if isinstance(route, Route):
            yield route


def build_openapi(
    routes: Iterable[BaseRoute], *, title: str, version: str, description: str | None = None
) -> Schema:
    """The OpenAPI 3.1 document of ``routes`` (the app's ``Route`` objects; mounts are skipped).

    Raises :class:`ValueError` for a route whose endpoint carries no :func:`operation` metadata, so a
    new route cannot ship undocumented.
    """
    found: list[tuple[Route, str, Operation]] = []
    schemas = _Schemas()
    for route in _routes(routes):
        op: Operation | None = getattr(route.endpoint, "openapi", None)
        if op is None:
            raise ValueError(
                f"route {route.path} has no OpenAPI metadata (decorate its endpoint with @operation)"
            )
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((route, method, op))
        schemas.add(op.body)
        for body in op.responses.values():
            schemas.add(body)
    refs, components = schemas.build()
    paths: dict[str, Schema] = {}
    for route, method, op in found:
        path = _PARAM.sub(r"{\1}", route.path)
        paths.setdefault(path, {})[method.lower()] = _describe(route, method, op, refs, components)
    info: Schema = {"title": title, "version": version}
    if description:
        info["description"] = description
    tags = sorted({t for _, _, op in found for t in op.tags})
    return {
        "openapi": OPENAPI_VERSION,
        "info": info,
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 with TICKSTOCK_JWT_SECRET in development; RS256/ES256 from "
                    "TICKSTOCK_JWKS_URL in production. Scopes travel in the `scope` claim.",
                }
            },
        },
    }
