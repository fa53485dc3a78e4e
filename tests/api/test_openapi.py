"""``GET /openapi.json`` (OpenAPI 3.1 built from the routes), ``GET /docs`` (Swagger UI from bundled
assets), ``GET /asyncapi.yaml`` and ``GET /schema/pattern-event-v1.json`` (shipped files). No servers are needed: the app is built and served in-process without its lifespan."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.app import create_app
from api.openapi import REF_TEMPLATE, build_openapi
from api.routes.docs import ASSETS, shipped
from api.routes.patterns import LEGACY_QUERY, PatternEvent, ScanParams
from api.settings import Settings
from tests.conftest import JWT_SECRET

PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parents[2]
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?}")
_ASSET_REF = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(Settings(jwt_secret=JWT_SECRET))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    # ASGITransport runs no lifespan, so no servers: these routes need none.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    """``(openapi path, method, endpoint)`` of every route the app serves (HEAD is implied by GET)."""
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield _PARAM.sub(r"{\1}", route.path), method.lower(), route.endpoint


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_every_route_is_documented_with_its_methods(app: Any, document: dict[str, Any]) -> None:
    served: dict[str, set[str]] = defaultdict(set)
    for path, method, _ in _routes(app):
        served[path].add(method)
    documented = {path: set(item) for path, item in document["paths"].items()}
    assert documented == served
    assert "/api/symbols/{symbol}" in documented  # {symbol:path} is an ordinary path parameter
    ids = [op["operationId"] for _, _, op in _operations(document)]
    assert len(ids) == len(set(ids))


def test_the_tickstock_routes_follow_the_prefix_setting(document: dict[str, Any]) -> None:
    compat = sorted(p for p in document["paths"] if p.startswith("/tickstock/"))
    assert len(compat) == 14 and "/tickstock/api/patterns/scan" in compat
    assert all(p.removeprefix("/tickstock").startswith("/api/") for p in compat)
    schema = document["paths"]["/tickstock/api/patterns/scan"]["get"]["responses"]["200"]["content"]
    assert schema["application/json"]["schema"] == {"$ref": REF_TEMPLATE.format(model="TickStockScan")}
    moved = build_openapi(
        create_app(Settings(jwt_secret=JWT_SECRET, compat_prefix="/ts/v2")).routes, title="t", version="1"
    )
    assert sorted(moved["paths"]) == sorted(p.replace("/tickstock/", "/ts/v2/") for p in document["paths"])
    off = build_openapi(
        create_app(Settings(jwt_secret=JWT_SECRET, compat=False)).routes, title="t", version="1"
    )
    assert sorted(off["paths"]) == sorted(p for p in document["paths"] if not p.startswith("/tickstock/"))


def test_path_parameters_come_from_the_route(document: dict[str, Any]) -> None:
    for path, _, op in _operations(document):
        names = _PARAM.findall(path)
        params = [p for p in op.get("parameters", []) if p["in"] == "path"]
        assert [p["name"] for p in params] == names, path
        assert all(p["required"] for p in params)
        if names:
            assert "404" in op["responses"], path


def test_guarded_operations_declare_bearer_auth_and_their_scope(app: Any, document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and scheme["bearerFormat"] == "JWT"
    guarded = 0
    for path, method, endpoint in _routes(app):
        op = document["paths"][path][method]
        scope = getattr(endpoint, "required_scope", None)
        if scope is None:
            assert "security" not in op and "x-required-scope" not in op, (method, path)
            continue
        guarded += 1
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        assert op["x-required-scope"] == scope
        assert f"`{scope}`" in op["description"]
        assert {"401", "403", "429", "503"} <= set(op["responses"]), (method, path)
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    assert guarded == 27 + 14  # our routes + the TickStock compatibility routes
    for path in (
        "/health",
        "/health/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/asyncapi.yaml",
        "/schema/pattern-event-v1.json",
    ):
        assert "security" not in document["paths"][path]["get"]


def test_every_error_is_a_problem_document(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) == {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "errors",
        "request_id",
    }
    assert set(problem["required"]) == {"title", "status", "detail"}
    field_error = document["components"]["schemas"]["FieldError"]
    assert set(field_error["properties"]) == {"loc", "msg"}
    ref = {"$ref": REF_TEMPLATE.format(model="Problem")}
    for path, method, op in _operations(document):
        assert "500" in op["responses"], (method, path)
        for status, response in op["responses"].items():
            if int(status) >= 400 and (path, status) != ("/health/ready", "503"):
                assert response["content"][PROBLEM] == {"schema": ref}, (method, path, status)
    # Two answers that are not problems: ingest's partial 429 and readiness's 503 carry their own bodies.
    ingest_429 = document["paths"]["/api/patterns"]["post"]["responses"]["429"]
    assert set(ingest_429["content"]) == {"application/json", PROBLEM}
    assert set(document["paths"]["/health/ready"]["get"]["responses"]["503"]["content"]) == {
        "application/json"
    }


def test_success_responses_are_documented(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(paths["/api/users/watchlists/{name}"]["put"]["responses"]) >= {"200", "201"}
    assert "content" not in paths["/api/users/watchlists/{name}"]["delete"]["responses"]["204"]
    assert paths["/api/users/filters"]["post"]["responses"]["201"]["headers"]["Location"]
    for path, method, op in _operations(document):
        assert any(200 <= int(s) < 300 for s in op["responses"]), (method, path)


def test_schemas_are_generated_from_the_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    expected = PatternEvent.model_json_schema(ref_template=REF_TEMPLATE)
    assert schemas["PatternEvent"] == expected
    # Strict where the shape is fixed, open where the body is the producer's own.
    assert schemas["PatternEvent"]["additionalProperties"] is False
    assert schemas["PatternEvent"]["properties"]["data"]["additionalProperties"] is True
    assert schemas["ScanPage"]["properties"]["items"]["items"] == {
        "$ref": REF_TEMPLATE.format(model="PatternEvent")
    }
    for name in (
        "Readiness",
        "IngestResults",
        "SymbolDetail",
        "Universe",
        "UserUniverseOut",
        "Watchlists",
        "SavedFilters",
        "DeadLetterPage",
        "DeadLetterDetail",
        "Stats",
        "Definitions",
    ):
        assert schemas[name]["additionalProperties"] is False, name
    # Request bodies are the models the routes validate against; no private names leak.
    body = document["paths"]["/api/users/universe"]["put"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": REF_TEMPLATE.format(model="UniverseInput")
    }
    assert not [name for name in schemas if name.startswith("_")]
    assert not [s["title"] for s in schemas.values() if s.get("title", "").startswith("_")]
    # The ingest body points at the shipped event schema, its $defs hoisted beside it.
    assert schemas["PatternEventV1"]["properties"]["detected_at"] == {
        "$ref": REF_TEMPLATE.format(model="PatternEventV1Timestamp")
    }


def test_links_name_existing_operations_and_their_parameters(document: dict[str, Any]) -> None:
    paths = {op["operationId"]: path for path, _, op in _operations(document)}
    found = 0
    for _, _, op in _operations(document):
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                found += 1
                target = paths[link["operationId"]]
                assert set(link["parameters"]) == set(_PARAM.findall(target)), link
    assert found >= 8


def test_query_parameters_follow_the_query_models(document: dict[str, Any]) -> None:
    scan = {p["name"]: p for p in document["paths"]["/api/patterns/scan"]["get"]["parameters"]}
    assert set(scan) == set(ScanParams.model_fields) | set(LEGACY_QUERY)
    assert all(p["in"] == "query" and not p["required"] for p in scan.values())
    assert scan["pattern"]["schema"]["type"] == "array"
    assert (scan["pattern"]["style"], scan["pattern"]["explode"]) == ("form", True)
    assert scan["limit"]["schema"] == {"default": 50, "maximum": 500, "minimum": 1, "type": "integer"}
    assert scan["cursor"]["schema"] == {"maxLength": 4096, "type": "string"}  # no null in a query string
    symbols = {p["name"]: p for p in document["paths"]["/api/symbols"]["get"]["parameters"]}
    assert symbols["universe"]["explode"] is True
    assert symbols["type"]["schema"]["enum"][0] == "stock"
    dlq = {p["name"] for p in document["paths"]["/api/admin/dlq"]["get"]["parameters"]}
    assert dlq == {"limit", "before", "reason", "replayed"}
    purge = {p["name"] for p in document["paths"]["/api/admin/dlq"]["delete"]["parameters"]}
    assert purge == {"reason", "replayed", "all"}
    replay = {p["name"]: p for p in document["paths"]["/api/admin/dlq/replay"]["post"]["parameters"]}
    assert set(replay) == {"reason", "limit"} and replay["reason"]["required"] is True
    assert scan["history"]["schema"] == {"default": False, "type": "boolean"}
    recent = document["paths"]["/api/patterns/stats/recent"]["get"]
    params = {p["name"]: p for p in recent["parameters"]}
    assert set(params) == {"minutes", "timeframe"}
    assert params["minutes"]["schema"] == {"default": 60, "maximum": 1440, "minimum": 1, "type": "integer"}
    assert params["timeframe"]["schema"]["type"] == "array"
    assert recent["responses"]["200"]["headers"]["X-Cache"]["schema"]["enum"][0] == "hit"
    assert recent["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RecentStats"
    }


def test_the_definition_put_is_described(document: dict[str, Any]) -> None:
    op = document["paths"]["/api/patterns/definitions/{name}"]["put"]
    assert op["x-required-scope"] == "admin"
    assert {"200", "201", "400", "409", "413"} <= set(op["responses"])
    assert op["responses"]["409"]["content"][PROBLEM]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": REF_TEMPLATE.format(model="DefinitionChange")
    }
    [name] = op["parameters"]
    assert (name["in"], name["schema"]["pattern"]) == ("path", "^[a-z0-9_]{1,64}$")
    schemas = document["components"]["schemas"]
    assert schemas["DefinitionChange"]["additionalProperties"] is False
    assert schemas["DefinitionChange"]["properties"]["aliases"]["anyOf"][0]["maxItems"] == 32
    assert set(schemas["DefinitionWritten"]["required"]) >= {"name", "aliases", "created", "changed"}


async def test_openapi_json_is_built_once_and_needs_no_token(app: Any, client: httpx.AsyncClient) -> None:
    first = await client.get("/openapi.json")
    assert first.status_code == 200
    cached = app.state.openapi
    assert (await client.get("/openapi.json")).json() == first.json() == cached
    assert app.state.openapi is cached


def test_a_route_without_metadata_is_refused() -> None:
    async def bare(request: Request) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(ValueError, match="no OpenAPI metadata"):
        build_openapi([Route("/bare", bare)], title="t", version="1")


async def test_the_docs_page_is_served_from_bundled_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.search(r"(?:https?:)?//", html)  # nothing absolute, not even protocol-relative
    references = _ASSET_REF.findall(html)
    assert references and all(ref.startswith("/docs/assets/") for ref in references), references
    for ref in references:
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        assert asset.content
    init = (await client.get("/docs/assets/docs.js")).text
    assert "/openapi.json" in init and "validatorUrl: null" in init
    assert not re.search(r"https?://", init)
    # Swagger UI 5, as vendored, with its licence.
    assert "/docs/assets/swagger-ui-bundle.js" in references
    for name in ("LICENSE", "NOTICE"):
        assert (ASSETS / name).is_file()
        assert (await client.get(f"/docs/assets/{name}")).status_code == 200


async def test_the_docs_page_needs_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs", headers={"Authorization": "Bearer nonsense"})).status_code == 200


@pytest.mark.parametrize(
    ("path", "shipped_as", "media_type"),
    [
        ("/asyncapi.yaml", "hub/asyncapi.yaml", "application/yaml"),
        ("/schema/pattern-event-v1.json", "hub/schema/pattern-event-v1.json", "application/schema+json"),
    ],
)
async def test_the_message_contracts_are_served_as_shipped(
    client: httpx.AsyncClient, path: str, shipped_as: str, media_type: str
) -> None:
    on_disk = (ROOT / shipped_as).read_bytes()
    plain = await client.get(path)
    assert plain.status_code == 200
    assert plain.headers["content-type"] == media_type
    assert plain.content == on_disk
    # Static bytes: a token, a query, odd headers change nothing (nothing of the request is reflected).
    hostile = await client.get(
        path + "?x=%3Cscript%3E&token=a",
        headers={"Authorization": "Bearer nonsense", "Accept": "text/html", "Host": "evil.example"},
    )
    assert (hostile.status_code, hostile.content) == (200, on_disk)
    head = await client.head(path)
    assert (
        head.status_code == 200
        and head.content == b""
        and head.headers["content-length"] == str(len(on_disk))
    )
    assert (await client.post(path)).status_code == 405
    assert shipped(shipped_as.removeprefix("hub/")) is shipped(shipped_as.removeprefix("hub/"))  # read once
