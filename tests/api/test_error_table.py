"""The one table in ``api.errors``: each domain error's problem document and websocket codes, on the real app."""

from __future__ import annotations

import ast
import io
import json
import tokenize
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
import pytest_asyncio
import websockets
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection

from api.auth import AuthError, mint_token
from api.errors import ERROR_TABLE, UNEXPECTED_DETAIL, ApiError, problem_for
from api.ratelimit import Decision, RateLimitExceeded
from hub import protocol
from hub.broker import BrokerError
from hub.errors import HubError, ReplayError
from hub.fanout import FilterError
from hub.model import EventError
from store.definitions import DefinitionConflict, DefinitionError
from store.errors import StoreError, StoreUnavailable
from store.migrate import MigrationError
from store.scans import CursorError, ScanError
from store.users import DuplicateName, LimitExceeded, UserDataError
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, problem

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "application/problem+json"

# exception, HTTP status, websocket error-frame code, websocket close code
CASES: list[tuple[BaseException, int, str | None, int | None]] = [
    (ApiError("bad"), 400, protocol.ERROR_INVALID, None),
    (AuthError("no token"), 401, protocol.ERROR_UNAUTHENTICATED, protocol.CLOSE_UNAUTHORIZED),
    (
        AuthError("no scope", status=403, scope="admin"),
        403,
        protocol.ERROR_FORBIDDEN,
        protocol.CLOSE_FORBIDDEN,
    ),
    (
        RateLimitExceeded(Decision(allowed=False, limit=1, remaining=0, retry_after_s=1.0, checked=True)),
        429,
        None,
        protocol.CLOSE_TOO_MANY,
    ),
    (ReplayError("no dead letter 7", kind="not_found"), 404, None, None),
    (
        ReplayError("would be rejected again", kind="rejected", reason="not_json"),
        422,
        protocol.ERROR_INVALID,
        None,
    ),
    (BrokerError("nats://10.0.0.1:4222 refused"), 503, None, None),
    (HubError("anything"), 503, None, None),
    (EventError("invalid_symbol", "bad symbol"), 400, protocol.ERROR_INVALID, None),
    (FilterError("unknown universe zz"), 400, protocol.ERROR_INVALID_FILTER, None),
    (StoreUnavailable("cannot connect to PostgreSQL: refused"), 503, None, None),
    (MigrationError("0001_x was changed after it was applied"), 503, None, None),
    (StoreError("anything"), 503, None, None),
    (UserDataError("refused"), 400, protocol.ERROR_INVALID, None),
    (LimitExceeded("symbols", 2000, 2001), 400, protocol.ERROR_INVALID, None),
    (LimitExceeded("universe_keys", 50, 51), 400, protocol.ERROR_INVALID, None),
    (LimitExceeded("watchlists", 50, 51), 409, None, None),
    (LimitExceeded("filters", 100, 101), 409, None, None),
    (DuplicateName("a filter named 'x' exists already"), 409, None, None),
    (ScanError("query.universe", "unknown universe zz"), 400, protocol.ERROR_INVALID_FILTER, None),
    (CursorError("the cursor has been altered"), 400, None, None),
    (DefinitionError("pattern 'x' is new: it needs a category", field="category"), 400, None, None),
    (DefinitionConflict("x", [("Hammer", "hammer")]), 409, None, None),
]


@pytest.mark.parametrize(
    ("exc", "status", "ws_code", "close_code"), CASES, ids=[f"{type(c[0]).__name__}-{c[1]}" for c in CASES]
)
def test_the_table_maps_each_domain_error(
    exc: BaseException, status: int, ws_code: str | None, close_code: int | None
) -> None:
    found = problem_for(exc)
    assert found is not None
    assert (found.status, found.ws_code, found.close_code) == (status, ws_code, close_code)
    assert found.status < 500 or found.status == 503  # a domain error is never a 500
    assert found.detail


def test_every_domain_base_is_in_the_table_and_unknown_errors_are_not() -> None:
    for base in (ApiError, HubError, StoreError):
        assert base in ERROR_TABLE
    assert problem_for(RuntimeError("boom")) is None
    assert problem_for(psycopg.OperationalError("driver")) is None  # a driver error is not a domain error


def test_details_that_may_name_servers_stay_in_the_log() -> None:
    for exc in (BrokerError("nats://10.0.0.1:4222 refused"), StoreUnavailable("host=db.internal refused")):
        found = problem_for(exc)
        assert found is not None and "10.0.0.1" not in found.detail and "internal" not in found.detail


def test_migration_error_is_not_retryable() -> None:
    assert issubclass(MigrationError, StoreError)
    assert not issubclass(MigrationError, psycopg.OperationalError)
    assert issubclass(StoreUnavailable, psycopg.OperationalError)  # this one is transient, and says so


