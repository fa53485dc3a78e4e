"""``POST /api/patterns``: a batch of events published to ingest, with a verdict per event."""

from __future__ import annotations

import asyncio
import hashlib
import json
from importlib import resources
from typing import Annotated, Any, Literal

import psycopg
from nats.errors import Error as NatsError
from nats.js.errors import APIError as JetStreamAPIError
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.auth import requires
from api.errors import ApiError
from api.openapi import Content, link, operation
from api.problems import FieldError
from api.settings import Settings
from api.state import HubState
from api.validation import parse_json, read_bytes
from hub.model import EventError, PatternEvent
from hub.parsing import loads_json, parse_event
from hub.producer import PRODUCER_HEADER, PRODUCER_SIG_HEADER, publish_to_ingest, sign_producer
from hub.text import first_line
from hub.upstream import DEFAULT_RULES
from hub.window import EventWindow
from store.secrets import deployment_secret

__all__ = ["IngestGate", "event_window", "routes"]

RETRY_AFTER_S = 1


class IngestGate:
    """Bounds the events in flight from HTTP to JetStream on this node; beyond it, 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    def try_acquire(self, n: int) -> bool:
        if self.inflight + n > self.limit:
            return False
        self.inflight += n
        return True

    def release(self, n: int) -> None:
        self.inflight -= n


def event_window(settings: Settings) -> EventWindow:
    """The time window events must fall in (the writer, HTTP ingest and replay use the same one)."""
    return EventWindow(
        max_age_days=settings.event_max_age_days,
        max_ahead_s=settings.event_max_ahead_s,
        max_expiry_days=settings.event_max_expiry_days,
    )


def _msg_id(event: PatternEvent) -> str:
    """``<id>#<digest of the canonical payload>``: JetStream's duplicate window then drops only a true
    repeat; another payload under the same id reaches the writer (and ends as an id_conflict) instead of
    being answered "duplicate" and lost."""
    return f"{event.id}#{hashlib.sha256(event.to_json_bytes()).hexdigest()[:16]}"


async def _producer_headers(request: Request, hub: HubState, event: PatternEvent) -> dict[str, str]:
    """``TickStock-Producer: http:<token sub>`` and its signature (the deployment secret "producer",
    read once per app)."""
    secret: bytes | None = getattr(request.app.state, "producer_secret", None)
    if secret is None:
        secret = await deployment_secret(hub.pool, "producer")
        request.app.state.producer_secret = secret
    producer = f"http:{request.state.principal.subject}"
    return {PRODUCER_HEADER: producer, PRODUCER_SIG_HEADER: sign_producer(secret, event, producer)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accepted(_Strict):
    status: Literal["accepted", "duplicate"]
    id: str
    seq: int = Field(description="the ingest stream sequence (of the first copy, for a duplicate)")


class Rejected(_Strict):
    status: Literal["rejected"]
    id: Any = Field(description="the event's id as given (any JSON value), or null")
    reason: str = Field(description="a reason code, e.g. missing_field, unknown_pattern, too_large")
    detail: str
    fields: list[FieldError]


class Retry(_Strict):
    status: Literal["retry"]
    id: str
    reason: Literal["ingest_full", "ingest_unavailable"]
    detail: str


class IngestResults(_Strict):
    """One result per event, in order, and the count of each outcome."""

    results: list[Annotated[Accepted | Rejected | Retry, Field(discriminator="status")]]
    accepted: int
    duplicate: int
    rejected: int
    retry: int


def _event_schemas() -> dict[str, dict[str, Any]]:
    """The shipped JSON Schema of an event (``hub/schema/pattern-event-v1.json``) as components: its
    ``$defs`` become ``PatternEventV1…`` siblings, so references resolve inside the OpenAPI document."""
    text = resources.files("hub").joinpath("schema/pattern-event-v1.json").read_text()
    names = {"timestamp": "PatternEventV1Timestamp", "numbers": "PatternEventV1Numbers"}
    for local, name in names.items():
        text = text.replace(f'"#/$defs/{local}"', f'"#/components/schemas/{name}"')
    schema = json.loads(text)
    defs = schema.pop("$defs")
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return {"PatternEventV1": schema, **{names[k]: v for k, v in defs.items()}}


_EVENT = {"$ref": "#/components/schemas/PatternEventV1"}
# Legacy envelopes are accepted too, and each element is judged on its own (a bad one is "rejected",
# not a 400), so the items are any JSON value; PatternEventV1 is what producers should send.
_ITEMS = {
    "anyOf": [
        _EVENT,
        {"type": "object", "description": "one of TickStock's upstream messages (docs/upstream.md)"},
        {},
    ]
}
INGEST_BODY = Content(
    schema={
        "anyOf": [
            {
                "type": "object",
                "required": ["events"],
                "properties": {"events": {"type": "array", "minItems": 1, "items": _ITEMS}},
            },
            {"type": "array", "minItems": 1, "items": _ITEMS},
        ]
    },
    description='`{"events": [...]}` or a bare array of schema v1 events (or TickStock upstream messages)',
    schemas=_event_schemas(),
)
RETRY_AFTER = {"Retry-After": {"type": "integer", "description": "seconds"}}


@operation(
    summary="Publish a batch of events to ingest",
    tags=["patterns"],
    body=INGEST_BODY,
    responses={200: IngestResults, 429: IngestResults},
    errors=(400, 413, 429),
    headers={429: RETRY_AFTER},
    links={200: {"GetEvent": link("get_patterns_by_id", id="$response.body#/results/0/id")}},
)
@requires("patterns:write")
async def post_patterns(request: Request) -> JSONResponse:
    """Body: ``{"events": [...]}`` or a bare JSON array of schema v1 events or TickStock upstream messages. Each event is
    validated, then published to ``tickstock.ingest.<timeframe>.<symbol>`` with ``Nats-Msg-Id`` = id.
    Response: one result per event, in order: ``accepted`` (with the ingest sequence), ``duplicate``
    or ``rejected`` (with the reason). 429 with ``Retry-After`` when ingest is saturated: then nothing
    of this request was published, or (for events JetStream refused) the result is ``retry``."""
    hub: HubState = request.app.state.hub
    settings = hub.settings
    body = await read_bytes(request, max_bytes=settings.http_ingest_max_bytes)
    document = parse_json(body, loads=loads_json)  # the NATS path's rules: no duplicate keys, no NaN
    events_raw = document.get("events") if isinstance(document, dict) else document
    if not isinstance(events_raw, list):
        raise ApiError('the body must be {"events": [...]} or a JSON array of events')
    if not events_raw:
        raise ApiError("no events in the batch")
    limit = min(settings.http_ingest_max_events, request.app.state.ingest_gate.limit)
    if len(events_raw) > limit:
        raise ApiError(f"at most {limit} events per request", status=413)
    gate: IngestGate = request.app.state.ingest_gate
    if not gate.try_acquire(len(events_raw)):
        hub.metrics.http_ingested.inc(len(events_raw), outcome="throttled")
        raise ApiError(
            "ingest is saturated; retry shortly", status=429, headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    try:
        window = event_window(settings)
        results = await asyncio.gather(*(_one(request, hub, raw, window) for raw in events_raw))
    finally:
        gate.release(len(events_raw))
    for result in results:
        hub.metrics.http_ingested.inc(outcome=result["status"])
    retry = any(r["status"] == "retry" for r in results)
    counts = {
        s: sum(1 for r in results if r["status"] == s) for s in ("accepted", "duplicate", "rejected", "retry")
    }
    return JSONResponse(
        {"results": results, **counts},
        status_code=429 if retry else 200,
        headers={"Retry-After": str(RETRY_AFTER_S)} if retry else None,
    )


async def _one(request: Request, hub: HubState, raw: Any, window: EventWindow) -> dict[str, Any]:
    rules = hub.upstream or DEFAULT_RULES
    try:
        event = (
            parse_event(raw, catalog=hub.catalog.current, window=window, rules=rules)
            if isinstance(raw, dict)
            else parse_event(json.dumps(raw), catalog=hub.catalog.current, window=window, rules=rules)
        )
    except EventError as exc:
        return {"status": "rejected", "id": raw.get("id") if isinstance(raw, dict) else None, **exc.as_dict()}
    try:
        headers = await _producer_headers(request, hub, event)
    except psycopg.Error as exc:  # the secret could not be read: the database is down, try again later
        return {"status": "retry", "id": event.id, "reason": "ingest_unavailable", "detail": first_line(exc)}
    try:
        published = await publish_to_ingest(hub.js, event, msg_id=_msg_id(event), headers=headers)
    except JetStreamAPIError as exc:
        detail = exc.description or str(exc)
        if "size" in detail.lower():  # larger than the stream accepts: retrying cannot help
            return {
                "status": "rejected",
                "id": event.id,
                "reason": "too_large",
                "detail": detail,
                "fields": [],
            }
        return {"status": "retry", "id": event.id, "reason": "ingest_full", "detail": detail}
    except (NatsError, TimeoutError) as exc:
        return {
            "status": "retry",
            "id": event.id,
            "reason": "ingest_unavailable",
            "detail": str(exc) or type(exc).__name__,
        }
    if published.duplicate:
        return {"status": "duplicate", "id": event.id, "seq": published.seq}
    return {"status": "accepted", "id": event.id, "seq": published.seq}


routes = [Route("/api/patterns", post_patterns, methods=["POST"])]
