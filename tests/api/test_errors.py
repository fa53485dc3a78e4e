"""Every error reaches the client as an RFC 9457 problem document, never as a stack trace."""

from __future__ import annotations

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.errors import EXCEPTION_HANDLERS, ApiError


async def bad_input(request: Request) -> Response:
    raise ApiError("symbol is not valid", errors=[{"loc": "query.symbol", "msg": "bad"}])


async def throttled(request: Request) -> Response:
    raise ApiError("slow down", status=429, headers={"Retry-After": "2"})


async def forbidden(request: Request) -> Response:
    raise HTTPException(403, "no")


async def crash(request: Request) -> Response:
    raise RuntimeError("secret internals /etc/passwd")


@pytest_asyncio.fixture(loop_scope="session")
async def client():  # type: ignore[no-untyped-def]
    app = Starlette(
        routes=[
            Route("/bad", bad_input),
            Route("/slow", throttled),
            Route("/forbidden", forbidden),
            Route("/crash", crash),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
        yield c


async def test_api_error_with_field_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/bad")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "symbol is not valid",
        "instance": "/bad",
        "errors": [{"loc": "query.symbol", "msg": "bad"}],
    }


async def test_status_and_headers_pass_through(client: httpx.AsyncClient) -> None:
    r = await client.get("/slow")
    assert (r.status_code, r.headers["retry-after"], r.json()["title"]) == (429, "2", "Too Many Requests")


async def test_http_exception(client: httpx.AsyncClient) -> None:
    assert (await client.get("/forbidden")).json()["detail"] == "no"


async def test_unexpected_error_hides_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    r = await client.get("/crash")
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["detail"] == "The hub hit an unexpected error; it has been logged."
    assert "unhandled error on GET /crash" in caplog.text
