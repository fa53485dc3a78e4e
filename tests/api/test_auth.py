"""Bearer tokens and scopes: the whole matrix through a live hub, and ``Authenticator`` directly."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

import api.auth
from api.app import create_app
from api.auth import MAX_TOKEN_BYTES, Authenticator, AuthError, Principal, mint_token, requires
from api.settings import Settings
from api.state import HubState
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, free_port, serve_started

ISSUER, AUDIENCE = "tickstock-hub", "tickstock"
INVALID = 'Bearer realm="tickstock", error="invalid_token"'
PROBLEM = "application/problem+json"


# -- helpers ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the hub's issuer and audience; ``name=None`` drops a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "scope": "patterns:write",
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hmac_token(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes, digest: Any = hashlib.sha256
) -> str:
    """A JWS built by hand, so any header (HS512, a PEM as secret) can be signed."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def _hs256(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret))


def _signed(key: RSAKey | ECKey, alg: str, claims: dict[str, Any] | None = None) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, claims or _claims(), key)


def _write_jwks(path: Path, *keys: RSAKey | ECKey) -> None:
    path.write_text(json.dumps({"keys": [k.as_dict(private=False) for k in keys]}))


def _jwks_settings(path: Path, **overrides: Any) -> Settings:
    return Settings(jwks_url=path.as_uri(), jwt_secret=None, **overrides)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_problem(
    response: httpx.Response, status: int, challenge: str | None, detail: str, path: str
) -> None:
    assert response.status_code == status, response.text
    assert response.headers.get("www-authenticate") == challenge
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["instance"] == path
    assert detail in body["detail"], body


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@contextlib.asynccontextmanager
async def _serve(settings: Settings, hub: HubState) -> AsyncIterator[str]:
    """The hub's app built from ``settings`` (its own authenticator) over the running ``hub``."""
    port = free_port()
    server = _Server(
        uvicorn.Config(
            create_app(settings, hub=hub),
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
    )
    task = await serve_started(server)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"}, private=True)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: RSAKey, ec_key: ECKey) -> Path:
    path = tmp_path / "jwks.json"
    _write_jwks(path, rsa_key, ec_key)
    return path


# -- 401: no or unusable credentials, through the live hub -------------------------------------------


def _oversized() -> str:
    return _hs256(_claims(pad="x" * MAX_TOKEN_BYTES))


def _not_json_header() -> str:
    return f"{_b64(b'not json')}.{_segment(_claims())}.{_b64(b'sig')}"


def _alg_none() -> str:
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(_claims())}."


def _hs512() -> str:
    return _hmac_token({"alg": "HS512", "typ": "JWT"}, _claims(), JWT_SECRET.encode(), hashlib.sha512)


def _rs256(rsa: RSAKey) -> str:
    return _signed(rsa, "RS256")


