"""``GET /openapi.json`` (the OpenAPI 3.1 document, built from the app's routes on first request and
kept) and ``GET /docs`` (Swagger UI from assets the hub ships under ``/docs/assets``: no CDN, works
offline). Both unauthenticated."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.openapi import Content, build_openapi, operation

__all__ = ["ASSETS", "openapi_document", "routes"]

ASSETS = Path(__file__).resolve().parent.parent / "static" / "docs"
TITLE = "TickStock Hub"
DESCRIPTION = (
    "Realtime stock-pattern events: ingest, scans, the symbol directory, universes, per-user state and "
    "dead letters. Errors are RFC 9457 problem documents (`application/problem+json`)."
)


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


routes = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Mount("/docs/assets", app=StaticFiles(directory=ASSETS), name="docs-assets"),
]
