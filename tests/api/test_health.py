"""Liveness and readiness against real servers, with each dependency cut in turn through a proxy."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from api.settings import Settings
from tests.support import LiveHub, TcpProxy, wait_for


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return parts._replace(netloc=netloc).geturl()


@pytest_asyncio.fixture(loop_scope="session")
async def proxied(settings: Settings) -> AsyncIterator[tuple[LiveHub, dict[str, TcpProxy]]]:
    """A live hub whose three connections each go through a proxy the test can cut."""
    async with (
        TcpProxy(*_hostport(settings.database_url or "")) as pg,
        TcpProxy(*_hostport(settings.nats_url or "")) as nats,
        TcpProxy(*_hostport(settings.redis_url or "")) as redis,
    ):
        proxied_settings = dataclasses.replace(
            settings,
            database_url=_via(settings.database_url or "", pg.port),
            nats_url=_via(settings.nats_url or "", nats.port),
            redis_url=_via(settings.redis_url or "", redis.port),
            pool_timeout_s=1.0,
        )
        async with LiveHub(proxied_settings) as hub:
            yield hub, {"postgres": pg, "nats": nats, "redis": redis}


async def _ready(hub: LiveHub) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        return await client.get("/health/ready")


async def _scraped(hub: LiveHub) -> dict[str, float]:
    """What ``/metrics`` says about readiness: ``ready`` and one entry per dependency."""
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    seen = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "tickstock_ready":
                seen["ready"] = sample.value
            elif sample.name == "tickstock_dependency_up":
                seen[sample.labels["dependency"]] = sample.value
    return seen


async def test_liveness_and_readiness_when_all_is_up(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        live = await client.get("/health")
        ready = await client.get("/health/ready")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok"
    for name in ("postgres", "nats", "redis"):
        assert body["checks"][name]["status"] == "up"
        assert body["checks"][name]["latency_ms"] >= 0
    assert "streams" in body["checks"]["nats"]["jetstream"]
    assert ready.headers["cache-control"] == "no-store"
    assert await _scraped(live_hub) == {"ready": 1, "postgres": 1, "nats": 1, "redis": 1}


async def test_redis_down_is_degraded_but_still_200_and_recovers(proxied) -> None:  # type: ignore[no-untyped-def]
    hub, proxies = proxied
    await proxies["redis"].cut()
    response = await _ready(hub)
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["redis"]["status"] == "down"
    assert await _scraped(hub) == {"ready": 1, "postgres": 1, "nats": 1, "redis": 0}
    await proxies["redis"].restore()

    async def ok() -> bool:
        return bool((await _ready(hub)).json()["status"] == "ok")

    await wait_for(ok, timeout=30, interval=0.1, what="readiness ok again")


@pytest.mark.parametrize("component", ["postgres", "nats"])
async def test_postgres_or_nats_down_is_503(proxied, component: str) -> None:  # type: ignore[no-untyped-def]
    hub, proxies = proxied
    await proxies[component].cut()
    response = await _ready(hub)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"][component]["status"] == "down"
    assert body["checks"][component]["error"]
    others = {"postgres", "nats"} - {component}
    assert all(body["checks"][o]["status"] == "up" for o in others)
    # A scrape checks too: the node is up (it answers) but not ready, which an alert can see.
    scraped = await _scraped(hub)
    assert scraped == {"ready": 0, "redis": 1, component: 0, **dict.fromkeys(others, 1)}
    await proxies[component].restore()

    async def ready_again() -> bool:
        return (await _scraped(hub))["ready"] == 1

    await wait_for(ready_again, timeout=30, interval=0.1, what="tickstock_ready back to 1")


async def test_unknown_route_is_a_problem_document(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        response = await client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    assert body == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "instance": "/nope",
    }
