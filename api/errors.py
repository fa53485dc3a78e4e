"""One table from exceptions to RFC 9457 problem documents and websocket codes. Never a stack trace to a client.

Routes raise; they do not map. :data:`ERROR_TABLE` maps each domain error class (``store``, ``hub``,
``api``) to a function building its :class:`Problem`: the HTTP status, title and detail of the problem
document, and the websocket error-frame code and close code (from :mod:`hub.protocol`) for the same
error on ``/ws``. The most specific class in an exception's MRO wins. A domain error is never a 500;
anything not in the table is a generic 500 problem whose detail says nothing about the cause (the
traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.requestid import current_request_id
from hub.errors import HubError, ReplayError, SubscriptionLimitError
from hub.fanout import FilterError
from hub.model import EventError
from hub.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    ERROR_FORBIDDEN,
    ERROR_INVALID,
    ERROR_INVALID_FILTER,
    ERROR_TOO_MANY_SUBSCRIPTIONS,
    ERROR_UNAUTHENTICATED,
)
from store.definitions import DefinitionConflict, DefinitionError
from store.errors import StoreError, StoreUnavailable
from store.migrate import MigrationError
from store.scans import CursorError, ScanError
from store.users import DuplicateName, LimitExceeded, UserDataError

__all__ = [
    "ERROR_TABLE",
    "EXCEPTION_HANDLERS",
    "PROBLEM_TYPE",
    "UNEXPECTED_DETAIL",
    "ApiError",
    "Problem",
    "problem",
    "problem_document",
    "problem_for",
]

log = logging.getLogger("tickstock.api")

PROBLEM_TYPE = "application/problem+json"
UNEXPECTED_DETAIL = "The hub hit an unexpected error; it has been logged."


class ApiError(Exception):
    """Base of the API's own errors: an HTTP status chosen where the request is read (validation,
    authentication, limits); ``errors`` lists field-level problems."""

    status = 400
    title = "Bad Request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.errors = errors
        self.headers = headers


@dataclass(frozen=True, kw_only=True)
class Problem:
    """What one error becomes: a problem document (``status``, ``detail``, optional ``title``, field
    ``errors`` and ``headers``) and, on the websocket, an error frame ``ws_code`` (the connection stays
    open) or a ``close_code`` (it ends the connection); ``None`` where the error has no websocket form."""

    status: int
    detail: str
    title: str | None = None
    errors: list[dict[str, Any]] | None = None
    headers: Mapping[str, str] | None = None
    ws_code: str | None = None
    close_code: int | None = None


Rule = Callable[[Any], Problem]


def _api(exc: ApiError) -> Problem:
    ws_code, close_code = {
        401: (ERROR_UNAUTHENTICATED, CLOSE_UNAUTHORIZED),
        403: (ERROR_FORBIDDEN, CLOSE_FORBIDDEN),
        429: (None, CLOSE_TOO_MANY),
    }.get(exc.status, (ERROR_INVALID if exc.status < 500 else None, None))
    return Problem(
        status=exc.status,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        ws_code=ws_code,
        close_code=close_code,
    )


def _http(exc: HTTPException) -> Problem:
    return Problem(status=exc.status_code, detail=str(exc.detail), headers=exc.headers)


def _replay(exc: ReplayError) -> Problem:
    if exc.kind == "not_found":
        return Problem(status=404, detail=str(exc))
    return Problem(status=422, detail=str(exc), ws_code=ERROR_INVALID)


def _hub(exc: HubError) -> Problem:
    # Its message may name servers and addresses: the log has it, the client gets a generic sentence.
    log.warning("hub error answered with 503: %s", exc)
    return Problem(status=503, detail="the hub cannot serve this request right now; try again")


def _event(exc: EventError) -> Problem:
    return Problem(status=400, detail=exc.detail, errors=exc.fields or None, ws_code=ERROR_INVALID)


def _filter(exc: FilterError) -> Problem:
    return Problem(status=400, detail=str(exc), ws_code=ERROR_INVALID_FILTER)


def _store_unavailable(exc: StoreUnavailable) -> Problem:
    log.warning("store unavailable, answered with 503: %s", exc)
    return Problem(status=503, detail="the database is unavailable; try again")


def _migration(exc: MigrationError) -> Problem:
    log.error("migration error answered with 503: %s", exc)
    return Problem(status=503, detail="the database schema is not ready")


def _store(exc: StoreError) -> Problem:
    log.warning("store error answered with 503: %s", exc)
    return Problem(status=503, detail="the store cannot serve this request right now; try again")


def _user_data(exc: UserDataError) -> Problem:
    return Problem(status=400, detail=str(exc), ws_code=ERROR_INVALID)


# Only a PATCH can grow a universe past its bounds (a PUT body is bounded by its model), hence the locs.
_UNIVERSE_LOCS = {"symbols": "body.add_symbols", "universe_keys": "body.add_universes"}
_COLLECTIONS = {"watchlists": "watchlists", "filters": "saved filters"}


def _limit(exc: LimitExceeded) -> Problem:
    if exc.field in _UNIVERSE_LOCS:
        what = exc.field.replace("_", " ")
        return Problem(
            status=400,
            detail=f"the universe would hold {exc.size} {what}; at most {exc.limit}",
            errors=[{"loc": _UNIVERSE_LOCS[exc.field], "msg": str(exc)}],
            ws_code=ERROR_INVALID,
        )
    what = _COLLECTIONS.get(exc.field, exc.field)
    return Problem(status=409, detail=f"at most {exc.limit} {what} per user; delete one first")


def _duplicate(exc: DuplicateName) -> Problem:
    return Problem(status=409, detail=str(exc), errors=[{"loc": "body.name", "msg": "already used"}])


def _subscription_limit(exc: SubscriptionLimitError) -> Problem:
    return Problem(status=409, detail=str(exc), ws_code=ERROR_TOO_MANY_SUBSCRIPTIONS)


def _definition(exc: DefinitionError) -> Problem:
    return Problem(status=400, detail=str(exc), errors=[{"loc": f"body.{exc.field}", "msg": str(exc)}])


def _definition_conflict(exc: DefinitionConflict) -> Problem:
    return Problem(
        status=409,
        detail=str(exc),
        errors=[
            {
                "loc": "path.name" if spelling == exc.name else "body.aliases",
                "msg": f"{spelling!r} already names {other!r}",
            }
            for spelling, other in exc.conflicts
        ],
    )


def _scan(exc: ScanError) -> Problem:
    return Problem(
        status=400, detail=exc.msg, errors=[{"loc": exc.loc, "msg": exc.msg}], ws_code=ERROR_INVALID_FILTER
    )


def _cursor(exc: CursorError) -> Problem:
    return Problem(status=400, detail=str(exc), errors=[{"loc": "query.cursor", "msg": str(exc)}])


ERROR_TABLE: dict[type[BaseException], Rule] = {
    # api
    ApiError: _api,
    HTTPException: _http,
    # hub
    HubError: _hub,
    ReplayError: _replay,
    EventError: _event,
    FilterError: _filter,
    SubscriptionLimitError: _subscription_limit,
    # store
    StoreError: _store,
    StoreUnavailable: _store_unavailable,
    MigrationError: _migration,
    UserDataError: _user_data,
    LimitExceeded: _limit,
    DuplicateName: _duplicate,
    DefinitionError: _definition,
    DefinitionConflict: _definition_conflict,
    ScanError: _scan,
    CursorError: _cursor,
}
"""Domain error class -> its :class:`Problem`. Add a class here, never an ``except`` in a route."""


def problem_for(exc: BaseException) -> Problem | None:
    """The :class:`Problem` for ``exc`` from :data:`ERROR_TABLE` (its most specific class listed), or
    ``None`` when no class in its MRO is listed (an unexpected error)."""
    for cls in type(exc).__mro__:
        rule = ERROR_TABLE.get(cls)
        if rule is not None:
            return rule(exc)
    return None


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    body = problem_document(status, detail, title=title, errors=errors, instance=instance)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


def problem_document(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """The RFC 9457 problem document, whatever the transport (HTTP, the NATS service's error replies)."""
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
    return body


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    found = problem_for(exc)
    if found is None:
        return await _unexpected(request, exc)
    return problem(
        found.status,
        found.detail,
        title=found.title,
        errors=found.errors,
        headers=found.headers,
        instance=request.url.path,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, UNEXPECTED_DETAIL, instance=request.url.path)


def _handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    handlers: dict[Any, Callable[[Request, Exception], Any]] = dict.fromkeys(ERROR_TABLE, _domain_error)
    # Starlette sends a bare Exception handler to its ServerErrorMiddleware (the outermost layer).
    handlers[Exception] = _unexpected
    return handlers


EXCEPTION_HANDLERS = _handlers()
"""Starlette's ``exception_handlers``: every class in :data:`ERROR_TABLE`, then ``Exception`` (500)."""
