"""Bearer-token authentication and scopes.

Tokens are JWTs, verified with joserfc (the JOSE library of the Authlib project, which Authlib's own
``authlib.jose`` now defers to):

* development: HS256 with ``TICKSTOCK_JWT_SECRET``;
* production: RS256/ES256 against the key set at ``TICKSTOCK_JWKS_URL`` (``file://`` or ``https://``;
  fetched off the event loop, cached, refetched when a token names an unknown ``kid``).

The algorithm is chosen by the key that verifies, never by the token: an HS256 token is checked only
against the shared secret, so a token "signed" with an RSA public key as HMAC secret fails, and
``alg: none`` is never accepted. ``exp`` is required; ``nbf``, ``iss`` and ``aud`` are checked.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from api.errors import ApiError
from api.ratelimit import Decision, RateLimiter, RateLimitExceeded
from api.settings import Settings

__all__ = ["SCOPES", "AuthError", "Authenticator", "Principal", "mint_token", "requires"]

SCOPES = ("patterns:read", "patterns:write", "universe:write", "admin")
JWKS_TTL_S = 300.0
JWKS_MIN_REFETCH_S = 10.0
LEEWAY_S = 30
MAX_TOKEN_BYTES = 8192


class AuthError(ApiError):
    """401 (no or bad credentials) with ``WWW-Authenticate``; 403 for a missing scope."""

    def __init__(self, detail: str, *, status: int = 401, scope: str | None = None) -> None:
        challenge = 'Bearer realm="tickstock"'
        if status == 401:
            challenge += ', error="invalid_token"'
        elif scope:
            challenge += f', error="insufficient_scope", scope="{scope}"'
        super().__init__(detail, status=status, headers={"WWW-Authenticate": challenge})


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    expires_at: float
    claims: dict[str, Any] = field(default_factory=dict, repr=False)

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def mint_token(secret: str, *, subject: str, scopes: Iterable[str], ttl_s: float = 3600, issuer: str = "tickstock-hub",
               audience: str = "tickstock", not_before: float | None = None) -> str:
    """An HS256 development token (``tickstock token`` and the tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scope": " ".join(scopes), "iat": now, "exp": int(now + ttl_s),
                              "iss": issuer, "aud": audience}
    if not_before is not None:
        claims["nbf"] = int(not_before)
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret))


