"""One table from exceptions to RFC 9457 problem documents. Never a stack trace to a client."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.requestid import current_request_id

__all__ = ["EXCEPTION_HANDLERS", "ApiError", "problem"]

log = logging.getLogger("tickstock.api")

PROBLEM_TYPE = "application/problem+json"


class ApiError(Exception):
    """A domain error with its HTTP status; ``errors`` lists field-level problems."""

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str, *, status: int | None = None, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.errors = errors
        self.headers = headers


def problem(status: int, detail: str, *, title: str | None = None, errors: list[dict[str, Any]] | None = None,
            headers: Mapping[str, str] | None = None, instance: str | None = None) -> JSONResponse:
    from http import HTTPStatus

    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(ApiError, exc)
    return problem(exc.status, exc.detail, errors=exc.errors, headers=exc.headers, instance=request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(HTTPException, exc)
    return problem(exc.status_code, str(exc.detail), headers=exc.headers, instance=request.url.path)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "The hub hit an unexpected error; it has been logged.", instance=request.url.path)


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