CREDENTIAL_CASES: list[tuple[str, Callable[[RSAKey], str | None], str]] = [
    ("no token", lambda _: None, "a bearer token is required"),
    ("basic", lambda _: "Basic YWxpY2U6c2VjcmV0", "a bearer token is required"),
    ("bearer without a token", lambda _: "Bearer", "a bearer token is required"),
    ("garbage", lambda _: "Bearer not-a-token", "malformed token"),
    ("two segments", lambda _: "Bearer " + _hs256(_claims()).rsplit(".", 1)[0], "malformed token"),
    ("over 8 KB", lambda _: "Bearer " + _oversized(), "malformed token"),
    ("header not JSON", lambda _: "Bearer " + _not_json_header(), "malformed token"),
    (
        "header not an object",
        lambda _: f"Bearer {_segment(['HS256'])}.{_segment(_claims())}.x",
        "the token's algorithm is not accepted here",
    ),
    (
        "bad signature",
        lambda _: "Bearer " + _hs256(_claims(), "another-secret-0123456789abcdef0123"),
        "bad_signature",
    ),
    ("expired", lambda _: "Bearer " + _hs256(_claims(exp=int(time.time()) - 60)), "expired"),
    ("not yet valid", lambda _: "Bearer " + _hs256(_claims(nbf=int(time.time()) + 120)), "not yet valid"),
    ("missing exp", lambda _: "Bearer " + _hs256(_claims(exp=None)), "'exp'"),
    ("missing sub", lambda _: "Bearer " + _hs256(_claims(sub=None)), "'sub'"),
    ("wrong aud", lambda _: "Bearer " + _hs256(_claims(aud="someone-else")), "'aud'"),
    ("wrong iss", lambda _: "Bearer " + _hs256(_claims(iss="https://evil.example")), "'iss'"),
    ("alg none", lambda _: "Bearer " + _alg_none(), "the token's algorithm is not accepted here"),
    ("HS512", lambda _: "Bearer " + _hs512(), "the token's algorithm is not accepted here"),
    (
        "RS256 without a JWKS",
        lambda rsa: "Bearer " + _rs256(rsa),
        "the token's algorithm is not accepted here",
    ),
    ("scope not text", lambda _: "Bearer " + _hs256(_claims(scope=5)), "scope"),
]


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [(c[1], c[2]) for c in CREDENTIAL_CASES],
    ids=[c[0] for c in CREDENTIAL_CASES],
)
async def test_bad_credentials_are_401_with_a_challenge(
    live_hub: LiveHub,
    rsa_key: RSAKey,
    authorization: Callable[[RSAKey], str | None],
    detail: str,
) -> None:
    value = authorization(rsa_key)
    headers = {} if value is None else {"Authorization": value}
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        ingest = await client.post("/api/patterns", json={"events": []}, headers=headers)
        admin = await client.get("/api/admin/dlq", headers=headers)
    _assert_problem(ingest, 401, INVALID, detail, "/api/patterns")
    assert ingest.json()["title"] == "Unauthorized"
    _assert_problem(admin, 401, INVALID, detail, "/api/admin/dlq")


async def test_the_leeway_is_thirty_seconds() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    now = int(time.time())
    principal = await auth.verify(_hs256(_claims(exp=now - 10, nbf=now + 10)))
    assert principal.expires_at == now - 10
    with pytest.raises(AuthError, match="expired"):
        await auth.verify(_hs256(_claims(exp=now - 45)))
    with pytest.raises(AuthError, match="not yet valid"):
        await auth.verify(_hs256(_claims(nbf=now + 45)))


async def test_the_size_limit_is_8_kb() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    pad = (MAX_TOKEN_BYTES - len(_hs256(_claims(pad="")))) * 3 // 4 + 8
    # base64 grows in steps of 4 characters; walk down to the largest token that fits.
    while len(token := _hs256(_claims(pad="x" * pad))) > MAX_TOKEN_BYTES:
        pad -= 1
    assert len(token) > MAX_TOKEN_BYTES - 4
    assert (await auth.verify(token)).subject == "alice"
    bigger = _hs256(_claims(pad="x" * (pad + 3)))
    assert len(bigger) > MAX_TOKEN_BYTES
    with pytest.raises(AuthError, match="malformed token") as raised:
        await auth.verify(bigger)
    assert raised.value.status == 401


async def test_an_audience_list_naming_the_hub_is_accepted() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    principal = await auth.verify(_hs256(_claims(aud=["other-service", AUDIENCE])))
    assert principal.subject == "alice"


# -- 403: scopes ------------------------------------------------------------------------------------


async def test_a_missing_scope_is_403_naming_it(live_hub: LiveHub) -> None:
    reader = mint_token(JWT_SECRET, subject="r", scopes=["patterns:read"])
    writer = mint_token(JWT_SECRET, subject="w", scopes=["patterns:write", "universe:write"])
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        ingest = await client.post("/api/patterns", json={"events": []}, headers=_bearer(reader))
        admin = await client.get("/api/admin/dlq", headers=_bearer(writer))
    _assert_problem(
        ingest,
        403,
        'Bearer realm="tickstock", error="insufficient_scope", scope="patterns:write"',
        "this needs the 'patterns:write' scope",
        "/api/patterns",
    )
    assert ingest.json()["title"] == "Forbidden"
    _assert_problem(
        admin,
        403,
        'Bearer realm="tickstock", error="insufficient_scope", scope="admin"',
        "this needs the 'admin' scope",
        "/api/admin/dlq",
    )