class Authenticator:
    """Verifies tokens with the keys the settings name. No I/O until a JWKS is first needed."""

    def __init__(self, settings: Settings) -> None:
        self._secret = OctKey.import_key(settings.jwt_secret) if settings.jwt_secret else None
        self._jwks_url = settings.jwks_url
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at = -JWKS_MIN_REFETCH_S

    @property
    def configured(self) -> bool:
        return self._secret is not None or self._jwks_url is not None

    def _fetch_jwks(self) -> KeySet:
        if self._jwks_url is None:
            raise ValueError("no JWKS URL configured")
        with urllib.request.urlopen(self._jwks_url, timeout=5) as response:  # noqa: S310 - operator-set URL
            return KeySet.import_key_set(json.loads(response.read()))

    async def _key_set(self, kid: str | None) -> KeySet:
        import asyncio

        now = time.monotonic()
        stale = now - self._fetched_at > JWKS_TTL_S
        # An unknown kid may be a rotation: refetch, but at most every JWKS_MIN_REFETCH_S, so that
        # tokens with made-up kids cannot make the hub hammer the key server.
        unknown = (kid is not None and self._keys is not None and all(k.kid != kid for k in self._keys.keys)
                   and now - self._attempted_at > JWKS_MIN_REFETCH_S)
        if self._keys is None or stale or unknown:
            self._attempted_at = now
            try:
                self._keys = await asyncio.to_thread(self._fetch_jwks)
                self._fetched_at = time.monotonic()
            except (OSError, ValueError, JoseError) as exc:
                if self._keys is None:
                    raise AuthError(f"the key set cannot be loaded: {exc}", status=503) from None
                self._fetched_at = now - JWKS_TTL_S + JWKS_MIN_REFETCH_S  # keep the old keys; retry soon
        return self._keys  # type: ignore[return-value]

    async def verify(self, token: str) -> Principal:
        """Raises :class:`AuthError` (401) for any token that is not valid now."""
        if not self.configured:
            raise AuthError("authentication is not configured on this hub (set TICKSTOCK_JWT_SECRET or TICKSTOCK_JWKS_URL)",
                            status=503)
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise AuthError("malformed token")
        try:
            header = json.loads(_b64decode(token.split(".", 1)[0]))
        except ValueError:
            raise AuthError("malformed token") from None
        alg = header.get("alg") if isinstance(header, dict) else None
        try:
            if alg == "HS256" and self._secret is not None:
                decoded = jwt.decode(token, self._secret, algorithms=["HS256"])
            elif alg in ("RS256", "ES256") and self._jwks_url is not None:
                decoded = jwt.decode(token, await self._key_set(header.get("kid")), algorithms=[alg])
            else:
                raise AuthError(f"tokens signed with {alg!r} are not accepted here")
            registry = jwt.JWTClaimsRegistry(
                leeway=LEEWAY_S, exp={"essential": True}, sub={"essential": True},
                iss={"essential": True, "value": self._issuer}, aud={"essential": True, "value": self._audience},
            )
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise AuthError(f"invalid token: {exc.description or exc.error}") from None
        claims = decoded.claims
        raw_scope = claims.get("scope", claims.get("scp", ""))
        if isinstance(raw_scope, str):
            scopes = frozenset(raw_scope.split())
        elif isinstance(raw_scope, list):
            scopes = frozenset(map(str, raw_scope))
        else:  # a signed token can still carry junk (a number, null, an object): 401, not 500
            raise AuthError("invalid token: the scope claim must be a string or a list")
        return Principal(subject=str(claims["sub"]), scopes=scopes, expires_at=float(claims["exp"]), claims=claims)

    async def authenticate(self, conn: HTTPConnection, *, query_token: bool = False) -> Principal:
        """The principal of ``Authorization: Bearer …`` (or ``?token=`` where allowed)."""
        if not self.configured:
            raise AuthError("authentication is not configured on this hub (set TICKSTOCK_JWT_SECRET or TICKSTOCK_JWKS_URL)",
                            status=503)
        header = conn.headers.get("authorization", "")
        token = None
        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
        elif query_token:
            token = conn.query_params.get("token")
        if not token:
            raise AuthError("a bearer token is required")
        return await self.verify(token)


def _b64decode(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


Endpoint = Callable[[Request], Awaitable[Response]]


async def _rate_limit(request: Request, principal: Principal) -> Decision:
    """Take a token from the principal's bucket; raises :class:`RateLimitExceeded` (429) when it is empty.

    Uses ``app.state.rate_limiter`` (made from the hub's settings on first use when the app has none).
    """
    state = request.app.state
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        limiter = state.rate_limiter = RateLimiter.from_settings(state.hub.settings)
    decision = await limiter.acquire(state.hub.redis, principal.subject, admin="admin" in principal.scopes)
    if not decision.allowed:
        raise RateLimitExceeded(decision)
    return decision


def requires(scope: str) -> Callable[[Endpoint], Endpoint]:
    """Guard an endpoint: 401 without a valid token, 403 without ``scope``, 429 when the principal is over
    its rate limit (see :mod:`api.ratelimit`). The principal is put on ``request.state.principal``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            authenticator: Authenticator = request.app.state.auth
            principal = await authenticator.authenticate(request)
            decision = await _rate_limit(request, principal)
            if not principal.has(scope):
                raise AuthError(f"this needs the {scope!r} scope", status=403, scope=scope)
            request.state.principal = principal
            response = await endpoint(request)
            response.headers.update(decision.headers())
            return response

        guarded.__name__ = endpoint.__name__
        guarded.__doc__ = endpoint.__doc__
        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded

    return decorate
