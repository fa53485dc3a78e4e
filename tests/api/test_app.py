"""The app's own lifespan opens and closes every resource."""

from __future__ import annotations

import contextlib

import httpx
import pytest
import uvicorn

from api.app import ConfigurationError, create_app, open_hub
from api.settings import Settings
from tests.support import free_port, serve_started


async def test_open_hub_needs_every_url() -> None:
    with pytest.raises(ConfigurationError, match="no URL for nats, redis"):
        async with open_hub(Settings(database_url="postgresql://x@127.0.0.1/x")):
            pass


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def test_lifespan_opens_and_closes_the_hub(settings: Settings) -> None:

    app = create_app(settings)
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = await serve_started(server)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/health/ready")
    assert response.json()["status"] == "ok"
    hub = app.state.hub
    server.should_exit = True
    await task
    assert hub.nats.is_closed
    assert hub.pool.closed