async def test_granted_scopes_reach_the_endpoint(live_hub: LiveHub) -> None:
    admin = mint_token(JWT_SECRET, subject="ops", scopes=["admin"])
    scp_list = _hs256(_claims(scope=None, scp=["patterns:read", "patterns:write"]))
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        # An empty batch is a 400 from the endpoint itself: the guard let the request through.
        as_admin = await client.post("/api/patterns", json={"events": []}, headers=_bearer(admin))
        as_scp = await client.post("/api/patterns", json={"events": []}, headers=_bearer(scp_list))
        listing = await client.get("/api/admin/dlq", headers=_bearer(admin))
        scp_admin = await client.get("/api/admin/dlq", headers=_bearer(scp_list))
    for response in (as_admin, as_scp):
        assert response.status_code == 400
        assert response.json()["detail"] == "no events in the batch"
    assert listing.status_code == 200
    assert listing.json()["items"] == []
    assert scp_admin.status_code == 403


async def test_scope_and_scp_claims_become_the_principal_scopes() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    spaced = await auth.verify(_hs256(_claims(scope="patterns:read  universe:write")))
    listed = await auth.verify(_hs256(_claims(scope=None, scp=["patterns:read", "admin"])))
    none = await auth.verify(_hs256(_claims(scope=None)))
    assert spaced.scopes == {"patterns:read", "universe:write"}
    assert listed.scopes == {"patterns:read", "admin"}
    assert none.scopes == frozenset()
    assert listed.claims["scp"] == ["patterns:read", "admin"]
    with pytest.raises(AuthError, match="scope") as raised:
        await auth.verify(_hs256(_claims(scope={"patterns:read": True})))
    assert raised.value.status == 401


def test_admin_implies_every_scope() -> None:
    admin = Principal(subject="ops", scopes=frozenset({"admin"}), expires_at=0.0)
    reader = Principal(subject="r", scopes=frozenset({"patterns:read"}), expires_at=0.0)
    assert all(admin.has(scope) for scope in api.auth.SCOPES)
    assert reader.has("patterns:read")
    assert not reader.has("patterns:write")
    assert not reader.has("admin")


def test_requires_rejects_an_unknown_scope_when_decorating() -> None:
    with pytest.raises(ValueError, match="unknown scope 'bogus'"):
        requires("bogus")


async def test_requires_keeps_the_endpoint_name_and_doc() -> None:
    async def endpoint(request: Request) -> JSONResponse:
        """Says who asked."""
        return JSONResponse({"sub": request.state.principal.subject})

    guarded = requires("universe:write")(endpoint)
    assert guarded.__name__ == "endpoint"
    assert guarded.__doc__ == "Says who asked."
    assert guarded.required_scope == "universe:write"  # type: ignore[attr-defined]


def test_auth_error_challenges() -> None:
    unauthenticated = AuthError("no")
    forbidden = AuthError("scope", status=403, scope="admin")
    bare_forbidden = AuthError("scope", status=403)
    unavailable = AuthError("down", status=503)
    assert (unauthenticated.status, unauthenticated.detail) == (401, "no")
    assert unauthenticated.headers == {"WWW-Authenticate": INVALID}
    assert forbidden.headers == {
        "WWW-Authenticate": 'Bearer realm="tickstock", error="insufficient_scope", scope="admin"'
    }
    assert bare_forbidden.headers == {"WWW-Authenticate": 'Bearer realm="tickstock"'}
    assert unavailable.headers == {"WWW-Authenticate": 'Bearer realm="tickstock"'}


