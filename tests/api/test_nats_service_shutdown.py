"""The NATS service's ordered exit with its hub: stop taking requests, answer the ones in hand, then close.

A module of its own: its hub is the only ``tickstock`` service on the NATS server while it runs, so
every request goes to the node under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import psycopg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from api.auth import mint_token
from api.settings import Settings
from hub.subjects import SCAN_SUBJECT
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEADERS = {"Authorization": f"Bearer {mint_token(JWT_SECRET, subject='svc-exit', scopes=['patterns:read'])}"}


@pytest_asyncio.fixture(loop_scope="session")
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await nats.connect(settings.nats_url or "", name="svc-exit-tests")
    yield client
    await client.close()


async def test_a_request_in_hand_is_answered_while_the_hub_stops(settings: Settings, nc: NATS) -> None:
    other = LiveHub(settings)
    await other.__aenter__()
    stopping: asyncio.Task[None] | None = None
    try:
        service = other.app.state.nats_service  # type: ignore[union-attr]
        async with await psycopg.AsyncConnection.connect(settings.database_url or "") as lock:
            async with lock.transaction():
                # The scan waits for this lock: the request stays in hand until the test lets it go.
                await lock.execute("LOCK TABLE pattern_events IN ACCESS EXCLUSIVE MODE")
                asked = asyncio.create_task(nc.request(SCAN_SUBJECT, b"{}", timeout=30, headers=HEADERS))
                await wait_for(lambda: service._tasks, timeout=10, what="the request in hand")
                stopping = asyncio.create_task(other.__aexit__(None, None, None))
                await wait_for(lambda: service.service is None, timeout=10, what="the endpoints to stop")
                with pytest.raises(NoRespondersError):  # no new request reaches the stopping node
                    await nc.request(SCAN_SUBJECT, b"{}", timeout=5, headers=HEADERS)
                assert not asked.done()
        reply = await asked  # the lock is gone: the request in hand is answered before the hub closes
        assert "Nats-Service-Error" not in (reply.headers or {}) and "items" in json.loads(reply.data)
        await stopping
    finally:
        if stopping is None:
            await other.__aexit__(None, None, None)


async def test_a_request_that_outlives_the_stop_timeout_is_cancelled_with_a_503(
    settings: Settings, nc: NATS
) -> None:
    other = LiveHub(settings)
    await other.__aenter__()
    service = other.app.state.nats_service  # type: ignore[union-attr]
    service.stop_timeout_s = 0.2
    async with await psycopg.AsyncConnection.connect(settings.database_url or "") as lock:
        async with lock.transaction():
            await lock.execute("LOCK TABLE pattern_events IN ACCESS EXCLUSIVE MODE")
            asked = asyncio.create_task(nc.request(SCAN_SUBJECT, b"{}", timeout=30, headers=HEADERS))
            await wait_for(lambda: service._tasks, timeout=10, what="the request in hand")
            await other.__aexit__(None, None, None)  # returns: the request was cancelled, not waited for
            assert not service._tasks
    reply = await asked
    assert reply.headers["Nats-Service-Error-Code"] == "503", reply.headers
    assert json.loads(reply.data)["detail"] == "this hub node is stopping; try again"
