"""``/api/admin/dlq…`` (scope ``admin``): inspect, replay and purge dead letters."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import requires
from api.errors import ApiError
from api.state import HubState
from hub.deadletters import ReplayError
from store.deadletters import count_dead_letters, get_dead_letter, list_dead_letters, purge_dead_letters

__all__ = ["routes"]

MAX_PAGE = 500


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


def _letter_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not raw.isdigit():
        raise ApiError("a dead-letter id is a positive integer", status=404)
    return int(raw)


@requires("admin")
async def list_dlq(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    limit = _int(request, "limit", 50, hi=MAX_PAGE) or 50
    before = _int(request, "before", None)
    reason = request.query_params.get("reason")
    replayed_raw = request.query_params.get("replayed")
    if replayed_raw not in (None, "true", "false"):
        raise ApiError("replayed must be true or false")
    replayed = None if replayed_raw is None else replayed_raw == "true"
    async with hub.pool.connection() as conn:
        letters = await list_dead_letters(conn, reason=reason, before_id=before, limit=limit, replayed=replayed)
        pending = await count_dead_letters(conn)
    next_before = letters[-1].id if len(letters) == limit else None
    return JSONResponse({"items": [d.summary() for d in letters], "next_before": next_before, "pending": pending})


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


@requires("admin")
async def purge_dlq(request: Request) -> JSONResponse:
    """Query: ``reason=…``, ``replayed=true`` or ``all=true`` (at least one)."""
    hub: HubState = request.app.state.hub
    reason = request.query_params.get("reason")
    replayed_only = request.query_params.get("replayed") == "true"
    everything = request.query_params.get("all") == "true"
    try:
        async with hub.pool.connection() as conn:
            deleted = await purge_dead_letters(conn, reason=reason, replayed_only=replayed_only, everything=everything)
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    return JSONResponse({"deleted": deleted})


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