# -- mint_token -------------------------------------------------------------------------------------


async def test_mint_token_claims() -> None:
    before = int(time.time())
    token = mint_token(JWT_SECRET, subject="dev", scopes=["patterns:read", "patterns:write"], ttl_s=120)
    claims = jwt.decode(token, OctKey.import_key(JWT_SECRET), algorithms=["HS256"]).claims
    assert claims["sub"] == "dev"
    assert claims["scope"] == "patterns:read patterns:write"
    assert (claims["iss"], claims["aud"]) == (ISSUER, AUDIENCE)
    assert claims["exp"] - claims["iat"] == 120
    assert before <= claims["iat"] <= int(time.time())
    assert "nbf" not in claims
    principal = await Authenticator(Settings(jwt_secret=JWT_SECRET)).verify(token)
    assert principal.scopes == {"patterns:read", "patterns:write"}
    assert principal.expires_at == claims["exp"]


async def test_mint_token_not_before() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    later = time.time() + 300
    token = mint_token(JWT_SECRET, subject="dev", scopes=[], not_before=later)
    claims = jwt.decode(token, OctKey.import_key(JWT_SECRET), algorithms=["HS256"]).claims
    assert claims["nbf"] == int(later)
    with pytest.raises(AuthError, match="not yet valid"):
        await auth.verify(token)
    earlier = mint_token(JWT_SECRET, subject="dev", scopes=[], not_before=time.time() - 5)
    assert (await auth.verify(earlier)).subject == "dev"


async def test_mint_token_for_another_issuer_or_audience_is_refused() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    with pytest.raises(AuthError, match="'iss'"):
        await auth.verify(mint_token(JWT_SECRET, subject="x", scopes=[], issuer="elsewhere"))
    with pytest.raises(AuthError, match="'aud'"):
        await auth.verify(mint_token(JWT_SECRET, subject="x", scopes=[], audience="elsewhere"))
    custom = Authenticator(Settings(jwt_secret=JWT_SECRET, jwt_issuer="idp", jwt_audience="hub-b"))
    token = mint_token(JWT_SECRET, subject="x", scopes=[], issuer="idp", audience="hub-b")
    principal = await custom.verify(token)
    assert principal.subject == "x"


# -- where the token comes from ---------------------------------------------------------------------


def _connection(headers: dict[str, str], query: str = "") -> HTTPConnection:
    return HTTPConnection(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
    )


async def test_query_token_only_where_allowed() -> None:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET))
    token = mint_token(JWT_SECRET, subject="ws", scopes=["patterns:read"])
    principal = await auth.authenticate(_connection({}, f"token={token}"), query_token=True)
    assert principal.subject == "ws"
    with pytest.raises(AuthError, match="a bearer token is required"):
        await auth.authenticate(_connection({}, f"token={token}"))
    with pytest.raises(AuthError, match="a bearer token is required"):
        await auth.authenticate(_connection({}), query_token=True)
    # The header wins over the query string.
    other = mint_token(JWT_SECRET, subject="header", scopes=[])
    both = _connection({"Authorization": f"bearer {other}"}, f"token={token}")
    assert (await auth.authenticate(both, query_token=True)).subject == "header"


# -- 503: nothing to verify with --------------------------------------------------------------------


async def test_not_configured_is_503(live_hub: LiveHub, settings: Settings) -> None:
    bare = dataclasses.replace(settings, jwt_secret=None, jwks_url=None)
    assert not Authenticator(bare).configured
    token = mint_token(JWT_SECRET, subject="alice", scopes=["admin"])
    async with _serve(bare, live_hub.hub) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/api/admin/dlq", headers=_bearer(token))
        anonymous = await client.get("/api/admin/dlq")
    _assert_problem(
        response, 503, 'Bearer realm="tickstock"', "authentication is not configured", "/api/admin/dlq"
    )
    # Without a token too: no token could help until the hub is configured.
    _assert_problem(
        anonymous, 503, 'Bearer realm="tickstock"', "authentication is not configured", "/api/admin/dlq"
    )


