"""Security headers on every kind of response the hub serves; HSTS only behind TLS; the settings."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.routing import Route

from api.app import create_app
from api.auth import mint_token
from api.cli.serving import server_config
from api.securityheaders import (
    DEFAULT_HTML_CSP,
    DEFAULT_OTHER_CSP,
    SecurityHeaders,
    SecurityHeadersMiddleware,
)
from api.settings import Settings, SettingsError
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, free_port, serve_started

ALWAYS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
HSTS = "strict-transport-security"


def secured(response: httpx.Response, *, csp: str = DEFAULT_OTHER_CSP) -> None:
    """Each header once, with the expected value; no HSTS (the request did not come over TLS)."""
    for name, value in {**ALWAYS, "content-security-policy": csp}.items():
        assert response.headers.get_list(name) == [value], (response.request.url, name)
    assert "frame-ancestors 'none'" in csp
    assert HSTS not in response.headers, response.request.url


def bearer(*scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(JWT_SECRET, subject='headers', scopes=list(scopes))}"}


READ = ("patterns:read",)
# method, path, scopes (None: no token), status, HTML?
CASES = [
    ("GET", "/health", None, 200, False),
    ("GET", "/api/patterns/definitions", READ, 200, False),
    ("GET", "/api/patterns/scan?limit=ten", READ, 400, False),
    ("GET", "/api/patterns/scan", None, 401, False),
    ("GET", "/api/admin/dlq", READ, 403, False),
    ("GET", "/no/such/route", None, 404, False),
    ("DELETE", "/health", None, 405, False),
    ("OPTIONS", "/api/patterns/scan", None, 405, False),
    ("HEAD", "/health", None, 200, False),
    ("GET", "/metrics", None, 200, False),
    ("GET", "/openapi.json", None, 200, False),
    ("GET", "/asyncapi.yaml", None, 200, False),
    ("GET", "/schema/pattern-event-v1.json", None, 200, False),
    ("GET", "/docs", None, 200, True),
    ("HEAD", "/docs", None, 200, True),
    ("GET", "/docs/assets/swagger-ui.css", None, 200, False),
    ("GET", "/static/dashboard/app.js", None, 200, False),
    ("GET", "/docs/assets/missing.js", None, 404, False),
]


async def test_every_kind_of_response_carries_the_headers(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url, timeout=30) as client:
        for method, path, scopes, status, html in CASES:
            headers = bearer(*scopes) if scopes else {}
            response = await client.request(method, path, headers=headers)
            assert response.status_code == status, (method, path, response.text)
            assert response.headers["content-type"].startswith("text/html") == html, path
            secured(response, csp=DEFAULT_HTML_CSP if html else DEFAULT_OTHER_CSP)


async def test_the_dashboard_keeps_its_own_headers_and_gains_the_rest(live_hub: LiveHub) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        page = await client.get("/")
    assert page.status_code == 200
    secured(page, csp=DEFAULT_HTML_CSP)


async def test_a_rate_limited_request_and_a_crash_carry_them(live_hub: LiveHub, settings: Settings) -> None:
    limited = create_app(
        dataclasses.replace(settings, rate_limit_per_s=1 / 3600, rate_limit_burst=1), hub=live_hub.hub
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://hub") as client:
        headers = bearer(*READ)
        answers = [await client.get("/api/patterns/definitions", headers=headers) for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 429]
    for response in answers:
        secured(response)

    async def boom(request: Request) -> None:
        raise RuntimeError("a bug")

    crashing = create_app(settings)
    crashing.router.routes.append(Route("/boom", boom))
    transport = httpx.ASGITransport(app=crashing, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert "a bug" not in response.text
    secured(response)


async def test_hsts_only_when_a_trusted_proxy_says_https(live_hub: LiveHub) -> None:
    # uvicorn (as the live hub runs it) believes X-Forwarded-Proto from 127.0.0.1 by default.
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        plain = await client.get("/health")
        proxied = await client.get("/health", headers={"X-Forwarded-Proto": "https"})
        proxied_problem = await client.get("/nope", headers={"X-Forwarded-Proto": "https"})
    assert HSTS not in plain.headers
    assert proxied.headers.get_list(HSTS) == ["max-age=31536000"]
    assert proxied_problem.status_code == 404
    assert proxied_problem.headers.get_list(HSTS) == ["max-age=31536000"]


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def served(live_hub: LiveHub, settings: Settings, **tls: str) -> AsyncIterator[int]:
    """The live hub's state behind another uvicorn configured as ``tickstock serve`` does (plus ``tls``)."""
    config = server_config(create_app(settings, hub=live_hub.hub), settings)
    config.port = free_port()
    config.lifespan = "off"
    config.log_level = "warning"
    for name, value in tls.items():
        setattr(config, name, value)
    server = _Quiet(config)
    task = await serve_started(server)
    try:
        yield config.port
    finally:
        server.should_exit = True
        await task


async def test_an_untrusted_peer_cannot_claim_https(live_hub: LiveHub, settings: Settings) -> None:
    elsewhere = dataclasses.replace(settings, forwarded_allow_ips="192.0.2.7, 198.51.100.0/24")
    async with served(live_hub, elsewhere) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/health", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    secured(response)


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_hsts_over_a_tls_connection(live_hub: LiveHub, settings: Settings, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    tuned = dataclasses.replace(settings, hsts_max_age_s=600, referrer_policy="same-origin")
    async with served(live_hub, tuned, ssl_certfile=str(cert), ssl_keyfile=str(key)) as port:
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=context, base_url=f"https://127.0.0.1:{port}") as client:
            ok = await client.get("/health")
            docs = await client.get("/docs")
            missing = await client.get("/api/patterns/scan")
    for response in (ok, docs, missing):
        assert response.headers.get_list(HSTS) == ["max-age=600"]
        assert response.headers["referrer-policy"] == "same-origin"
    assert missing.status_code == 401