# -- websocket codes come from hub/protocol.py only --------------------------------------------------


def _code_literals(path: Path) -> list[str]:
    """Close-code numbers and error-code strings written as literals in ``path``'s code (not in
    docstrings or comments)."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.NUMBER and tok.string.isdigit() and int(tok.string) in protocol.CLOSE_CODES:
            found.append(f"{path.name}:{tok.start[0]}: {tok.string}")
        elif tok.type == tokenize.STRING and not tok.string.startswith(('"""', "'''")):
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, str) and value in protocol.ERROR_CODES - {"forbidden", "invalid"}:
                found.append(f"{path.name}:{tok.start[0]}: {tok.string}")
    return found


def test_websocket_codes_are_defined_once() -> None:
    sources = [
        ROOT / "hub" / "connection.py",
        ROOT / "hub" / "client.py",
        ROOT / "api" / "routes" / "ws.py",
        ROOT / "api" / "errors.py",
    ]
    assert [hit for path in sources for hit in _code_literals(path)] == []
    table_codes = {p.ws_code for exc, *_ in CASES if (p := problem_for(exc)) is not None} - {None}
    table_closes = {p.close_code for exc, *_ in CASES if (p := problem_for(exc)) is not None} - {None}
    assert table_codes <= protocol.ERROR_CODES and table_closes <= protocol.CLOSE_CODES


async def _first_frame_or_close(ws: ClientConnection) -> tuple[dict[str, object] | None, int | None]:
    try:
        return json.loads(await ws.recv()), None
    except websockets.exceptions.ConnectionClosed:
        return None, ws.close_code


async def test_the_live_websocket_speaks_the_table(live_hub: LiveHub) -> None:
    token = mint_token(JWT_SECRET, subject="table-ws", scopes=["patterns:read"])
    async with websockets.connect(f"{live_hub.ws_url}/ws?token={token}", open_timeout=10) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["op"] == "welcome"
        await ws.send(
            json.dumps({"op": "subscribe", "id": "s1", "filter": {"universes": ["no-such-universe"]}})
        )
        frame = json.loads(await ws.recv())
    want = problem_for(FilterError("unknown universe"))
    assert want is not None
    assert (frame["op"], frame["code"], frame["id"]) == ("error", want.ws_code, "s1")
    async with websockets.connect(f"{live_hub.ws_url}/ws?token=not.a.token", open_timeout=10) as ws:
        frame, close_code = await _first_frame_or_close(ws)
    refused = problem_for(AuthError("malformed token"))
    assert refused is not None
    assert frame is None and close_code == refused.close_code


# -- routes raise, the table answers ---------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def admin(live_hub: LiveHub) -> AsyncIterator[httpx.AsyncClient]:
    token = mint_token(JWT_SECRET, subject="table-admin", scopes=["admin"])
    async with httpx.AsyncClient(
        base_url=live_hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


async def test_a_route_raising_a_domain_error_gets_its_problem_document(admin: httpx.AsyncClient) -> None:
    # The replay route does not catch ReplayError: the table turns "not_found" into a 404.
    response = await admin.post("/api/admin/dlq/999999999/replay")
    body = problem(response, 404)
    assert body["detail"] == "no dead letter 999999999"
    assert body["instance"] == "/api/admin/dlq/999999999/replay"
    assert response.headers["content-type"] == PROBLEM


async def _planted(request: Request) -> Response:
    kind = request.query_params["kind"]
    if kind == "duplicate":
        raise DuplicateName("a filter named 'x' exists already")
    if kind == "store":
        raise StoreUnavailable("cannot connect to PostgreSQL: host=db.internal refused")
    if kind == "replay":
        raise ReplayError("would be rejected again: not_json", kind="rejected", reason="not_json")
    raise RuntimeError("secret internals /etc/passwd")


@pytest.mark.parametrize(
    ("kind", "status"), [("duplicate", 409), ("store", 503), ("replay", 422), ("crash", 500)]
)
async def test_a_planted_raise_needs_no_mapping(live_hub: LiveHub, kind: str, status: int) -> None:
    app = live_hub.app
    assert app is not None
    route = Route("/api/test/planted", _planted, methods=["GET"])
    app.router.routes.insert(0, route)
    try:
        async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
            response = await client.get("/api/test/planted", params={"kind": kind})
    finally:
        app.router.routes.remove(route)
    body = problem(response, status)
    assert (
        "Traceback" not in response.text
        and "secret" not in response.text
        and "db.internal" not in response.text
    )
    if kind == "duplicate":
        assert body["errors"] == [{"loc": "body.name", "msg": "already used"}]
    if kind == "crash":
        assert body["detail"] == UNEXPECTED_DETAIL
