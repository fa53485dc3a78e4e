"""Readiness: can this node store and move events? One check of each dependency with a short timeout,
shared by ``GET /health/ready`` (the body and 200/503) and ``GET /metrics`` (``tickstock_ready`` and
``tickstock_dependency_up``, so an alert sees a node that is up but not ready).

Down when PostgreSQL or NATS does not answer (the node cannot store or move events); degraded, still
ready, when only Redis is down or the cache's breaker is open (scans fall back to PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from api.state import HubState
from store.pool import ping

__all__ = ["CHECK_TIMEOUT_S", "DEPENDENCIES", "Report", "check"]

CHECK_TIMEOUT_S = 2.0
DEPENDENCIES = ("postgres", "nats", "redis")


@dataclass(frozen=True)
class Report:
    """Each dependency's ``status`` (``up``/``down``), ``latency_ms`` and ``error``, and the verdict."""

    checks: dict[str, dict[str, Any]]
    status: Literal["ok", "degraded", "down"]

    @property
    def http_status(self) -> int:
        return 503 if self.status == "down" else 200


async def _timed(check: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        extra = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except Exception as exc:
        return {
            "status": "down",
            "error": str(exc) or type(exc).__name__,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    result: dict[str, Any] = {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    result.update(extra or {})
    return result


async def check(hub: HubState) -> Report:
    """Check the three dependencies concurrently (each within :data:`CHECK_TIMEOUT_S`), record the result
    in the node's readiness gauges and return it. Never raises for a dependency that is down."""

    async def postgres() -> None:
        await ping(hub.pool)

    async def nats() -> dict[str, Any]:
        if not hub.nats.is_connected:
            raise ConnectionError("not connected")
        info = await hub.js.account_info()
        return {"jetstream": {"streams": info.streams, "consumers": info.consumers}}

    async def redis() -> None:
        await hub.redis.ping()

    results = await asyncio.gather(_timed(postgres), _timed(nats), _timed(redis))
    checks = dict(zip(DEPENDENCIES, results, strict=True))
    status: Literal["ok", "degraded", "down"]
    if checks["postgres"]["status"] != "up" or checks["nats"]["status"] != "up":
        status = "down"
    elif checks["redis"]["status"] != "up" or (hub.cache is not None and hub.cache.status == "degraded"):
        status = "degraded"
    else:
        status = "ok"
    metrics = hub.metrics
    metrics.ready.set(0.0 if status == "down" else 1.0)
    metrics.dependency_up.replace(
        {name: float(result["status"] == "up") for name, result in checks.items()}, label="dependency"
    )
    return Report(checks=checks, status=status)