async def test_settings_shape_or_turn_off_the_headers(live_hub: LiveHub, settings: Settings) -> None:
    custom = dataclasses.replace(
        settings,
        csp_html="default-src 'self'; frame-ancestors 'none'",
        csp_other="frame-ancestors 'none'",
        referrer_policy="strict-origin, no-referrer",
        hsts_max_age_s=0,
    )
    off = dataclasses.replace(settings, security_headers=False)
    answers = {}
    for name, tuned in (("custom", custom), ("off", off)):
        app = create_app(tuned, hub=live_hub.hub)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://hub") as client:
            answers[name] = [await client.get(path) for path in ("/health", "/docs", "/")]
    health, docs, dashboard = answers["custom"]
    assert health.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert docs.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
    # The dashboard sets its own strict CSP (and nosniff, no-referrer): kept whatever the settings say.
    assert dashboard.headers.get_list("content-security-policy") == [DEFAULT_HTML_CSP]
    assert answers["off"][2].headers.get_list("content-security-policy") == [DEFAULT_HTML_CSP]
    assert answers["off"][2].headers["referrer-policy"] == "no-referrer"
    assert health.headers["referrer-policy"] == "strict-origin, no-referrer"
    assert HSTS not in health.headers  # https, but max-age 0 turns HSTS off
    for response in answers["off"][:2]:
        assert not {*ALWAYS, "content-security-policy", HSTS} & set(response.headers)
    assert "x-frame-options" not in answers["off"][2].headers


async def test_a_header_the_route_set_is_kept_and_websockets_pass_through() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})
            return
        headers = [(b"X-Frame-Options", b"SAMEORIGIN"), (b"Content-Type", b"TEXT/HTML")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<p>hi</p>"})
        assert headers == [(b"X-Frame-Options", b"SAMEORIGIN"), (b"Content-Type", b"TEXT/HTML")]

    sent: list[dict[str, object]] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    middleware = SecurityHeadersMiddleware(app, headers=SecurityHeaders(hsts_max_age_s=5))
    scope = {"type": "http", "scheme": "https", "method": "GET", "path": "/", "headers": []}
    await middleware(scope, None, send)  # type: ignore[arg-type]
    headers = dict(sent[0]["headers"])  # type: ignore[call-overload]
    assert headers[b"X-Frame-Options"] == b"SAMEORIGIN" and b"x-frame-options" not in headers
    assert headers[b"content-security-policy"] == DEFAULT_HTML_CSP.encode()
    assert headers[b"strict-transport-security"] == b"max-age=5"
    assert sent[1] == {"type": "http.response.body", "body": b"<p>hi</p>"}
    await middleware({"type": "websocket", "headers": []}, None, send)  # type: ignore[arg-type]
    assert sent[2] == {"type": "websocket.close", "code": 1000}

    everything_set = [(name, b"x") for name in (b"x-content-type-options", b"x-frame-options")] + [
        (b"referrer-policy", b"x"),
        (b"content-security-policy", b"x"),
    ]
    start = {"type": "http.response.start", "status": 204, "headers": everything_set}
    assert SecurityHeadersMiddleware(app)._completed(start, tls=False) is start


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TICKSTOCK_CSP_HTML", "default-src 'self'\r\nX-Injected: 1", "CSP_HTML must be visible ASCII"),
        ("TICKSTOCK_CSP_OTHER", " default-src 'none'", "CSP_OTHER must be visible ASCII"),
        ("TICKSTOCK_CSP_OTHER", "x" * 4097, "CSP_OTHER must be visible ASCII"),
        ("TICKSTOCK_CSP_HTML", "default-src 'self'; script-src é", "CSP_HTML must be visible ASCII"),
        ("TICKSTOCK_REFERRER_POLICY", "always", "REFERRER_POLICY must be one or more"),
        ("TICKSTOCK_REFERRER_POLICY", "no-referrer,,origin", "REFERRER_POLICY must be one or more"),
        ("TICKSTOCK_REFERRER_POLICY", "no-referrer ", "REFERRER_POLICY must be visible ASCII"),
        ("TICKSTOCK_HSTS_MAX_AGE_S", "-1", "HSTS_MAX_AGE_S must be >= 0"),
        ("TICKSTOCK_HSTS_MAX_AGE_S", "a year", "HSTS_MAX_AGE_S='a year' is not a valid int"),
        ("TICKSTOCK_FORWARDED_ALLOW_IPS", "10.0.0.1, proxy.example", "'proxy.example' is not an IP address"),
        ("TICKSTOCK_SECURITY_HEADERS", "sometimes", "SECURITY_HEADERS='sometimes' is not a valid bool"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env({variable: value})


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env(
        {
            "TICKSTOCK_SECURITY_HEADERS": "false",
            "TICKSTOCK_CSP_HTML": "default-src 'none'",
            "TICKSTOCK_REFERRER_POLICY": "same-origin",
            "TICKSTOCK_HSTS_MAX_AGE_S": "0",
            "TICKSTOCK_FORWARDED_ALLOW_IPS": "*",
        }
    )
    assert (settings.security_headers, settings.csp_html, settings.referrer_policy) == (
        False,
        "default-src 'none'",
        "same-origin",
    )
    assert (settings.hsts_max_age_s, settings.forwarded_allow_ips) == (0, "*")
    assert server_config(object(), settings).forwarded_allow_ips == "*"
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert server_config(object(), Settings()).forwarded_allow_ips == "127.0.0.1,::1"  # uvicorn's default
