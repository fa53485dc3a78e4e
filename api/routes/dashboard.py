"""``GET /``: the live dashboard, one page from files the hub ships under ``/static/dashboard`` (plain ES
modules and CSS: no CDN, no build step). Unauthenticated: the page asks for a token (pasted, or given
as ``/#token=<jwt>``) and sends it itself, to the REST API as a bearer header and to ``/ws`` in an
``auth`` frame."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.openapi import Content, operation
from api.securityheaders import DEFAULT_HTML_CSP

__all__ = ["ASSETS", "ASSETS_PATH", "routes"]

ASSETS = Path(__file__).resolve().parent.parent / "static" / "dashboard"
ASSETS_PATH = "/static/dashboard"
# Everything the page loads or talks to is this origin ('self' covers ws:/wss: to it); the token may
# arrive in the URL fragment, which no-referrer keeps out of any request. The page's own headers, so
# they hold whatever the security-header settings say.
_HEADERS = {
    "Content-Security-Policy": DEFAULT_HTML_CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@operation(
    summary="The live dashboard (an HTML page)",
    tags=["dashboard"],
    responses={200: Content(media_type="text/html", schema={"type": "string"}, description="an HTML page")},
)
async def dashboard_page(request: Request) -> FileResponse:
    return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


routes = [
    Route("/", dashboard_page, methods=["GET"]),
    Mount(ASSETS_PATH, app=StaticFiles(directory=ASSETS), name="dashboard-assets"),
]
