"""The NATS service ``tickstock`` (api/nats_service.py) with nats-py, against the REST routes it mirrors.

Same rows as REST for the same parameters and token (cursor pages too), one response cache, one rate
limit bucket; discoverable with ``$SRV.PING``/``INFO``/``STATS``; every hostile request gets its
documented error reply and the next request is answered as if it had not happened.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from api.auth import Authenticator, mint_token
from api.nats_request import MAX_REQUEST_BYTES, error_reply, query_string
from api.ratelimit import RateLimiter
from api.settings import Settings
from hub.subjects import SCAN_SUBJECT, SYMBOLS_SUBJECT, UNIVERSES_SUBJECT
from tests.api.conftest import scan_rows
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, RawNats, wait_for, within

pytestmark = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="svc-reader", scopes=["patterns:read"])
WRITER = mint_token(JWT_SECRET, subject="svc-writer", scopes=["patterns:write"])
TIMEOUT_S = 10

# (REST query parameters as pairs, the same as a NATS request object)
SCANS: list[tuple[list[tuple[str, str]], dict[str, Any]]] = [
    ([], {}),
    ([("limit", "7")], {"limit": 7}),
    ([("symbol", "AAPL"), ("symbol", "BRK.B"), ("limit", "5")], {"symbol": ["AAPL", "BRK.B"], "limit": 5}),
    (
        [("pattern", "hammer"), ("timeframe", "daily"), ("confidence_min", "0.3"), ("sort", "confidence")],
        {"pattern": "hammer", "timeframe": ["daily"], "confidence_min": 0.3, "sort": "confidence"},
    ),
    (
        [("universe", "dow30"), ("order", "asc"), ("limit", "4")],
        {"universe": "dow30", "order": "asc", "limit": 4},
    ),
    ([("active_only", "true"), ("history", "false")], {"active_only": True, "history": False}),
    ([("symbols", "AAPL,MSFT"), ("per_page", "3")], {"symbols": "AAPL,MSFT", "per_page": 3}),
]


@pytest_asyncio.fixture(loop_scope="session")
async def nc(svc_hub: LiveHub) -> AsyncIterator[NATS]:
    client = await nats.connect(svc_hub.settings.nats_url or "", name="svc-tests")
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def rest(svc_hub: LiveHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=svc_hub.url, headers={"Authorization": f"Bearer {READER}"}, timeout=30
    ) as client:
        yield client


async def ask(
    nc: NATS, subject: str, payload: Any = None, *, token: str | None = READER, raw: bytes | None = None
) -> tuple[dict[str, str], Any]:
    """One request: ``payload`` as JSON (or ``raw`` bytes); returns the reply's headers and JSON body."""
    data = raw if raw is not None else b"" if payload is None else json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    msg = await nc.request(subject, data, timeout=TIMEOUT_S, headers=headers)
    return dict(msg.headers or {}), json.loads(msg.data)


async def assert_answers(nc: NATS) -> None:
    """The service still answers a good request, with rows."""
    headers, body = await ask(nc, SCAN_SUBJECT, {"limit": 2})
    assert "Nats-Service-Error" not in headers and len(body["items"]) == 2, body


# -- the same rows as REST ---------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "request_object"), SCANS)
async def test_a_scan_returns_the_rows_rest_returns_page_after_page(
    nc: NATS, rest: httpx.AsyncClient, query: list[tuple[str, str]], request_object: dict[str, Any]
) -> None:
    pages = 0
    rest_query, request = list(query), dict(request_object)
    while True:
        response = await rest.get("/api/patterns/scan", params=rest_query)
        assert response.status_code == 200, response.text
        headers, body = await ask(nc, SCAN_SUBJECT, request)
        assert "Nats-Service-Error" not in headers, body
        assert scan_rows(body) == scan_rows(response.json())
        assert headers["Content-Type"] == "application/json" and int(headers["RateLimit-Remaining"]) >= 0
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None or pages == 3:
            break
        rest_query = [*query, ("cursor", cursor)]
        request = {**request_object, "cursor": cursor}
    assert pages >= 2 or not body["next_cursor"]
    print(f"nats service scan {urlencode(query) or '(no filter)'}: {pages} pages equal to REST")


