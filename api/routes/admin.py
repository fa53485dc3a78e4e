"""``/api/admin/dlq…`` (scope ``admin``): inspect, replay and purge dead letters."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import requires
from api.errors import ApiError
from api.openapi import Content, link, operation
from api.state import HubState
from hub.deadletters import ReplayError
from store.deadletters import count_dead_letters, get_dead_letter, list_dead_letters, purge_dead_letters

__all__ = ["routes"]

MAX_PAGE = 500
MAX_ID = 2**63 - 1  # ids are bigint
NO_NUL = r"^[^\x00]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The admin routes read their query by hand; these models describe what they accept.
class DlqListQuery(_Strict):
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 50
    before: Annotated[int, Field(ge=1, le=MAX_ID, description="the previous page's `next_before`")] | None = None
    reason: Annotated[str, Field(pattern=NO_NUL)] | None = None
    replayed: bool | None = Field(default=None, description="`true` or `false`")


class DlqPurgeQuery(_Strict):
    """At least one of the three: the conditions given all apply."""

    reason: Annotated[str, Field(pattern=NO_NUL)] | None = None
    replayed: Literal["true"] | None = Field(default=None, description="`true`: the replayed ones")
    all: Literal["true"] | None = Field(default=None, description="`true` with nothing else: every dead letter")


class DeadLetterSummary(_Strict):
    id: int
    source_key: str
    subject: str
    reason: str
    detail: str
    errors: list[dict[str, Any]]
    event_id: str | None
    deliveries: int
    first_seen: datetime
    last_seen: datetime
    replayed_at: datetime | None
    replay_count: int
    payload_bytes: int
    payload_preview: str | None = Field(description="the payload as text when it is UTF-8, cut short")
    payload_truncated: bool


class DeadLetterDetail(DeadLetterSummary):
    headers: dict[str, str]


class DeadLetterPage(_Strict):
    items: list[DeadLetterSummary]
    next_before: int | None
    pending: dict[str, int] = Field(description="dead letters not yet replayed, per reason")


class Deleted(_Strict):
    deleted: int


class Replayed(_Strict):
    dead_letter_id: int
    event_id: str
    subject: str
    seq: int
    duplicate: bool


LETTER_ID = {"type": "string", "pattern": "^[0-9]+$", "description": "a dead-letter id"}


def _int(request: Request, name: str, default: int | None, *, lo: int = 1, hi: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"{name} must be an integer", errors=[{"loc": f"query.{name}", "msg": "not an integer"}]) from None
    if value < lo or (hi is not None and value > hi):
        raise ApiError(f"{name} must be between {lo} and {hi}", errors=[{"loc": f"query.{name}", "msg": "out of range"}])
    return value


def _reason(request: Request) -> str | None:
    reason = request.query_params.get("reason")
    if reason is not None and "\x00" in reason:  # PostgreSQL text cannot hold NUL: it was a 500
        raise ApiError("reason must not contain NUL", errors=[{"loc": "query.reason", "msg": "contains NUL"}])
    return reason


def _letter_id(request: Request) -> int:
    raw = request.path_params["id"]
    # isdigit() alone admits "²" (int() then raises) and ids beyond bigint (PostgreSQL then raises):
    # both were 500s.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_ID):
        raise ApiError("a dead-letter id is a positive integer", status=404)
    return int(raw)


@operation(summary="Dead letters, newest first", tags=["admin"], query=DlqListQuery,
           responses={200: DeadLetterPage}, errors=(400,),
           links={200: {name: link(op, id="$response.body#/items/0/id") for name, op in (
               ("GetDeadLetter", "get_admin_dlq_by_id"), ("ReplayDeadLetter", "post_admin_dlq_by_id_replay"),
               ("DeleteDeadLetter", "delete_admin_dlq_by_id"))}})
@requires("admin")
async def list_dlq(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    limit = _int(request, "limit", 50, hi=MAX_PAGE) or 50
    before = _int(request, "before", None, hi=MAX_ID)  # unbounded, a huge id was a 500 from PostgreSQL
    reason = _reason(request)
    replayed_raw = request.query_params.get("replayed")
    if replayed_raw not in (None, "true", "false"):
        raise ApiError("replayed must be true or false")
    replayed = None if replayed_raw is None else replayed_raw == "true"
    async with hub.pool.connection() as conn:
        letters = await list_dead_letters(conn, reason=reason, before_id=before, limit=limit, replayed=replayed)
        pending = await count_dead_letters(conn)
    next_before = letters[-1].id if len(letters) == limit else None
    return JSONResponse({"items": [d.summary() for d in letters], "next_before": next_before, "pending": pending})


@operation(summary="One dead letter with its payload and headers", tags=["admin"],
           responses={200: DeadLetterDetail}, path={"id": LETTER_ID})
@requires("admin")
async def show_dlq(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    async with hub.pool.connection() as conn:
        letter = await get_dead_letter(conn, _letter_id(request))
    if letter is None:
        raise ApiError("no such dead letter", status=404)
    body: dict[str, Any] = letter.summary(preview=1 << 20)
    body["headers"] = letter.headers
    return JSONResponse(body)


@operation(summary="Replay a dead letter into ingest", tags=["admin"], path={"id": LETTER_ID},
           body=Content(schema={}, description="optional: a corrected event to publish instead of the stored payload"),
           body_required=False, responses={200: Replayed}, errors=(400, 422))
@requires("admin")
async def replay_dlq(request: Request) -> JSONResponse:
    """Replays the stored payload, or the corrected event given as the JSON body."""
    hub: HubState = request.app.state.hub
    raw = await request.body()
    payload = None
    if raw.strip():
        try:
            json.loads(raw)
        except ValueError as exc:
            raise ApiError(f"the corrected payload is not JSON: {exc}") from None
        payload = raw
    try:
        result = await hub.dead_letters.replay(_letter_id(request), catalog=hub.catalog, payload=payload)
    except ReplayError as exc:
        raise ApiError(str(exc), status=exc.status) from None
    return JSONResponse({"dead_letter_id": result.dead_letter_id, "event_id": result.event_id,
                         "subject": result.subject, "seq": result.seq, "duplicate": result.duplicate})


@operation(summary="Purge dead letters", tags=["admin"], query=DlqPurgeQuery, responses={200: Deleted},
           errors=(400,))
@requires("admin")
async def purge_dlq(request: Request) -> JSONResponse:
    """Query: ``reason=…``, ``replayed=true`` or ``all=true`` (at least one)."""
    hub: HubState = request.app.state.hub
    reason = _reason(request)
    replayed_only = request.query_params.get("replayed") == "true"
    everything = request.query_params.get("all") == "true"
    try:
        async with hub.pool.connection() as conn:
            deleted = await purge_dead_letters(conn, reason=reason, replayed_only=replayed_only, everything=everything)
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    return JSONResponse({"deleted": deleted})


@operation(summary="Delete one dead letter", tags=["admin"], responses={200: Deleted}, path={"id": LETTER_ID})
@requires("admin")
async def delete_one(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    async with hub.pool.connection() as conn:
        deleted = await purge_dead_letters(conn, ids=[_letter_id(request)])
    if not deleted:
        raise ApiError("no such dead letter", status=404)
    return JSONResponse({"deleted": deleted})


routes = [
    Route("/api/admin/dlq", list_dlq, methods=["GET"]),
    Route("/api/admin/dlq", purge_dlq, methods=["DELETE"]),
    Route("/api/admin/dlq/{id}", show_dlq, methods=["GET"]),
    Route("/api/admin/dlq/{id}", delete_one, methods=["DELETE"]),
    Route("/api/admin/dlq/{id}/replay", replay_dlq, methods=["POST"]),
]