# -- JWKS -------------------------------------------------------------------------------------------


async def test_jwks_rs256_and_es256_tokens_verify(jwks_file: Path, rsa_key: RSAKey, ec_key: ECKey) -> None:
    auth = Authenticator(_jwks_settings(jwks_file))
    assert auth.configured
    rs = await auth.verify(_signed(rsa_key, "RS256", _claims(sub="rs", scope="admin")))
    es = await auth.verify(_signed(ec_key, "ES256", _claims(sub="es", scope="patterns:read")))
    assert (rs.subject, rs.scopes) == ("rs", {"admin"})
    assert (es.subject, es.scopes) == ("es", {"patterns:read"})


async def test_jwks_refuses_what_its_keys_do_not_sign(
    jwks_file: Path,
    rsa_key: RSAKey,
    ec_key: ECKey,
) -> None:
    auth = Authenticator(_jwks_settings(jwks_file))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)
    cases = {
        "another key under a known kid": _signed(stranger, "RS256"),
        "ES256 under the RSA kid": jwt.encode({"alg": "ES256", "kid": rsa_key.kid}, _claims(), ec_key),
        "expired": _signed(rsa_key, "RS256", _claims(exp=int(time.time()) - 120)),
        "wrong audience": _signed(ec_key, "ES256", _claims(aud="other")),
        "HS256 without a secret": _hs256(_claims()),
        "PS256": jwt.encode({"alg": "PS256", "kid": rsa_key.kid}, _claims(), rsa_key, algorithms=["PS256"]),
    }
    for name, token in cases.items():
        with pytest.raises(AuthError) as raised:
            await auth.verify(token)
        assert raised.value.status == 401, name


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    live_hub: LiveHub,
    settings: Settings,
    jwks_file: Path,
    rsa_key: RSAKey,
) -> None:
    pem = rsa_key.as_pem(private=False)
    forged = _hmac_token({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}, _claims(scope="admin"), pem)
    jwks_only = dataclasses.replace(settings, jwt_secret=None, jwks_url=jwks_file.as_uri())
    async with _serve(jwks_only, live_hub.hub) as url, httpx.AsyncClient(base_url=url) as client:
        refused = await client.get("/api/admin/dlq", headers=_bearer(forged))
        genuine_token = _signed(rsa_key, "RS256", _claims(scope="admin"))
        genuine = await client.get("/api/admin/dlq", headers=_bearer(genuine_token))
    _assert_problem(refused, 401, INVALID, "the token's algorithm is not accepted here", "/api/admin/dlq")
    assert genuine.status_code == 200, genuine.text
    # With a development secret as well, the forged token is checked against that secret only.
    both = Authenticator(dataclasses.replace(jwks_only, jwt_secret=JWT_SECRET))
    with pytest.raises(AuthError, match="bad_signature"):
        await both.verify(forged)


async def test_jwks_key_rotation_refetches_for_an_unknown_kid(
    jwks_file: Path,
    rsa_key: RSAKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = Authenticator(_jwks_settings(jwks_file))
    assert (await auth.verify(_signed(rsa_key, "RS256"))).subject == "alice"
    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"}, private=True)
    _write_jwks(jwks_file, rotated)
    # Within the minimum refetch interval an unknown kid does not reach the key server...
    with pytest.raises(AuthError, match="invalid_key_id"):
        await auth.verify(_signed(rotated, "RS256", _claims(sub="too-soon")))
    # ...after it, the rotation is picked up.
    monkeypatch.setattr("api.auth.JWKS_MIN_REFETCH_S", 0.0)
    principal = await auth.verify(_signed(rotated, "RS256", _claims(sub="after-rotation")))
    assert principal.subject == "after-rotation"
    # The refetched set replaced the old one: the retired key no longer verifies.
    with pytest.raises(AuthError) as raised:
        await auth.verify(_signed(rsa_key, "RS256"))
    assert raised.value.status == 401


async def test_jwks_missing_at_first_use_is_503(
    live_hub: LiveHub,
    settings: Settings,
    tmp_path: Path,
    rsa_key: RSAKey,
) -> None:
    missing = tmp_path / "not-there.json"
    auth = Authenticator(_jwks_settings(missing))
    with pytest.raises(AuthError, match="the key set is unavailable") as raised:
        await auth.verify(_signed(rsa_key, "RS256"))
    assert raised.value.status == 503
    jwks_only = dataclasses.replace(settings, jwt_secret=None, jwks_url=missing.as_uri())
    async with _serve(jwks_only, live_hub.hub) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/api/patterns", json={"events": []}, headers=_bearer(_signed(rsa_key, "RS256"))
        )
    _assert_problem(response, 503, 'Bearer realm="tickstock"', "the key set is unavailable", "/api/patterns")
    # Once the file appears, the next request loads it.
    _write_jwks(missing, rsa_key)
    assert (await auth.verify(_signed(rsa_key, "RS256"))).subject == "alice"


