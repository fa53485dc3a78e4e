"""The NATS service with the Node.js ``nats`` client (tests/natsjs, installed by ``npm ci``): the same
rows as REST, page after page, ``$SRV.INFO`` and the error replies.

Skipped without node and npm unless ``TICKSTOCK_REQUIRE_NODE`` is set (CI sets it): then it fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from api.auth import mint_token
from hub.subjects import SCAN_SUBJECT, SYMBOLS_SUBJECT, UNIVERSES_SUBJECT
from tests.api.conftest import scan_rows
from tests.conftest import JWT_SECRET
from tests.node import npm_installed
from tests.support import LiveHub, within

pytestmark = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="node-svc-reader", scopes=["patterns:read"])
WRITER = mint_token(JWT_SECRET, subject="node-svc-writer", scopes=["patterns:write"])
CLIENT = Path(__file__).resolve().parents[1] / "natsjs"
Ask = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
def client_script() -> Path:
    """tests/natsjs with node_modules installed from package-lock.json (``npm ci``, once per lock)."""
    return npm_installed(CLIENT, what="the NATS service client check") / "client.mjs"


@pytest_asyncio.fixture(loop_scope="session")
async def node(client_script: Path, svc_hub: LiveHub) -> AsyncIterator[Ask]:
    """``await ask(subject, body, token=READER)``: one request through ``node client.mjs``; its reply."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(client_script),
        svc_hub.settings.nats_url or "",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def ask(
        subject: str, body: Any = None, *, token: str | None = READER, raw: str | None = None
    ) -> Any:
        line: dict[str, Any] = {"subject": subject, "token": token}
        line |= {"raw": raw} if raw is not None else {} if body is None else {"body": body}
        proc.stdin.write(json.dumps(line).encode() + b"\n")  # type: ignore[union-attr]
        async with within(30, what=f"the node client's reply on {subject}"):
            answer = await proc.stdout.readline()  # type: ignore[union-attr]
        assert answer, "the node client ended"
        return json.loads(answer)

    yield ask
    proc.stdin.close()
    async with within(10, what="the node client to exit"):
        assert await proc.wait() == 0


@pytest_asyncio.fixture(loop_scope="session")
async def rest(svc_hub: LiveHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=svc_hub.url, headers={"Authorization": f"Bearer {READER}"}, timeout=30
    ) as client:
        yield client


@pytest.mark.slow
async def test_node_gets_the_rows_rest_returns_page_after_page(node: Ask, rest: httpx.AsyncClient) -> None:
    compared = 0
    for query, request in [
        ({"limit": "9"}, {"limit": 9}),
        (
            {"symbol": "MSFT", "sort": "confidence", "limit": "6"},
            {"symbol": ["MSFT"], "sort": "confidence", "limit": 6},
        ),
    ]:
        cursor = None
        for _ in range(3):
            extra = {} if cursor is None else {"cursor": cursor}
            reply = await node(SCAN_SUBJECT, {**request, **extra})
            response = await rest.get("/api/patterns/scan", params={**query, **extra})
            assert "Nats-Service-Error" not in reply["headers"], reply
            assert scan_rows(reply["body"]) == scan_rows(response.json())
            compared += 1
            cursor = reply["body"]["next_cursor"]
            assert cursor is not None
    symbols = await node(SYMBOLS_SUBJECT, {"universe": "dow30", "limit": 4})
    assert (
        symbols["body"] == (await rest.get("/api/symbols", params={"universe": "dow30", "limit": "4"})).json()
    )
    universes = await node(UNIVERSES_SUBJECT)
    assert universes["body"] == (await rest.get("/api/universes")).json()
    print(f"nats service, node client: {compared} scan pages, symbols and universes equal to REST")


@pytest.mark.slow
async def test_node_discovers_the_service_and_gets_the_error_replies(node: Ask) -> None:
    info = await node("$SRV.INFO.tickstock", token=None)
    subjects = {e["subject"] for e in info["body"]["endpoints"]}
    assert subjects == {SCAN_SUBJECT, SYMBOLS_SUBJECT, UNIVERSES_SUBJECT}
    for kwargs, status in [
        ({"token": None}, "401"),
        ({"token": WRITER}, "403"),
        ({"raw": "{not json"}, "400"),
        ({"body": {"limit": "many"}}, "400"),
        ({"body": {"cursor": "forged"}}, "400"),
    ]:
        reply = await node(SCAN_SUBJECT, **kwargs)
        assert reply["headers"]["Nats-Service-Error-Code"] == status, (kwargs, reply)
        assert reply["body"]["status"] == int(status) and reply["body"]["detail"]
        ok = await node(SCAN_SUBJECT, {"limit": 1})
        assert len(ok["body"]["items"]) == 1
