"""Hostile input at the hub's edges (issue #11): websocket frames, close reasons, tokens, the key set, and
failed authentications per address. Each is answered with its documented error: never a 500, a 1011, or
an ERROR log record."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import websockets
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from api.app import create_app
from api.auth import JWKS_UNAVAILABLE, Authenticator, AuthError, mint_token
from api.authlimit import AUTH_FAILURE_KEY_PREFIX, AuthFailureLimiter
from api.cli import main
from api.jsonbound import MAX_DEPTH, JsonTooDeep, loads_bounded
from api.settings import Settings
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, TcpProxy, problem

ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="edge-reader", scopes=["patterns:read"])
WRITER = mint_token(JWT_SECRET, subject="edge-writer", scopes=["patterns:write", "patterns:read"])


# -- helpers ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_raw(header: dict[str, Any] | str, claims: dict[str, Any] | str, secret: str = JWT_SECRET) -> str:
    """A correctly HS256-signed JWS over any header and payload text (even what no library would write)."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{_b64(head.encode())}.{_b64(body.encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "mallory",
        "scope": "patterns:read patterns:write",
        "iat": now,
        "exp": now + 600,
        "iss": "tickstock-hub",
        "aud": "tickstock",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


ALG_E = _hs256_raw({"alg": "é" * 100, "typ": "JWT"}, _claims())

# name -> a token the hub must refuse with 401 / 4401
HOSTILE_TOKENS: dict[str, str] = {
    "alg 100 x é": ALG_E,
    "alg not a string": _hs256_raw({"alg": ["HS256"]}, _claims()),
    "kid not a string": _hs256_raw({"alg": "HS256", "kid": {"a": 1}}, _claims()),
    "sub of 257 characters": _hs256_raw({"alg": "HS256"}, _claims(sub="s" * 257)),
    "sub with NUL": _hs256_raw({"alg": "HS256"}, _claims(sub="alice\x00admin")),
    "sub with CR LF": _hs256_raw({"alg": "HS256"}, _claims(sub="alice\r\nX-Admin: yes")),
    "sub empty": _hs256_raw({"alg": "HS256"}, _claims(sub="")),
    "sub a number": _hs256_raw({"alg": "HS256"}, _claims(sub=12345)),
    "no iat": _hs256_raw({"alg": "HS256"}, _claims(iat=None)),
    "lives a day and a second": _hs256_raw(
        {"alg": "HS256"}, _claims(exp=int(time.time()) + 86_401, iat=int(time.time()))
    ),
    "iat far in the past, exp far ahead": _hs256_raw({"alg": "HS256"}, _claims(iat=0, exp=2**40)),
    "exp NaN": _hs256_raw({"alg": "HS256"}, json.dumps(_claims(exp=float("nan")))),
    # Deeper than the interpreter's recursion limit (1000), within the 8 KiB token limit.
    "header nested 2000 deep": _hs256_raw('{"alg":"HS256","x":' + _nested(2000) + "}", _claims()),
    "claims nested 2000 deep": _hs256_raw(
        {"alg": "HS256"}, json.dumps(_claims())[:-1] + ',"x":' + _nested(2000) + "}"
    ),
}