async def test_jwks_not_a_key_set_at_first_use_is_503(tmp_path: Path, rsa_key: RSAKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    with pytest.raises(AuthError, match="the key set is unavailable") as raised:
        await Authenticator(_jwks_settings(path)).verify(_signed(rsa_key, "RS256"))
    assert raised.value.status == 503


@pytest.mark.parametrize("breakage", ["deleted", "not JSON"])
async def test_jwks_unreadable_after_a_load_keeps_the_cached_keys(
    jwks_file: Path,
    rsa_key: RSAKey,
    ec_key: ECKey,
    breakage: str,
) -> None:
    auth = Authenticator(_jwks_settings(jwks_file))
    assert (await auth.verify(_signed(rsa_key, "RS256"))).subject == "alice"
    if breakage == "deleted":
        jwks_file.unlink()
    else:
        jwks_file.write_text("{not json")
    newcomer = ECKey.generate_key("P-256", parameters={"kid": "ec-new"}, private=True)
    # An unknown kid forces a refetch, which fails: the token is refused, the cache survives.
    with pytest.raises(AuthError) as raised:
        await auth.verify(_signed(newcomer, "ES256"))
    assert raised.value.status == 401
    assert (await auth.verify(_signed(rsa_key, "RS256"))).subject == "alice"
    assert (await auth.verify(_signed(ec_key, "ES256"))).subject == "alice"


async def test_jwks_is_refetched_when_stale(
    jwks_file: Path,
    rsa_key: RSAKey,
    ec_key: ECKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = Authenticator(_jwks_settings(jwks_file))
    assert (await auth.verify(_signed(rsa_key, "RS256"))).subject == "alice"
    _write_jwks(jwks_file, ec_key)  # the RSA key is withdrawn; its kid is still cached
    assert (await auth.verify(_signed(rsa_key, "RS256"))).subject == "alice"
    monkeypatch.setattr(api.auth, "JWKS_TTL_S", 0.0)
    with pytest.raises(AuthError) as raised:
        await auth.verify(_signed(rsa_key, "RS256"))
    assert raised.value.status == 401
    # A stale set that cannot be refreshed is still used.
    jwks_file.unlink()
    assert (await auth.verify(_signed(ec_key, "ES256"))).subject == "alice"


async def test_a_token_without_kid_uses_a_single_key_set(
    tmp_path: Path,
    rsa_key: RSAKey,
    ec_key: ECKey,
) -> None:
    single = tmp_path / "single.json"
    _write_jwks(single, rsa_key)
    no_kid = jwt.encode({"alg": "RS256"}, _claims(), rsa_key)
    assert (await Authenticator(_jwks_settings(single)).verify(no_kid)).subject == "alice"
    several = tmp_path / "several.json"
    _write_jwks(several, rsa_key, ec_key)
    with pytest.raises(AuthError) as raised:
        await Authenticator(_jwks_settings(several)).verify(no_kid)
    assert raised.value.status == 401
