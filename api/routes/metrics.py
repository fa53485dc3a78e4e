"""``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics when the scraper asks for it
(``Accept: application/openmetrics-text``). JetStream, dead-letter and readiness gauges are read at
scrape time."""

from __future__ import annotations

import asyncio
import logging
import math

import psycopg
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import readiness
from api.openapi import Content, operation
from api.state import HubState
from hub.jetstream import INGEST_STREAM, WRITER_CONSUMER
from hub.metrics import Counter, Registry
from hub.metrics_files import NodeRegistry
from store.deadletters import count_dead_letters

__all__ = ["Pipeline", "pipeline_summary", "routes"]

log = logging.getLogger("tickstock.metrics")
SCRAPE_TIMEOUT_S = 2.0


async def refresh_gauges(hub: HubState) -> None:
    """Read consumer state and dead-letter depth into the gauges; a failure leaves the last values."""
    try:
        # Every writer consumer of the ingest stream, summed: hub-writer and the partitions'.
        infos = await asyncio.wait_for(hub.js.consumers_info(INGEST_STREAM), SCRAPE_TIMEOUT_S)
        infos = [i for i in infos if (i.name or "").startswith(WRITER_CONSUMER)]
        for field in ("num_pending", "num_ack_pending", "num_redelivered", "num_waiting"):
            total = float(sum(getattr(i, field) or 0 for i in infos))
            hub.metrics.consumer.set(total, field=field.removeprefix("num_"))
    except (NatsError, TimeoutError) as exc:
        log.debug("consumer info unavailable: %s", exc)
    try:
        async with hub.pool.connection() as conn:
            depth = await asyncio.wait_for(count_dead_letters(conn), SCRAPE_TIMEOUT_S)
        hub.metrics.dlq_depth.replace(
            {"all": float(sum(depth.values())), **{k: float(v) for k, v in depth.items()}}, label="reason"
        )
    except (psycopg.Error, TimeoutError) as exc:
        log.debug("dead-letter depth unavailable: %s", exc)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rates(_Strict):
    ingested: float
    stored: float
    rejected: float


class Totals(_Strict):
    ingested: int
    stored: int
    duplicates: int
    rejected: int
    published: int
    retries: int


class Pipeline(_Strict):
    """What :func:`pipeline_summary` returns (``/health/ready``'s ``pipeline``)."""

    consumer_pending: int
    ack_pending: int
    redelivered: int
    dead_letters_pending: int
    per_second: Rates
    totals: Totals
    writer_batches: int
    ingest_to_stored_p95_s: float | None = Field(
        description="upper bound of the p95 latency bucket; null with no sample yet, or when it is above the "
        "largest bucket (JSON has no infinity)"
    )


def pipeline_summary(hub: HubState) -> dict[str, object]:
    """The numbers ``/health/ready`` shows about the pipeline (call after :func:`refresh_gauges`): the
    node's, over every worker when there are several."""
    m = hub.metrics
    node = hub.metric_files.view() if hub.metric_files is not None else None

    def total(counter: Counter) -> int:
        return int(node.total(counter) if node is not None else counter.total())

    def rate(counter: Counter) -> float:
        return round(node.rate(counter) if node is not None else counter.rate(), 2)

    if node is not None:
        p95 = node.quantile(m.store_latency, 0.95)
        batches = int(node.count(m.batch_seconds))  # one per batch the writer finished
    else:
        p95 = m.store_latency.quantile(0.95)
        batches = hub.writer.batches if hub.writer is not None else 0
    return {
        "consumer_pending": int(m.consumer.value(field="pending")),
        "ack_pending": int(m.consumer.value(field="ack_pending")),
        "redelivered": int(m.consumer.value(field="redelivered")),
        "dead_letters_pending": int(m.dlq_depth.value(reason="all")),
        "per_second": {"ingested": rate(m.ingested), "stored": rate(m.stored), "rejected": rate(m.rejected)},
        "totals": {
            "ingested": total(m.ingested),
            "stored": total(m.stored),
            "duplicates": total(m.duplicates),
            "rejected": total(m.rejected),
            "published": total(m.published),
            "retries": total(m.retries),
        },
        "writer_batches": batches,
        # Above the largest bucket the histogram answers +Inf, which JSON cannot carry (it made
        # /health/ready a 500).
        "ingest_to_stored_p95_s": p95 if p95 is not None and math.isfinite(p95) else None,
    }


@operation(
    summary="Prometheus metrics",
    tags=["health"],
    responses={
        200: Content(
            media_type="text/plain",
            schema={"type": "string"},
            description="Prometheus text exposition format 0.0.4; OpenMetrics 1.0 "
            "(application/openmetrics-text) when the Accept header asks",
        )
    },
)
async def metrics(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    await asyncio.gather(refresh_gauges(hub), readiness.check(hub))
    registry: Registry | NodeRegistry = hub.metrics.registry
    if hub.metric_files is not None:  # one of several workers: answer for the node
        hub.metric_files.write()
        registry = hub.metric_files.node()
    body, content_type = registry.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type, headers={"Vary": "Accept"})


routes = [Route("/metrics", metrics, methods=["GET"])]
