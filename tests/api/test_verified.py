"""Remembered verifications (``api.verified``): a busy token is checked once, never past its ``exp``, and
a key set change reaches remembered tokens exactly as it reaches fresh ones."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

import api.auth
from api.app import create_app
from api.auth import LEEWAY_S, Authenticator, AuthError, Principal, mint_token
from api.settings import Settings
from api.verified import VerifiedTokens
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, problem

PATH = "/api/patterns/definitions"


class Clock:
    """A wall clock the test moves (the authenticator reads it for every time claim and for memory)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _token(ttl_s: float = 600, subject: str = "alice") -> tuple[str, float]:
    token = mint_token(JWT_SECRET, subject=subject, scopes=["patterns:read"], ttl_s=ttl_s)
    claims = json.loads(api.auth._b64decode(token.split(".")[1]))
    return token, float(claims["exp"])


def _authenticator(**settings: object) -> tuple[Authenticator, Clock]:
    auth = Authenticator(Settings(jwt_secret=JWT_SECRET, **settings))  # type: ignore[arg-type]
    clock = Clock()
    auth.clock = clock
    return auth, clock


@contextlib.asynccontextmanager
async def _client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


async def test_a_verified_token_is_checked_once() -> None:
    auth, _ = _authenticator()
    token, _ = _token()
    first = await auth.verify(token)
    again = [await auth.verify(token) for _ in range(5)]
    assert auth.verifications == 1 and auth.verified.hits == 5
    assert all(p is first for p in again)
    other, _ = _token(subject="bob")
    assert (await auth.verify(other)).subject == "bob" and auth.verifications == 2


async def test_an_expired_token_is_refused_at_once_though_remembered() -> None:
    auth, clock = _authenticator()
    token, exp = _token(ttl_s=120)
    await auth.verify(token)
    await auth.verify(token)
    assert auth.verifications == 1  # the second one came from memory
    # From exp on, memory is not used: the full check decides (it allows the documented leeway) ...
    clock.now = exp
    assert (await auth.verify(token)).subject == "alice"
    assert auth.verifications == 2 and len(auth.verified) == 0  # ... and nothing past exp is remembered
    await auth.verify(token)
    assert auth.verifications == 3
    # ... and once the leeway is over too, the very next request is refused.
    clock.now = exp + LEEWAY_S + 1
    with pytest.raises(AuthError, match="expired") as raised:
        await auth.verify(token)
    assert raised.value.status == 401


async def test_a_remembered_token_is_refused_once_exp_and_leeway_pass_over_http(
    settings: Settings, live_hub: LiveHub
) -> None:
    app = create_app(settings, hub=live_hub.hub)
    auth: Authenticator = app.state.auth
    clock = Clock()
    auth.clock = clock
    token, exp = _token(ttl_s=60, subject="remembered-then-expired")
    headers = {"Authorization": f"Bearer {token}"}
    async with _client(app) as client:
        assert [(await client.get(PATH, headers=headers)).status_code for _ in range(3)] == [200] * 3
        # Verified once. (A request the hot-read path hands on to the full one looks the token up twice.)
        assert auth.verifications == 1 and auth.verified.hits >= 2
        clock.now = exp + LEEWAY_S + 1
        refused = await client.get(PATH, headers=headers)
    assert "expired" in problem(refused, 401)["detail"]
    assert auth.verifications == 2


async def test_memory_is_bounded_least_recently_used_first_out() -> None:
    auth, _ = _authenticator(auth_cache_size=2)
    a, b, c = (_token(subject=s)[0] for s in "abc")
    for token in (a, b, a, c):  # b is the least recently used when c arrives
        await auth.verify(token)
    assert len(auth.verified) == 2 and auth.verifications == 3
    await auth.verify(a)
    assert auth.verifications == 3
    await auth.verify(b)
    assert auth.verifications == 4


