"""Liveness and readiness.

``GET /health`` answers as long as the process serves HTTP. ``GET /health/ready`` checks each
dependency with a short timeout and reports its status and latency: 503 when PostgreSQL or NATS is
down (the hub cannot store or move events), 200 with ``"status": "degraded"`` when only Redis is
down (scans fall back to PostgreSQL).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api import readiness
from api.openapi import operation
from api.routes.metrics import Pipeline, pipeline_summary, refresh_gauges
from api.state import HubState

__all__ = ["routes"]


class Liveness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"]


class JetStreamInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    streams: int
    consumers: int


class Check(BaseModel):
    """One dependency: ``error`` when it is down; NATS adds its JetStream account counts."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["up", "down"]
    latency_ms: float
    error: str | None = None
    jetstream: JetStreamInfo | None = None


class Checks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    postgres: Check
    nats: Check
    redis: Check


class RouteCache(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hit: int
    miss: int
    coalesced: int = Field(description="misses served by another request's computation of the same key")
    bypass: int = Field(
        description="computed without the cache (Redis unavailable, breaker open, or disabled)"
    )
    hit_ratio: float | None = Field(description="hit / all since start; null before the first request")
    hit_ratio_1m: float | None = Field(description="the same over the last minute; null without requests")
    requests_1m: int


class CacheSummary(BaseModel):
    """The response cache: ``degraded`` while the breaker is open or a lost bump awaits a new epoch
    (requests are then served from PostgreSQL)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["up", "degraded", "disabled"]
    breaker: Literal["closed", "open", "half_open"]
    breaker_trips: int
    lost_bumps: int
    refreshes: int = Field(
        description="popular entries recomputed ahead, in the background, within the bound"
    )
    reference_listener: Literal["up", "down"]
    local_copies: int = Field(description="hot answers held in this process in front of Redis")
    local_hits: int = Field(description="requests answered from those copies since start")
    staleness_ms: int
    routes: dict[str, RouteCache]


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "degraded", "down"]
    checks: Checks
    pipeline: Pipeline
    uptime_s: float
    cache: CacheSummary | None = None
    advisories_given_up: int = Field(
        0,
        description="max-deliveries advisories the dead-letter watcher gave up on "
        "after its bounded retries; above 0 needs an operator",
    )


@operation(summary="Liveness", tags=["health"], responses={200: Liveness})
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@operation(
    summary="Readiness: dependencies and pipeline summary",
    tags=["health"],
    description="PostgreSQL, NATS/JetStream and Redis, each with status and latency. 503 (same body) "
    "when PostgreSQL or NATS is down; Redis down (or the cache's breaker open) is "
    "`degraded` with 200. `cache` has the hit ratio per route.",
    responses={200: Readiness, 503: Readiness},
)
async def ready(request: Request) -> JSONResponse:
    hub: HubState = request.app.state.hub
    report = await readiness.check(hub)
    await refresh_gauges(hub)
    body = {
        "status": report.status,
        "checks": report.checks,
        "pipeline": pipeline_summary(hub),
        "uptime_s": round(time.time() - hub.started_at, 1),
        "advisories_given_up": int(hub.metrics.advisories_given_up.total()),
    }
    if hub.cache is not None:
        body["cache"] = summary = hub.cache.summary()
        if hub.metric_files is not None:  # one of several workers: the node's counts per route
            node = hub.metric_files.view()
            for route, counts in summary["routes"].items():
                for result in ("hit", "miss", "coalesced", "bypass"):
                    counts[result] = int(node.total(hub.cache.requests, route=route, result=result))
                total = sum(counts[r] for r in ("hit", "miss", "coalesced", "bypass"))
                counts["hit_ratio"] = round(counts["hit"] / total, 4) if total else None
    return JSONResponse(body, status_code=report.http_status, headers={"Cache-Control": "no-store"})


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]
