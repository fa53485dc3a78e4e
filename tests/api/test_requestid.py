"""Every response carries a request id; problem documents and log lines repeat it."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from api.requestid import RequestIdLogFilter, RequestIdMiddleware, current_request_id
from tests.support import LiveHub


async def test_the_live_hub_answers_with_a_request_id(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        ok = await client.get("/health")
        missing = await client.get("/api/patterns/scan")  # 401 problem document
        echoed = await client.get("/health", headers={"X-Request-ID": "trace-abc.123"})
        bad = await client.get("/health", headers={"X-Request-ID": "has spaces in it"})
    assert re.fullmatch(r"[0-9a-f]{16}", ok.headers["x-request-id"])
    assert missing.status_code == 401
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    assert echoed.headers["x-request-id"] == "trace-abc.123"
    assert re.fullmatch(r"[0-9a-f]{16}", bad.headers["x-request-id"])
    assert (
        len({ok.headers["x-request-id"], missing.headers["x-request-id"], bad.headers["x-request-id"]}) == 3
    )


def _app() -> Starlette:
    log = logging.getLogger("tickstock.tests.requestid")

    async def whoami(request: Request) -> JSONResponse:
        log.info("handling")
        return JSONResponse({"id": current_request_id()}, headers={"X-Request-ID": "overridden"})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"id": current_request_id()})
        await websocket.close()

    return Starlette(
        routes=[Route("/whoami", whoami), WebSocketRoute("/ws", ws)],
        middleware=[Middleware(RequestIdMiddleware)],
    )


async def test_the_id_is_visible_to_handlers_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdLogFilter())
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        with caplog.at_level(logging.INFO, logger="tickstock.tests.requestid"):
            response = await client.get("/whoami", headers={"X-Request-ID": "abc"})
    assert response.json() == {"id": "abc"}
    assert response.headers.get_list("x-request-id") == ["abc"]  # one header, the hub's
    assert [r.request_id for r in caplog.records if r.name == "tickstock.tests.requestid"] == ["abc"]  # type: ignore[attr-defined]
    assert current_request_id() is None
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
    assert RequestIdLogFilter().filter(record) and record.request_id == "-"  # type: ignore[attr-defined]


async def test_websockets_get_an_id_too(live_hub: LiveHub) -> None:
    import contextlib

    import uvicorn

    from tests.support import free_port, serve_started

    class NoSignals(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            yield

    port = free_port()
    server = NoSignals(
        uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = await serve_started(server)
    try:
        import websockets

        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws", additional_headers={"X-Request-ID": "ws-1"}
        ) as ws:
            assert ws.response.headers["x-request-id"] == "ws-1"
            assert (await ws.recv()) == '{"id":"ws-1"}'
    finally:
        server.should_exit = True
        await task


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope["type"])

    await RequestIdMiddleware(inner)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