@pytest.fixture(autouse=True)
def _no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here: not one ERROR record (a traceback) from the hub or uvicorn."""
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hub(settings: Settings) -> AsyncIterator[LiveHub]:
    """The hub with the per-address limit of failed authentications off (the tests all come from 127.0.0.1);
    ``limited_hub`` tests the limit."""
    async with LiveHub(dataclasses.replace(settings, rate_limit_per_s=0, auth_failure_per_s=0)) as live:
        yield live


async def _ws_closed(
    url: str,
    first: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int | None, str]:
    """Open ``url``, optionally send ``first``, and return the close code and reason the hub sends."""
    async with websockets.connect(url, ping_interval=None, additional_headers=headers) as ws:
        if first is not None:
            await ws.send(first)
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        assert ws.protocol.close_rcvd is not None, "the TCP connection ended without a close frame"
        return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason


# -- the bounded JSON reader ------------------------------------------------------------------------


def test_the_json_reader_refuses_depth_before_parsing() -> None:
    assert loads_bounded(_nested(MAX_DEPTH)) == json.loads(_nested(MAX_DEPTH))
    for text in (_nested(MAX_DEPTH + 1), "[" * 200_000, '{"a":' * 5_000):
        with pytest.raises(JsonTooDeep):
            loads_bounded(text)
    assert loads_bounded('["[[[[' + "[" * 100 + '"]') == [
        "[[[[" + "[" * 100
    ]  # brackets inside strings do not count
    for text in ("[NaN]", "[Infinity]", "{", "9" * 5_000):
        with pytest.raises(ValueError):
            loads_bounded(text)


def test_the_json_reader_refuses_a_key_named_twice_on_request() -> None:
    assert loads_bounded('{"a": 1, "a": 2}') == {"a": 2}  # json.loads' own rule, by default
    assert loads_bounded('{"a": 1, "b": {"c": 2}}', unique_keys=True) == {"a": 1, "b": {"c": 2}}
    for text in ('{"a": 1, "a": 2}', '{"a": [{"b": 1, "b": 1}]}'):
        with pytest.raises(ValueError, match="duplicate key"):
            loads_bounded(text, unique_keys=True)


# -- websocket frames --------------------------------------------------------------------------------


HOSTILE_FRAMES: list[tuple[str, str]] = [
    ("[" * 30_000 + "]" * 30_000, "bad_frame"),
    ('{"op":"ping","ts":' + _nested(20_000) + "}", "bad_frame"),
    ('{"op":"subscribe","id":"x","filter":{"symbols":' + _nested(MAX_DEPTH) + "}}", "bad_frame"),
    ('{"op":"ping","ts":NaN}', "bad_frame"),
    ('{"op":"ping","ts":' + "9" * 5_000 + "}", "bad_frame"),
    ('{"op":5}', "bad_frame"),
    ('{"op":["ping"]}', "bad_frame"),
    # A key named twice has no one meaning; last-wins would make this a subscription that never answers
    # with an error (and floods the socket with events instead).
    ('{"op":"ping","op":"subscribe","id":"s"}', "bad_frame"),
    ('{"op":"ping","ts":{"a":1,"a":2}}', "bad_frame"),
    ('{"op":"\\ud800"}', "unknown_op"),
    ('{"op":"subscribe","id":5,"filter":{}}', "invalid"),
    ('{"op":"subscribe","id":"x","since":"12"}', "invalid"),
    ('{"op":"subscribe","id":"x","since":1e400}', "invalid"),
    ('{"op":"subscribe","id":"x","since":' + "9" * 40 + "}", "invalid"),
    ('{"op":"subscribe","id":"x","filter":[]}', "invalid_filter"),
    ('{"op":"subscribe","id":"x","filter":{"symbols":"AAPL"}}', "invalid_filter"),
    ('{"op":"subscribe","id":"x","filter":{"confidence_min":"0.5"}}', "invalid_filter"),
    ('{"op":"unsubscribe","id":{"a":1}}', "invalid"),
    ('{"op":"refresh","token":7}', "invalid"),
    ('{"op":"subscribe","id":"x","' + "k" * 5_000 + '":1}', "invalid"),
]


@ON_SESSION_LOOP
async def test_hostile_frames_get_an_error_frame_and_the_connection_stays_open(hub: LiveHub) -> None:
    closes_before = hub.hub.fanout.metrics.closes.value(code="1011")  # type: ignore[union-attr]
    async with websockets.connect(f"{hub.ws_url}/ws?token={READER}", ping_interval=None) as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        for frame, code in HOSTILE_FRAMES:
            await ws.send(frame)
            while (reply := json.loads(await ws.recv()))["op"] == "ping":
                continue
            assert reply["op"] == "error" and reply["code"] == code, (frame[:60], reply)
            assert len(reply["message"]) < 1_000
        # 32 levels (the frame object is the first) are fine, and the connection is as good as new.
        await ws.send('{"op":"ping","ts":' + _nested(MAX_DEPTH - 1) + "}")
        while (reply := json.loads(await ws.recv()))["op"] != "pong":
            continue
        assert reply["ts"] == json.loads(_nested(MAX_DEPTH - 1))
    assert hub.hub.fanout.metrics.closes.value(code="1011") == closes_before  # type: ignore[union-attr]


# -- close reasons -----------------------------------------------------------------------------------


@ON_SESSION_LOOP
@pytest.mark.parametrize("how", ["query", "auth op"])
async def test_a_token_with_a_long_alg_closes_4401_with_a_generic_reason(hub: LiveHub, how: str) -> None:
    if how == "query":
        code, reason = await _ws_closed(f"{hub.ws_url}/ws?token={ALG_E}")
    else:
        code, reason = await _ws_closed(f"{hub.ws_url}/ws", json.dumps({"op": "auth", "token": ALG_E}))
    assert code == 4401
    assert reason == "invalid token"
    assert "é" not in reason


@ON_SESSION_LOOP
async def test_a_close_reason_is_cut_to_123_bytes_on_a_character_boundary(hub: LiveHub) -> None:
    fanout = hub.hub.fanout
    assert fanout is not None
    async with websockets.connect(f"{hub.ws_url}/ws?token={READER}", ping_interval=None) as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
        conn = next(c for c in fanout.connections if c.subject == "edge-reader" and c.close_code is None)
        conn.close(4401, "é" * 100 + "\ud800")  # 200 bytes and a lone surrogate
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        assert ws.protocol.close_rcvd is not None, "no close frame"
        assert ws.protocol.close_rcvd.code == 4401
        assert ws.protocol.close_rcvd.reason == "é" * 61  # 122 bytes: the 62nd "é" would be 124
        assert len(ws.protocol.close_rcvd.reason.encode()) <= 123


# -- tokens ------------------------------------------------------------------------------------------


@ON_SESSION_LOOP
@pytest.mark.parametrize("name", list(HOSTILE_TOKENS))
async def test_a_hostile_token_is_401_over_http_and_4401_on_a_websocket(hub: LiveHub, name: str) -> None:
    token = HOSTILE_TOKENS[name]
    async with httpx.AsyncClient(base_url=hub.url) as client:
        response = await client.post(
            "/api/patterns", json={"events": []}, headers={"Authorization": f"Bearer {token}"}
        )
    body = problem(response, 401)
    assert "é" not in body["detail"] and "mallory" not in body["detail"] and "\x00" not in body["detail"]
    code, reason = await _ws_closed(f"{hub.ws_url}/ws", json.dumps({"op": "auth", "token": token}))
    assert (code, reason) == (4401, "invalid token")


@ON_SESSION_LOOP
async def test_tokens_at_the_limits_are_accepted() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    now = int(time.time())
    longest = await auth.verify(
        _hs256_raw({"alg": "HS256"}, _claims(sub="é" * 256, iat=now, exp=now + 86_400))
    )
    assert longest.subject == "é" * 256
    dev = mint_token(
        JWT_SECRET, subject="demo-user", scopes=["admin"], ttl_s=86_400
    )  # `tickstock run`'s token
    assert (await auth.verify(dev)).subject == "demo-user"
    short = Authenticator(Settings(jwt_secret=JWT_SECRET, jwt_max_lifetime_s=60))
    with pytest.raises(AuthError, match="at most 60 s") as raised:
        await short.verify(mint_token(JWT_SECRET, subject="x", scopes=[], ttl_s=61))
    assert raised.value.status == 401


def test_tickstock_token_refuses_a_ttl_over_the_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_JWT_SECRET", JWT_SECRET)
    assert main(["token", "--sub", "x", "--ttl", "86401"]) == 1
    err = capsys.readouterr().err
    assert "--ttl 86401" in err and "TICKSTOCK_JWT_MAX_LIFETIME_S" in err and "Traceback" not in err
    monkeypatch.setenv("TICKSTOCK_JWT_MAX_LIFETIME_S", "600")
    assert main(["token", "--sub", "x", "--ttl", "601"]) == 1
    assert main(["token", "--sub", "x", "--ttl", "600"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, OctKey.import_key(JWT_SECRET)).claims
    assert claims["exp"] - claims["iat"] == 600


# -- the key set -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "edge-rsa"}, private=True)


def _rs256(key: RSAKey, **claims: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": key.kid}, _claims(**claims), key)


@pytest.mark.parametrize(
    "url", ["http://keys.example.com/jwks.json", "ftp://127.0.0.1/jwks.json", "gopher://x", "/etc/jwks.json"]
)
def test_only_https_file_and_loopback_http_jwks_urls(url: str) -> None:
    with pytest.raises(ValueError, match="TICKSTOCK_JWKS_URL"):  # pydantic wraps SettingsError
        Settings(jwks_url=url)
    for fine in (
        "https://idp.example.com/.well-known/jwks.json",
        "file:///etc/tickstock/jwks.json",
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]:9/jwks",
    ):
        Settings(jwks_url=fine)


@ON_SESSION_LOOP
async def test_a_jwks_load_failure_is_a_generic_503_and_the_cause_is_logged(
    hub: LiveHub,
    settings: Settings,
    tmp_path: Path,
    rsa_key: RSAKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = tmp_path / "secret-dir" / "jwks.json"
    too_big = tmp_path / "big.json"
    too_big.write_text(json.dumps({"keys": [rsa_key.as_dict(private=False)], "pad": "x" * 2_000}))
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"keys": [5, {"kty": "nope"}]}))
    deep = tmp_path / "deep.json"
    deep.write_text('{"keys":' + _nested(5_000) + "}")
    for path in (missing, too_big, junk, deep):
        jwks_only = dataclasses.replace(
            settings, jwt_secret=None, jwks_url=path.as_uri(), jwks_max_bytes=1_000
        )
        app = create_app(jwks_only, hub=hub.hub)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
            response = await client.get(
                "/api/admin/dlq", headers={"Authorization": f"Bearer {_rs256(rsa_key)}"}
            )
        body = problem(response, 503)
        assert body["detail"] == JWKS_UNAVAILABLE
        assert str(tmp_path) not in response.text and "No such file" not in response.text
    logged = [
        r.getMessage() for r in caplog.records if r.name == "tickstock.auth" and r.levelno == logging.WARNING
    ]
    assert any("secret-dir" in m for m in logged)  # the cause reaches the operator
    assert any("larger than 1000 bytes" in m for m in logged)


class _CountingJwks:
    """A key server on loopback that counts the fetches and answers each one slowly."""

    def __init__(self, *keys: RSAKey) -> None:
        self.body = json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                time.sleep(0.3)  # long enough for every concurrent request to pile up behind it
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@ON_SESSION_LOOP
async def test_concurrent_unknown_kids_make_one_fetch(
    rsa_key: RSAKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _CountingJwks(rsa_key) as server:
        auth = Authenticator(Settings(jwks_url=server.url))
        # 40 requests at a cold start: one fetch, all verified.
        principals = await asyncio.gather(*(auth.verify(_rs256(rsa_key, sub=f"u{i}")) for i in range(40)))
        assert {p.subject for p in principals} == {f"u{i}" for i in range(40)}
        assert server.fetches == 1
        # 40 tokens naming made-up kids, all at once, with the refetch interval out of the way: one refetch.
        monkeypatch.setattr("api.auth.JWKS_MIN_REFETCH_S", 0.0)
        strangers = [
            RSAKey.generate_key(2048, parameters={"kid": f"made-up-{i}"}, private=True) for i in range(4)
        ]
        results = await asyncio.gather(
            *(auth.verify(_rs256(strangers[i % 4])) for i in range(40)), return_exceptions=True
        )
        assert all(isinstance(r, AuthError) and r.status == 401 for r in results)
        assert server.fetches == 2
        # Within the minimum interval, another made-up kid does not reach the key server at all.
        monkeypatch.setattr("api.auth.JWKS_MIN_REFETCH_S", 60.0)
        with pytest.raises(AuthError, match="invalid_key_id"):
            await auth.verify(_rs256(strangers[0]))
        assert server.fetches == 2
        assert (await auth.verify(_rs256(rsa_key))).subject == "mallory"


# -- failed authentications per address --------------------------------------------------------------


BURST = 3
SLOW = 0.05  # tokens a second: nothing refills during a test


@pytest_asyncio.fixture(loop_scope="session")
async def limited_hub(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[LiveHub]:
    await redis_client.delete(AUTH_FAILURE_KEY_PREFIX + "127.0.0.1")
    tuned = dataclasses.replace(
        settings, rate_limit_per_s=0, auth_failure_per_s=SLOW, auth_failure_burst=BURST, ws_auth_timeout_s=5.0
    )
    async with LiveHub(tuned) as live:
        yield live


@ON_SESSION_LOOP
async def test_failed_authentications_beyond_the_burst_are_429_and_valid_tokens_still_pass(
    limited_hub: LiveHub,
) -> None:
    bad = {"Authorization": "Bearer " + HOSTILE_TOKENS["sub with NUL"]}
    async with httpx.AsyncClient(base_url=limited_hub.url) as client:
        refused = [await client.get("/api/admin/dlq", headers=bad) for _ in range(BURST)]
        limited = await client.get("/api/admin/dlq")  # no token at all: a failure too
        valid = await client.get("/api/patterns/definitions", headers={"Authorization": f"Bearer {READER}"})
    assert [r.status_code for r in refused] == [401] * BURST
    body = problem(limited, 429)
    assert "failed authentications" in body["detail"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert valid.status_code == 200  # a good token is never refused for its address's failures
    # The websocket side shares the bucket: a refused token now closes with 4429, and so does an open
    # without a token; a valid token still gets its welcome.
    assert await _ws_closed(f"{limited_hub.ws_url}/ws?token=junk.junk.junk") == (
        4429,
        "too many failed authentications from this address; retry later",
    )
    code, _ = await _ws_closed(f"{limited_hub.ws_url}/ws")
    assert code == 4429
    async with websockets.connect(f"{limited_hub.ws_url}/ws?token={READER}", ping_interval=None) as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"


@ON_SESSION_LOOP
async def test_websocket_opens_without_a_token_spend_the_bucket(limited_hub: LiveHub) -> None:
    opened = []
    for _ in range(BURST):
        ws = await websockets.connect(f"{limited_hub.ws_url}/ws", ping_interval=None)
        opened.append(ws)
        await ws.send('{"op":"ping","ts":1}')
        assert json.loads(await ws.recv())["op"] == "pong"  # open, waiting for its auth message
    try:
        assert (await _ws_closed(f"{limited_hub.ws_url}/ws"))[0] == 4429
    finally:
        for ws in opened:
            await ws.close()


@ON_SESSION_LOOP
async def test_with_redis_cut_a_local_bucket_still_limits_failures(
    hub: LiveHub,
    settings: Settings,
    redis_url: str,
) -> None:
    parts = urlsplit(redis_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        client = aioredis.Redis(
            host="127.0.0.1",
            port=proxy.port,
            db=int(parts.path.strip("/") or 0),
            socket_timeout=0.25,
            socket_connect_timeout=0.25,
        )
        try:
            state = dataclasses.replace(hub.hub, redis=client)
            app = create_app(settings, hub=state)
            limiter = app.state.auth_failures = AuthFailureLimiter(rate_per_s=SLOW, burst=BURST)
            await proxy.cut()
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://hub"
            ) as http:
                codes = [
                    (await http.get("/api/admin/dlq", headers={"Authorization": "Bearer x.y.z"})).status_code
                    for _ in range(BURST + 3)
                ]
            assert codes == [401] * BURST + [429] * 3
            assert limiter.limiter.degraded and limiter.limiter.fail_open.total() == BURST + 3
        finally:
            await client.aclose()