async def test_a_users_own_universe_gives_the_same_per_user_rows_over_both_transports(
    nc: NATS, svc_hub: LiveHub
) -> None:
    """``universe=my`` is each caller's own: the token decides the rows, on either transport."""
    pages = {}
    for subject, symbols in (("svc-my-a", ["AAPL"]), ("svc-my-b", ["MSFT", "NVDA"])):
        token = mint_token(JWT_SECRET, subject=subject, scopes=["patterns:read", "universe:write"])
        async with httpx.AsyncClient(
            base_url=svc_hub.url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            saved = await client.put("/api/users/universe", json={"symbols": symbols, "universe_keys": []})
            assert saved.status_code == 200, saved.text
            response = await client.get("/api/patterns/scan", params={"universe": "my", "limit": "5"})
        _, body = await ask(nc, SCAN_SUBJECT, {"universe": "my", "limit": 5}, token=token)
        assert scan_rows(body) == scan_rows(response.json()) and body["items"]
        assert {item["symbol"] for item in body["items"]} <= set(symbols)
        pages[subject] = scan_rows(body)
    assert pages["svc-my-a"] != pages["svc-my-b"]


async def test_the_first_scan_of_a_query_fills_the_cache_the_other_transport_reads(
    nc: NATS, rest: httpx.AsyncClient
) -> None:
    headers, first = await ask(nc, SCAN_SUBJECT, {"pattern": "doji", "limit": 3, "order": "asc"})
    response = await rest.get("/api/patterns/scan", params={"pattern": "doji", "limit": "3", "order": "asc"})
    assert (first["cache"]["hit"], headers["X-Cache"]) == (False, "miss")
    assert response.json()["cache"]["hit"] is True and response.headers["X-Cache"] == "hit"
    assert scan_rows(response.json()) == scan_rows(first)
    page = await rest.get("/api/symbols", params={"universe": "dow30", "limit": "5"})
    headers, body = await ask(nc, SYMBOLS_SUBJECT, {"universe": "dow30", "limit": 5})
    assert page.headers["X-Cache"] == "miss" and headers["X-Cache"] == "hit"
    assert body == page.json()


@pytest.mark.parametrize(
    ("query", "request_object"),
    [
        ([], None),
        ([("limit", "3")], {"limit": 3}),
        ([("q", "A"), ("limit", "2")], {"q": "A", "limit": 2}),
        (
            [("universe", "dow30:nasdaq100"), ("type", "stock")],
            {"universe": ["dow30:nasdaq100"], "type": "stock"},
        ),
    ],
)
async def test_symbols_are_the_rows_rest_returns_page_after_page(
    nc: NATS, rest: httpx.AsyncClient, query: list[tuple[str, str]], request_object: dict[str, Any] | None
) -> None:
    response = await rest.get("/api/symbols", params=query)
    headers, body = await ask(nc, SYMBOLS_SUBJECT, request_object)
    assert response.status_code == 200 and "Nats-Service-Error" not in headers
    assert body == response.json() and body["items"]
    if body["next_cursor"]:
        second = await rest.get("/api/symbols", params=[*query, ("cursor", body["next_cursor"])])
        _, page = await ask(nc, SYMBOLS_SUBJECT, {**(request_object or {}), "cursor": body["next_cursor"]})
        assert page == second.json() and page["items"] != body["items"]


@pytest.mark.parametrize(("query", "request_object"), [({}, None), ({"kind": "index"}, {"kind": "index"})])
async def test_universes_are_the_rows_rest_returns(
    nc: NATS, rest: httpx.AsyncClient, query: dict[str, str], request_object: dict[str, Any] | None
) -> None:
    response = await rest.get("/api/universes", params=query)
    _, body = await ask(nc, UNIVERSES_SUBJECT, request_object)
    assert body == response.json() and body["items"]


# -- discovery, metrics -------------------------------------------------------------------------------


async def test_the_service_is_discoverable_and_counts_its_requests(
    nc: NATS, rest: httpx.AsyncClient, svc_hub: LiveHub
) -> None:
    service_id = svc_hub.app.state.nats_service.service.id  # type: ignore[union-attr]
    ping = json.loads((await nc.request("$SRV.PING.tickstock", b"", timeout=TIMEOUT_S)).data)
    assert ping["type"] == "io.nats.micro.v1.ping_response" and ping["name"] == "tickstock"
    info = json.loads((await nc.request(f"$SRV.INFO.tickstock.{service_id}", b"", timeout=TIMEOUT_S)).data)
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert {n: e["subject"] for n, e in endpoints.items()} == {
        "scan": SCAN_SUBJECT,
        "symbols": SYMBOLS_SUBJECT,
        "universes": UNIVERSES_SUBJECT,
    }
    assert endpoints["scan"]["metadata"] == {"rest": "GET /api/patterns/scan", "scope": "patterns:read"}
    print("nats service $SRV.INFO endpoints:", ", ".join(e["subject"] for e in info["endpoints"]))
    await assert_answers(nc)
    await ask(nc, UNIVERSES_SUBJECT, {"nope": 1})
    stats = json.loads((await nc.request(f"$SRV.STATS.tickstock.{service_id}", b"", timeout=TIMEOUT_S)).data)
    by_name = {e["name"]: e for e in stats["endpoints"]}
    assert by_name["scan"]["num_requests"] >= 1 and by_name["universes"]["data"]["error_replies"] >= 1
    text = (await rest.get("/metrics")).text
    assert 'tickstock_nats_service_requests_total{endpoint="scan"}' in text
    assert 'tickstock_nats_service_errors_total{endpoint="universes",status="400"}' in text
    assert "tickstock_nats_service_seconds_count" in text


# -- hostile requests ----------------------------------------------------------------------------------

HOSTILE: list[tuple[str, dict[str, Any], int, str | None]] = [
    # (what, ask's arguments, the status, a loc the problem lists)
    ("no token", {"token": None}, 401, None),
    ("a forged token", {"token": READER[:-4] + "AAAA"}, 401, None),
    ("a malformed token", {"token": "not.a-token"}, 401, None),
    ("a token without patterns:read", {"token": WRITER}, 403, None),
    ("not JSON", {"raw": b"{limit: 3"}, 400, "body"),
    ("a JSON array", {"raw": b"[1, 2]"}, 400, "body"),
    ("a JSON string", {"raw": b'"limit=3"'}, 400, "body"),
    ("NaN", {"raw": b'{"confidence_min": NaN}'}, 400, "body"),
    ("a repeated key", {"raw": b'{"limit": 1, "limit": 2}'}, 400, "body"),
    ("deep nesting", {"raw": b'{"symbol": [["AAPL"]]}'}, 400, "body"),
    ("a lone surrogate", {"raw": b'{"symbol": "\\ud800"}'}, 400, "body"),
    ("too large", {"raw": b'{"symbol": "' + b"A" * MAX_REQUEST_BYTES + b'"}'}, 413, None),
    ("an unknown parameter", {"payload": {"limit": 3, "drop table": 1}}, 400, "query.drop table"),
    ("an object value", {"payload": {"limit": {"$gt": 1}}}, 400, "query.limit"),
    ("null", {"payload": {"symbol": None}}, 400, "query.symbol"),
    ("a limit out of range", {"payload": {"limit": 501}}, 400, "query.limit"),
    ("a wrong type", {"payload": {"active_only": "maybe"}}, 400, "query.active_only"),
    ("a list where one value goes", {"payload": {"limit": [1, 2]}}, 400, "query.limit"),
    ("a forged cursor", {"payload": {"cursor": "eyJ2IjoxfQ.AAAA"}}, 400, "query.cursor"),
    ("a control character", {"payload": {"symbol": "AA\u0000PL"}}, 400, "query.symbol"),
    ("a header-breaking name", {"payload": {"x\r\nNats-Service-Error-Code: 200": 1}}, 400, None),
    ("an unknown pattern", {"payload": {"pattern": "<img src=x onerror=alert(1)>"}}, 400, "query.pattern"),
    ("a huge number", {"payload": {"limit": 10**300}}, 400, "query.limit"),
]


@pytest.mark.parametrize(("what", "kwargs", "status", "loc"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_a_hostile_request_gets_its_error_reply_and_the_next_is_answered(
    nc: NATS, what: str, kwargs: dict[str, Any], status: int, loc: str | None
) -> None:
    headers, body = await ask(nc, SCAN_SUBJECT, **kwargs)
    assert headers["Nats-Service-Error-Code"] == str(status), (what, body)
    assert body["status"] == status and body["instance"] == SCAN_SUBJECT
    assert headers["Nats-Service-Error"] == body["detail"][:256] or "\\x" in headers["Nats-Service-Error"]
    assert all(0x20 <= ord(c) < 0x7F for c in headers["Nats-Service-Error"]), headers
    assert headers["Content-Type"] == "application/problem+json"
    if loc is not None:
        assert loc in [e["loc"] for e in body["errors"]], body
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    await assert_answers(nc)


async def test_the_same_hostile_requests_on_symbols_and_universes(nc: NATS) -> None:
    for subject in (SYMBOLS_SUBJECT, UNIVERSES_SUBJECT):
        for what, kwargs, status, _ in HOSTILE:
            if what in ("a forged cursor", "an unknown pattern", "a list where one value goes"):
                continue  # scan parameters
            headers, body = await ask(nc, subject, **kwargs)
            assert headers["Nats-Service-Error-Code"] == str(status) == str(body["status"]), (subject, what)
    headers, body = await ask(nc, SYMBOLS_SUBJECT, {"universe": "no-such-universe"})
    assert headers["Nats-Service-Error-Code"] == "400" and body["errors"][0]["loc"] == "query.universe"
    await assert_answers(nc)


async def test_a_header_block_that_does_not_decode_is_answered_401_and_the_hub_reads_on(
    nc: NATS, svc_hub: LiveHub
) -> None:
    """Without hub.natsclient the hub's NATS read loop stopped here: ingest, fan-out and the service deaf."""
    async with RawNats(svc_hub.settings.nats_url or "") as raw:
        await raw.subscribe("_INBOX.raw")
        await raw.publish(SCAN_SUBJECT, b"NATS/1.0 \xff\xff\xff\r\n\r\n", b"{}", reply="_INBOX.raw")
        async with within(TIMEOUT_S, what="the reply to a request with undecodable headers"):
            block, payload = await raw.reply()
    assert b"Nats-Service-Error-Code: 401" in block and json.loads(payload)["status"] == 401
    await assert_answers(nc)


async def test_a_publish_without_reply_subject_is_dropped_and_the_service_goes_on(nc: NATS) -> None:
    await nc.publish(SCAN_SUBJECT, b'{"limit": 1}', headers={"Authorization": f"Bearer {READER}"})
    await nc.publish(SCAN_SUBJECT, b"[")
    await assert_answers(nc)


async def test_the_rate_limit_is_the_one_rest_spends(nc: NATS, svc_hub: LiveHub) -> None:
    """One bucket per token subject, whichever transport spends it: 429 with Retry-After on both."""
    state = svc_hub.app.state  # type: ignore[union-attr]
    kept = state.rate_limiter
    state.rate_limiter = RateLimiter(rate_per_s=0.01, burst=2, sync_s=0)
    token = mint_token(JWT_SECRET, subject="svc-limited", scopes=["patterns:read"])
    try:
        async with httpx.AsyncClient(
            base_url=svc_hub.url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            assert (await client.get("/api/universes")).status_code == 200
            headers, _ = await ask(nc, UNIVERSES_SUBJECT, token=token)
            assert headers["RateLimit-Remaining"] == "0"
            headers, body = await ask(nc, UNIVERSES_SUBJECT, token=token)
            assert headers["Nats-Service-Error-Code"] == "429" and int(headers["Retry-After"]) >= 1, body
            assert (await client.get("/api/universes")).status_code == 429
    finally:
        state.rate_limiter = kept
    await assert_answers(nc)


async def test_no_ratelimit_headers_without_a_limit_and_any_case_of_the_header_name(
    nc: NATS, svc_hub: LiveHub
) -> None:
    state = svc_hub.app.state  # type: ignore[union-attr]
    kept = state.rate_limiter
    state.rate_limiter = RateLimiter(rate_per_s=0, burst=1)
    try:
        headers = {"X-Trace": "1", "authorization": f"bearer {READER}"}
        msg = await nc.request(UNIVERSES_SUBJECT, b"", timeout=TIMEOUT_S, headers=headers)
    finally:
        state.rate_limiter = kept
    assert "Nats-Service-Error" not in (msg.headers or {}) and json.loads(msg.data)["items"]
    assert "RateLimit-Limit" not in (msg.headers or {})


async def test_an_unexpected_error_is_a_500_reply_logged_and_the_service_goes_on(
    nc: NATS, svc_hub: LiveHub, caplog: pytest.LogCaptureFixture
) -> None:
    state = svc_hub.app.state  # type: ignore[union-attr]
    kept = state.scan_queries
    state.scan_queries = None  # a broken part of the app: an error the error table does not know
    try:
        headers, body = await ask(nc, SCAN_SUBJECT, {"limit": 1})
    finally:
        state.scan_queries = kept
    assert headers["Nats-Service-Error-Code"] == "500" and body["status"] == 500
    assert "scan_queries" not in json.dumps(body) and "NoneType" not in json.dumps(body)
    assert any("unexpected error" in r.getMessage() and r.exc_info for r in caplog.records)
    await assert_answers(nc)


async def test_a_second_service_on_one_hub_shares_its_metrics_and_leaves_cleanly(svc_hub: LiveHub) -> None:
    from api.nats_service import ScanService

    second = ScanService(svc_hub.app.state)  # type: ignore[union-attr]
    second.metrics.register(svc_hub.hub.metrics.registry)  # the names are taken: the first one's count
    assert svc_hub.hub.metrics.registry.render().count("# TYPE tickstock_nats_service_requests_total") == 1
    await second.__aexit__(None, None, None)  # never entered: nothing to stop
    assert second.service is None


async def test_an_unconfigured_authenticator_and_a_busy_node_answer_503(nc: NATS, svc_hub: LiveHub) -> None:
    state = svc_hub.app.state  # type: ignore[union-attr]
    kept = state.auth
    state.auth = Authenticator(Settings())
    try:
        headers, body = await ask(nc, SCAN_SUBJECT, {})
        assert headers["Nats-Service-Error-Code"] == "503" and "not configured" in body["detail"]
    finally:
        state.auth = kept
    service = state.nats_service
    service.inflight = 0
    try:
        headers, body = await ask(nc, SCAN_SUBJECT, {})
        assert headers["Nats-Service-Error-Code"] == "503" and "too many requests" in body["detail"]
    finally:
        service.inflight = 64
    await assert_answers(nc)


async def test_a_page_too_large_for_one_message_is_a_400_at_limit(nc: NATS, svc_hub: LiveHub) -> None:
    service = svc_hub.app.state.nats_service  # type: ignore[union-attr]
    _, small = await ask(nc, SCAN_SUBJECT, {"limit": 1})
    service.max_reply_bytes = len(json.dumps(small)) + 200  # one row fits, ten do not
    try:
        headers, body = await ask(nc, SCAN_SUBJECT, {"limit": 10})
        assert headers["Nats-Service-Error-Code"] == "400" and body["errors"][0]["loc"] == "query.limit"
        assert "ask for fewer rows" in body["detail"]
        _, one = await ask(nc, SCAN_SUBJECT, {"limit": 1})
        assert len(one["items"]) == 1
    finally:
        service.max_reply_bytes = None
    assert svc_hub.hub.nats.max_payload >= 1024 * 1024


async def test_failed_authentications_over_nats_share_one_bucket(nc: NATS, svc_hub: LiveHub) -> None:
    state = svc_hub.app.state  # type: ignore[union-attr]
    from api.authlimit import AuthFailureLimiter

    kept = getattr(state, "auth_failures", None)
    state.auth_failures = AuthFailureLimiter(rate_per_s=0.01, burst=2)
    try:
        codes = [(await ask(nc, SCAN_SUBJECT, token="x.y.z"))[0]["Nats-Service-Error-Code"] for _ in range(3)]
        assert codes == ["401", "401", "429"]
    finally:
        state.auth_failures = kept
    await assert_answers(nc)


# -- pure logic ------------------------------------------------------------------------------------------


async def test_a_request_object_is_the_query_string_it_stands_for() -> None:
    assert query_string(b"") == query_string(b"  ") == b""
    assert query_string(b'{"symbol": ["A B", "BRK.B"], "active_only": true, "confidence_min": 0.5}') == (
        b"symbol=A+B&symbol=BRK.B&active_only=true&confidence_min=0.5"
    )
    assert query_string(b'{"limit": 7, "history": false, "symbol": []}') == b"limit=7&history=false"


async def test_an_unexpected_error_is_a_generic_500() -> None:
    body, headers = error_reply(RuntimeError("password=hunter2"), instance=SCAN_SUBJECT)
    problem = json.loads(body)
    assert problem["status"] == 500 and "hunter2" not in body.decode() and "hunter2" not in str(headers)
    assert headers["Nats-Service-Error-Code"] == "500"


# -- lifecycle --------------------------------------------------------------------------------------------


async def test_the_service_leaves_with_the_hub(settings: Settings, nc: NATS) -> None:
    async with LiveHub(settings) as other:
        service_id = other.app.state.nats_service.service.id  # type: ignore[union-attr]
        ping = await nc.request(f"$SRV.PING.tickstock.{service_id}", b"", timeout=TIMEOUT_S)
        assert json.loads(ping.data)["id"] == service_id

    async def gone() -> bool:
        try:
            await nc.request(f"$SRV.PING.tickstock.{service_id}", b"", timeout=1)
        except NoRespondersError:
            return True
        return False

    await wait_for(gone, timeout=10, what="the stopped service to stop answering")
    await assert_answers(nc)


async def test_no_service_when_the_setting_says_so(settings: Settings) -> None:
    async with LiveHub(dataclasses.replace(settings, nats_service=False)) as other:
        assert getattr(other.app.state, "nats_service", None) is None


async def test_a_service_whose_connection_closed_first_still_leaves(settings: Settings) -> None:
    from types import SimpleNamespace

    from api.nats_service import ScanService
    from hub.metrics import Metrics

    own = await nats.connect(settings.nats_url or "", name="svc-closing")
    service = ScanService(SimpleNamespace(hub=SimpleNamespace(nats=own, metrics=Metrics())))
    await service.__aenter__()
    await own.close()  # the hub's connection went away under the service
    await service.__aexit__(None, None, None)
    assert service.service is None
