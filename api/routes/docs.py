"""``GET /openapi.json`` (the OpenAPI 3.1 document, built from the app's routes on first request and
kept), ``GET /docs`` (Swagger UI from assets the hub ships under ``/docs/assets``: no CDN, works
offline), ``GET /asyncapi.yaml`` (the AsyncAPI 3.0 document of the NATS subjects and the websocket,
``hub/asyncapi.yaml``) and ``GET /schema/pattern-event-v1.json`` (the event's JSON Schema, which the
AsyncAPI document references by that relative path). All unauthenticated; the two shipped files are
served as they are in the package, read once."""

from __future__ import annotations

import functools
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.openapi import Content, build_openapi, operation

__all__ = ["ASSETS", "ASYNCAPI_MEDIA_TYPE", "SCHEMA_MEDIA_TYPE", "openapi_document", "routes", "shipped"]

ASSETS = Path(__file__).resolve().parent.parent / "static" / "docs"
TITLE = "TickStock Hub"
DESCRIPTION = (
    "Realtime stock-pattern events: ingest, scans, the symbol directory, universes, per-user state and "
    "dead letters. Errors are RFC 9457 problem documents (`application/problem+json`). The NATS subjects and "
    "the websocket protocol are described by the AsyncAPI document at `/asyncapi.yaml`."
)
ASYNCAPI_MEDIA_TYPE = "application/yaml"  # RFC 9512
SCHEMA_MEDIA_TYPE = "application/schema+json"


def _version() -> str:
    try:
        return metadata.version("tickstock-hub")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def openapi_document(request: Request) -> dict[str, Any]:
    """The app's OpenAPI document, built once per app (routes do not change while it runs)."""
    state = request.app.state
    document: dict[str, Any] | None = getattr(state, "openapi", None)
    if document is None:
        document = build_openapi(request.app.routes, title=TITLE, version=_version(), description=DESCRIPTION)
        state.openapi = document
    return document


@operation(
    summary="This OpenAPI document",
    tags=["docs"],
    responses={200: Content(schema={"type": "object"}, description="OpenAPI 3.1")},
)
async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document(request))


@operation(
    summary="Browsable API documentation (Swagger UI)",
    tags=["docs"],
    responses={200: Content(media_type="text/html", schema={"type": "string"}, description="an HTML page")},
)
async def docs_page(request: Request) -> FileResponse:
    return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8")


@functools.cache
def shipped(name: str) -> bytes:
    """The bytes of a contract file shipped in the ``hub`` package (read once per process)."""
    return resources.files("hub").joinpath(name).read_bytes()


@operation(
    summary="The AsyncAPI 3.0 document: NATS subjects and the websocket protocol",
    tags=["docs"],
    responses={
        200: Content(
            media_type=ASYNCAPI_MEDIA_TYPE,
            schema={"type": "object", "required": ["asyncapi", "info", "channels", "operations"]},
            description="an AsyncAPI 3.0 document (YAML)",
        )
    },
)
async def asyncapi_yaml(request: Request) -> Response:
    return Response(shipped("asyncapi.yaml"), media_type=ASYNCAPI_MEDIA_TYPE)


@operation(
    summary="The JSON Schema of a pattern event, v1",
    tags=["docs"],
    responses={
        200: Content(
            media_type=SCHEMA_MEDIA_TYPE, schema={"type": "object"}, description="JSON Schema 2020-12"
        )
    },
)
async def event_schema(request: Request) -> Response:
    return Response(shipped("schema/pattern-event-v1.json"), media_type=SCHEMA_MEDIA_TYPE)


routes = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Route("/asyncapi.yaml", asyncapi_yaml, methods=["GET"]),
    Route("/schema/pattern-event-v1.json", event_schema, methods=["GET"]),
    Mount("/docs/assets", app=StaticFiles(directory=ASSETS), name="docs-assets"),
]
