"""``/api/admin/dlq…`` (scope ``admin``): inspect, replay and purge dead letters.

``POST /api/admin/dlq/replay?reason=unknown_pattern`` replays every dead letter with that reason not
yet replayed (the oldest ``limit`` of them; ``beyond`` says how many are left for another call), after
reloading the pattern catalog, so a name defined a moment ago on any node counts. A letter that would
be rejected again stays a dead letter with the reason it got this time.

A replay's optional body (a corrected event) is read with a bound: beyond
``TICKSTOCK_ADMIN_MAX_BODY_BYTES`` it is a 413, nested deeper than :data:`~api.jsonbound.MAX_DEPTH`
levels or not JSON a 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import requires
from api.errors import ApiError
from api.jsonbound import MAX_DEPTH
from api.openapi import Content, link, operation
from api.state import HubState
from api.validation import parse_json, read_bytes, read_query
from hub.deadletters import MAX_REPLAY_BATCH
from store.deadletters import count_dead_letters, get_dead_letter, list_dead_letters, purge_dead_letters

__all__ = ["routes"]

MAX_PAGE = 500
DEFAULT_REPLAY_BATCH = 1000
MAX_ID = 2**63 - 1  # ids are bigint
NO_NUL = r"^[^\x00]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DlqListQuery(_Strict):
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 50
    before: Annotated[int, Field(ge=1, le=MAX_ID, description="the previous page's `next_before`")] | None = (
        None
    )
    reason: Annotated[str, Field(pattern=NO_NUL)] | None = None
    replayed: bool | None = Field(default=None, description="`true` or `false`")


class DlqPurgeQuery(_Strict):
    """At least one of the three: the conditions given all apply."""

    reason: Annotated[str, Field(pattern=NO_NUL)] | None = None
    replayed: Literal["true"] | None = Field(default=None, description="`true`: the replayed ones")
    all: Literal["true"] | None = Field(
        default=None, description="`true` with nothing else: every dead letter"
    )


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


class DlqReplayQuery(_Strict):
    reason: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$", description="e.g. `unknown_pattern`")]
    limit: Annotated[int, Field(ge=1, le=MAX_REPLAY_BATCH)] = DEFAULT_REPLAY_BATCH


class ReplayFailure(_Strict):
    dead_letter_id: int
    reason: str = Field(description="why it would be rejected again (now the dead letter's reason)")
    detail: str


class BulkReplayed(_Strict):
    reason: str
    replayed: int
    failed: int
    failed_by_reason: dict[str, int]
    beyond: int = Field(description="dead letters with this reason left for another call")
    items: list[Replayed]
    failures: list[ReplayFailure]


LETTER_ID = {"type": "string", "pattern": "^[0-9]+$", "description": "a dead-letter id"}


def _letter_id(request: Request) -> int:
    raw = request.path_params["id"]
    # isdigit() alone admits "²" (int() then raises) and ids beyond bigint (PostgreSQL then raises):
    # both were 500s.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_ID):
        raise ApiError("a dead-letter id is a positive integer", status=404)
    return int(raw)


@operation(
    summary="Dead letters, newest first",
    tags=["admin"],
    query=DlqListQuery,
    responses={200: DeadLetterPage},
    errors=(400,),
    links={
        200: {
            name: link(op, id="$response.body#/items/0/id")
            for name, op in (
                ("GetDeadLetter", "get_admin_dlq_by_id"),
                ("ReplayDeadLetter", "post_admin_dlq_by_id_replay"),
                ("DeleteDeadLetter", "delete_admin_dlq_by_id"),
            )
        }
    },
)
@requires("admin")
async def list_dlq(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    query = read_query(DlqListQuery, request)
    async with hub.pool.connection() as conn:
        letters = await list_dead_letters(
            conn, reason=query.reason, before_id=query.before, limit=query.limit, replayed=query.replayed
        )
        pending = await count_dead_letters(conn)
    next_before = letters[-1].id if len(letters) == query.limit else None
    return JSONResponse(
        {"items": [d.summary() for d in letters], "next_before": next_before, "pending": pending}
    )


@operation(
    summary="One dead letter with its payload and headers",
    tags=["admin"],
    responses={200: DeadLetterDetail},
    path={"id": LETTER_ID},
)
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


@operation(
    summary="Replay a dead letter into ingest",
    tags=["admin"],
    path={"id": LETTER_ID},
    body=Content(
        schema={}, description="optional: a corrected event to publish instead of the stored payload"
    ),
    body_required=False,
    responses={200: Replayed},
    errors=(400, 404, 413, 422),
)
@requires("admin")
async def replay_dlq(request: Request) -> JSONResponse:
    """Replays the stored payload, or the corrected event given as the JSON body. 404 for no such dead
    letter, 422 when the payload would be rejected again (``hub.errors.ReplayError``)."""
    hub: HubState = request.app.state.hub
    letter_id = _letter_id(request)
    raw = await read_bytes(request, max_bytes=hub.settings.admin_max_body_bytes)
    payload = None
    if raw.strip():
        parse_json(raw, max_depth=MAX_DEPTH)
        payload = raw
    result = await hub.dead_letters.replay(letter_id, catalog=hub.catalog, payload=payload)
    return JSONResponse(
        {
            "dead_letter_id": result.dead_letter_id,
            "event_id": result.event_id,
            "subject": result.subject,
            "seq": result.seq,
            "duplicate": result.duplicate,
        }
    )


@operation(
    summary="Replay every dead letter with a reason",
    tags=["admin"],
    query=DlqReplayQuery,
    responses={200: BulkReplayed},
    errors=(400,),
)
@requires("admin")
async def replay_reason(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    query = read_query(DlqReplayQuery, request)
    await hub.catalog.refresh(hub.pool)
    done = await hub.dead_letters.replay_reason(query.reason, catalog=hub.catalog, limit=query.limit)
    return JSONResponse(
        {
            "reason": done.reason,
            "replayed": len(done.replayed),
            "failed": len(done.failed),
            "failed_by_reason": done.failed_by_reason(),
            "beyond": done.beyond,
            "items": [
                {
                    "dead_letter_id": r.dead_letter_id,
                    "event_id": r.event_id,
                    "subject": r.subject,
                    "seq": r.seq,
                    "duplicate": r.duplicate,
                }
                for r in done.replayed
            ],
            "failures": [
                {"dead_letter_id": i, "reason": reason, "detail": detail} for i, reason, detail in done.failed
            ],
        }
    )


@operation(
    summary="Purge dead letters", tags=["admin"], query=DlqPurgeQuery, responses={200: Deleted}, errors=(400,)
)
@requires("admin")
async def purge_dlq(request: Request) -> JSONResponse:
    """Query: ``reason=…``, ``replayed=true`` or ``all=true`` (at least one)."""
    hub: HubState = request.app.state.hub
    query = read_query(DlqPurgeQuery, request)
    if query.reason is None and query.replayed is None and query.all is None:
        raise ApiError(
            "purge needs reason=…, replayed=true or all=true",
            errors=[{"loc": "query", "msg": "give reason, replayed=true or all=true"}],
        )
    async with hub.pool.connection() as conn:
        deleted = await purge_dead_letters(
            conn, reason=query.reason, replayed_only=query.replayed == "true", everything=query.all == "true"
        )
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
    Route("/api/admin/dlq/replay", replay_reason, methods=["POST"]),
    Route("/api/admin/dlq/{id}", show_dlq, methods=["GET"]),
    Route("/api/admin/dlq/{id}", delete_one, methods=["DELETE"]),
    Route("/api/admin/dlq/{id}/replay", replay_dlq, methods=["POST"]),
]