async def test_size_zero_remembers_nothing() -> None:
    auth, _ = _authenticator(auth_cache_size=0)
    token, _ = _token()
    for _ in range(3):
        await auth.verify(token)
    assert auth.verifications == 3 and len(auth.verified) == 0


async def test_refused_tokens_are_not_remembered() -> None:
    auth, clock = _authenticator()
    token, exp = _token(ttl_s=60)
    clock.now = exp + LEEWAY_S + 1
    for _ in range(2):
        with pytest.raises(AuthError):
            await auth.verify(token)
    assert len(auth.verified) == 0 and auth.verifications == 2


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        VerifiedTokens(-1)
    with pytest.raises(ValueError, match="AUTH_CACHE_SIZE"):
        Settings(auth_cache_size=-1)


def test_entries_die_at_exp_and_with_their_key_set() -> None:
    memory = VerifiedTokens(10)
    alice = Principal(subject="alice", scopes=frozenset(), expires_at=100.0)
    memory.remember("t-secret", alice, until=100.0, keys=None)
    memory.remember("t-jwks", alice, until=100.0, keys=3)
    assert memory.get("t-secret", now=99.9, keys=-1) is alice  # the shared secret has no key set
    assert memory.get("t-jwks", now=99.9, keys=3) is alice
    assert memory.get("t-jwks", now=99.9, keys=4) is None  # another key set: verify again
    assert memory.get("t-jwks", now=50.0, keys=3) is None  # and the entry is gone
    assert memory.get("t-secret", now=100.0, keys=-1) is None  # exp itself is too late
    assert len(memory) == 0 and memory.hits == 2


# -- key sets -----------------------------------------------------------------------------------------


def _write_jwks(path: Path, *keys: RSAKey) -> None:
    path.write_text(json.dumps({"keys": [k.as_dict(private=False) for k in keys]}))


def _rs256(key: RSAKey, subject: str = "alice") -> str:
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + 600, "iss": "tickstock-hub", "aud": "tickstock"}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-remembered"}, private=True)


async def test_a_withdrawn_key_stops_a_remembered_token_when_the_set_is_refreshed(
    tmp_path: Path, rsa_key: RSAKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    jwks = tmp_path / "jwks.json"
    other = RSAKey.generate_key(2048, parameters={"kid": "rsa-other"}, private=True)
    _write_jwks(jwks, rsa_key, other)
    auth = Authenticator(Settings(jwks_url=jwks.as_uri()))
    token = _rs256(rsa_key)
    await auth.verify(token)
    await auth.verify(token)
    assert auth.verifications == 1 and auth.jwks_fetches == 1
    _write_jwks(jwks, other)  # the key is withdrawn
    # Until the key set is refreshed the key counts, for fresh and remembered tokens alike (documented:
    # the set is kept JWKS_TTL_S) ...
    assert (await auth.verify(token)).subject == "alice"
    # ... and once it is stale, a remembered token does not keep it alive: it is checked again, which
    # refetches the set, and refused.
    monkeypatch.setattr(api.auth, "JWKS_TTL_S", 0.0)
    with pytest.raises(AuthError) as raised:
        await auth.verify(token)
    assert raised.value.status == 401 and auth.jwks_fetches == 2


async def test_a_new_key_set_means_remembered_tokens_are_checked_again(
    tmp_path: Path, rsa_key: RSAKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    jwks = tmp_path / "jwks.json"
    _write_jwks(jwks, rsa_key)
    auth = Authenticator(Settings(jwks_url=jwks.as_uri()))
    token = _rs256(rsa_key)
    await auth.verify(token)
    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-rotated"}, private=True)
    _write_jwks(jwks, rotated)
    monkeypatch.setattr(api.auth, "JWKS_MIN_REFETCH_S", 0.0)
    assert (await auth.verify(_rs256(rotated, "carol"))).subject == "carol"  # an unknown kid: refetched
    with pytest.raises(AuthError):
        await auth.verify(token)  # remembered under the old set: checked again against the new one
    assert auth.verifications == 3
