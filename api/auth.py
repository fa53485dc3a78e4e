"""Bearer-token authentication and scopes.

Tokens are JWTs, verified with joserfc (the JOSE library of the Authlib project, which Authlib's own
``authlib.jose`` now defers to):

* development: HS256 with ``TICKSTOCK_JWT_SECRET``;
* production: RS256/ES256 against the key set at ``TICKSTOCK_JWKS_URL`` (``file://`` or ``https://``;
  ``http://`` only to a loopback host, for tests; fetched off the event loop, at most
  ``TICKSTOCK_JWKS_MAX_BYTES``, cached, refetched when a token names an unknown ``kid``: one fetch at a
  time, and for unknown kids at most once every ``JWKS_MIN_REFETCH_S``).

The algorithm is chosen by the key that verifies, never by the token: an HS256 token is checked only
against the shared secret, so a token "signed" with an RSA public key as HMAC secret fails, and
``alg: none`` is never accepted. ``exp``, ``iat`` and ``sub`` are required; ``exp - iat`` is at most
``TICKSTOCK_JWT_MAX_LIFETIME_S``; ``sub`` is 1..256 characters without control characters; ``nbf``,
``iss`` and ``aud`` are checked. A verified token is remembered until its ``exp`` (never longer; see
:mod:`api.verified`), so a busy caller's signature is checked once.

Nothing taken from a token (its ``alg``, ``kid``, claims) is echoed in an answer: details say which
check failed, not what the token held. A key set that cannot be loaded is a 503 with a generic detail;
the cause goes to the log (escaped).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
import unicodedata
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import ClaimError, JoseError
from joserfc.jwk import KeySet, OctKey
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from api.authlimit import AuthFailuresExceeded, client_address, limiter_for
from api.errors import ApiError
from api.jsonbound import loads_bounded
from api.minting import mint_token
from api.ratelimit import Decision, RateLimiter, RateLimitExceeded
from api.settings import DEFAULT_JWKS_MAX_BYTES, DEFAULT_JWT_MAX_LIFETIME_S, Settings, check_jwks_url
from api.verified import DEFAULT_MAX_ENTRIES, VerifiedTokens
from hub.text import escape

__all__ = [
    "ALGORITHMS",
    "JWKS_UNAVAILABLE",
    "SCOPES",
    "AuthError",
    "Authenticator",
    "Principal",
    "admit",
    "check_jwks_url",
    "mint_token",
    "requires",
    "valid_subject",
]

log = logging.getLogger("tickstock.auth")

SCOPES = ("patterns:read", "patterns:write", "universe:write", "admin")
ALGORITHMS = ("HS256", "RS256", "ES256")
JWKS_TTL_S = 300.0
JWKS_MIN_REFETCH_S = 10.0  # between refetches triggered by tokens naming an unknown kid
JWKS_FETCH_TIMEOUT_S = 5.0
JWKS_UNAVAILABLE = "the key set is unavailable"
LEEWAY_S = 30
MAX_TOKEN_BYTES = 8192
MAX_SUBJECT_CHARS = 256
# Control characters, lone surrogates, line and paragraph separators.
_CONTROL = frozenset(("Cc", "Cs", "Zl", "Zp"))
NOT_CONFIGURED = (
    "authentication is not configured on this hub (set TICKSTOCK_JWT_SECRET or TICKSTOCK_JWKS_URL)"
)


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


def valid_subject(subject: object) -> bool:
    """A ``sub`` the hub accepts: a string of 1..256 characters with no control characters."""
    return (
        isinstance(subject, str)
        and 0 < len(subject) <= MAX_SUBJECT_CHARS
        and not any(unicodedata.category(c) in _CONTROL for c in subject)
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A key set is fetched from the configured URL only; a redirect is a load failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Authenticator:
    """Verifies tokens with the keys the settings name. No I/O until a JWKS is first needed."""

    def __init__(self, settings: Settings) -> None:
        self._secret = OctKey.import_key(settings.jwt_secret) if settings.jwt_secret else None
        self._jwks_url = check_jwks_url(settings.jwks_url) if settings.jwks_url else None
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._max_lifetime_s = int(getattr(settings, "jwt_max_lifetime_s", DEFAULT_JWT_MAX_LIFETIME_S))
        self._jwks_max_bytes = int(getattr(settings, "jwks_max_bytes", DEFAULT_JWKS_MAX_BYTES))
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at = -JWKS_MIN_REFETCH_S
        self._attempts = 0  # fetches finished; a waiter on the lock uses the outcome of one it waited for
        self._lock: asyncio.Lock | None = None  # made on first use, on the loop that uses it
        self.jwks_fetches = 0  # for /metrics-style checks and the tests
        self._generation = 0  # key sets loaded so far: a remembered token names the one it was checked with
        self.verified: VerifiedTokens[Principal] = VerifiedTokens(
            int(getattr(settings, "auth_cache_size", DEFAULT_MAX_ENTRIES))
        )
        self.clock: Callable[[], float] = time.time  # wall clock of every time claim check (tests move it)
        self.verifications = 0  # full verifications (signature and claims)

    @property
    def configured(self) -> bool:
        return self._secret is not None or self._jwks_url is not None

    def _fetch_jwks(self) -> KeySet:
        """Blocking: read at most ``jwks_max_bytes`` from the URL and parse the key set. Raises
        ``OSError``, ``ValueError`` or ``JoseError``."""
        if self._jwks_url is None:
            raise ValueError("no JWKS URL configured")
        self.jwks_fetches += 1
        with _OPENER.open(self._jwks_url, timeout=JWKS_FETCH_TIMEOUT_S) as response:
            body = response.read(self._jwks_max_bytes + 1)
        if len(body) > self._jwks_max_bytes:
            raise ValueError(f"the key set is larger than {self._jwks_max_bytes} bytes")
        data = loads_bounded(body)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JSON Web Key Set (an object with a 'keys' list)")
        return KeySet.import_key_set(data)  # type: ignore[arg-type]

    def _wants_fetch(self, kid: str | None, now: float) -> bool:
        if self._keys is None or now - self._fetched_at > JWKS_TTL_S:
            return True
        # An unknown kid may be a rotation: refetch, but at most every JWKS_MIN_REFETCH_S, so that
        # tokens with made-up kids cannot make the hub hammer the key server.
        return (
            kid is not None
            and all(k.kid != kid for k in self._keys.keys)
            and now - self._attempted_at > JWKS_MIN_REFETCH_S
        )

    async def _key_set(self, kid: str | None) -> KeySet:
        """The key set, fetched first when missing, stale, or (rate-bounded) when ``kid`` is unknown. One
        fetch at a time: concurrent callers wait for it and use its outcome. Raises :class:`AuthError`
        503 (generic detail, cause logged) when no key set was ever loaded."""
        seen = self._attempts
        if not self._wants_fetch(kid, time.monotonic()):
            return self._keys  # type: ignore[return-value]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._attempts == seen and self._wants_fetch(kid, time.monotonic()):
                await self._refetch()
            if self._keys is None:
                raise AuthError(JWKS_UNAVAILABLE, status=503)
            return self._keys

    async def _refetch(self) -> None:
        now = self._attempted_at = time.monotonic()
        try:
            self._keys = await asyncio.to_thread(self._fetch_jwks)
            self._fetched_at = time.monotonic()
            self._generation += 1
        except Exception as exc:
            log.warning(
                "the key set at the configured JWKS URL cannot be loaded (%s): %s%s",
                type(exc).__name__,
                escape(exc),
                "" if self._keys is None else "; keeping the keys loaded before",
            )
            if self._keys is not None:
                self._fetched_at = now - JWKS_TTL_S + JWKS_MIN_REFETCH_S  # keep the old keys; retry soon
        finally:
            self._attempts += 1  # counted when done: whoever waited during this fetch uses its outcome

    def remembered(self, header: str) -> Principal | None:
        """The principal of ``Authorization: header`` if its token was verified recently and may be used
        without checking it again (:mod:`api.verified`); else ``None``: :meth:`bearer` decides. No I/O."""
        bearer = self.configured and header[:7].lower() == "bearer "
        return self._remembered(header[7:].strip(), self.clock()) if bearer else None

    def _remembered(self, token: str, now: float) -> Principal | None:
        fresh = time.monotonic() - self._fetched_at <= JWKS_TTL_S  # else the next JWKS token refetches
        return self.verified.get(token, now=now, keys=self._generation if fresh else -1)

    async def verify(self, token: str) -> Principal:
        """Raises :class:`AuthError` (401) for any token that is not valid now, 503 when the hub has no
        keys to check it with. The detail never quotes the token."""
        if not self.configured:
            raise AuthError(NOT_CONFIGURED, status=503)
        now = self.clock()
        remembered = self._remembered(token, now)
        if remembered is not None:
            return remembered
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise AuthError("malformed token")
        head, body, _ = token.split(".")
        try:
            header = loads_bounded(_b64decode(head))
            loads_bounded(_b64decode(body))  # the library parses it unbounded: refuse deep nesting first
        except ValueError:
            raise AuthError("malformed token") from None
        alg = header.get("alg") if isinstance(header, dict) else None
        kid = header.get("kid") if isinstance(header, dict) else None
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token")
        self.verifications += 1
        generation: int | None = None  # None: checked with the shared secret
        try:
            if alg == "HS256" and self._secret is not None:
                decoded = jwt.decode(token, self._secret, algorithms=["HS256"])
            elif isinstance(alg, str) and alg in ALGORITHMS[1:] and self._jwks_url is not None:
                keys = await self._key_set(kid)
                generation = self._generation
                decoded = jwt.decode(token, keys, algorithms=[alg])
            else:
                raise AuthError("the token's algorithm is not accepted here")
            registry = jwt.JWTClaimsRegistry(
                now=int(now),
                leeway=LEEWAY_S,
                exp={"essential": True},
                sub={"essential": True},
                iat={"essential": True},
                iss={"essential": True, "value": self._issuer},
                aud={"essential": True, "value": self._audience},
            )
            registry.validate(decoded.claims)
        except ClaimError as exc:
            raise AuthError(f"invalid token: {exc.description}") from None  # names the claim, not its value
        except JoseError as exc:
            raise AuthError(f"invalid token: {exc.error}") from None
        claims = decoded.claims
        if not valid_subject(claims["sub"]):
            raise AuthError(
                f"invalid token: 'sub' must be 1 to {MAX_SUBJECT_CHARS} characters without control characters"
            )
        exp, iat = claims["exp"], claims["iat"]
        limit = self._max_lifetime_s
        if not (
            isinstance(exp, (int, float))
            and isinstance(iat, (int, float))
            and math.isfinite(exp)
            and math.isfinite(iat)
            and exp - iat <= limit
            and exp <= now + limit + LEEWAY_S
        ):
            raise AuthError(f"invalid token: it may live at most {limit} s (exp - iat)")
        raw_scope = claims.get("scope", claims.get("scp", ""))
        if isinstance(raw_scope, str):
            scopes = frozenset(raw_scope.split())
        elif isinstance(raw_scope, list):
            scopes = frozenset(map(str, raw_scope))
        else:  # a signed token can still carry junk (a number, null, an object): 401, not 500
            raise AuthError("invalid token: the scope claim must be a string or a list")
        principal = Principal(subject=claims["sub"], scopes=scopes, expires_at=float(exp), claims=claims)
        if exp > now:
            self.verified.remember(token, principal, until=float(exp), keys=generation)
        return principal

    async def authenticate(self, conn: HTTPConnection, *, query_token: bool = False) -> Principal:
        """The principal of ``Authorization: Bearer …`` (or ``?token=`` where allowed)."""
        query = conn.query_params.get("token") if query_token else None
        return await self.bearer(conn.headers.get("authorization", ""), fallback=query)

    async def bearer(self, header: str, *, fallback: str | None = None) -> Principal:
        """The principal of an ``Authorization`` value ``Bearer <token>`` (else of ``fallback``); raises
        :class:`AuthError` 401 without a token or with a bad one, 503 when authentication is not set up."""
        if not self.configured:
            raise AuthError(NOT_CONFIGURED, status=503)
        token = header[7:].strip() if header[:7].lower() == "bearer " else fallback
        if not token:
            raise AuthError("a bearer token is required")
        return await self.verify(token)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


Endpoint = Callable[[Request], Awaitable[Response]]


async def _rate_limit(state: Any, principal: Principal) -> Decision:
    """Take a token from the principal's bucket; raises :class:`RateLimitExceeded` (429) when it is empty.

    Uses ``app.state.rate_limiter`` (made from the hub's settings on first use when the app has none).
    """
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        limiter = state.rate_limiter = RateLimiter.from_settings(state.hub.settings)
    decision = await limiter.acquire(state.hub.redis, principal.subject, admin="admin" in principal.scopes)
    if not decision.allowed:
        raise RateLimitExceeded(decision)
    return decision


async def charge_failure(
    state: Any, address: Callable[[], str], exc: AuthError, *, transport: str = "http"
) -> None:
    """A failed authentication (401) from ``address()`` takes a token from its bucket (see
    :mod:`api.authlimit`); raises :class:`AuthFailuresExceeded` (429) when the bucket is empty."""
    if exc.status != 401:
        return
    decision = await limiter_for(state).charge(state.hub.redis, address(), transport=transport)
    log.debug("authentication failed from %s: %s", escape(address()), escape(exc.detail))
    if not decision.allowed:
        raise AuthFailuresExceeded(decision) from None


async def admit(
    state: Any, header: str, *, scope: str, address: Callable[[], str], transport: str = "http"
) -> tuple[Principal, Decision]:
    """Who sends ``Authorization: header`` to an app with ``state``, and the rate limiter's decision,
    whatever the transport. Raises :class:`AuthError` 401 without a valid token (a failure charged to
    ``address()``, see :func:`charge_failure`), 403 without ``scope``, and 429 when the principal is over
    its rate limit or the address has failed to authenticate too often."""
    try:
        principal = await state.auth.bearer(header)
    except AuthError as exc:
        await charge_failure(state, address, exc, transport=transport)
        raise
    decision = await _rate_limit(state, principal)
    if not principal.has(scope):
        raise AuthError(f"this needs the {scope!r} scope", status=403, scope=scope)
    return principal, decision


def requires(scope: str) -> Callable[[Endpoint], Endpoint]:
    """Guard an endpoint: 401 without a valid token, 403 without ``scope``, 429 when the principal is over
    its rate limit (see :mod:`api.ratelimit`), or when the client's address has failed to authenticate too
    often (see :mod:`api.authlimit`). The principal is put on ``request.state.principal``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            principal, decision = await admit(
                request.app.state,
                request.headers.get("authorization", ""),
                scope=scope,
                address=lambda: client_address(request),
            )
            request.state.principal = principal
            response = await endpoint(request)
            if decision.checked:  # an admitted request: the two RateLimit headers (appended raw, cheaply)
                response.raw_headers += [
                    (b"ratelimit-limit", b"%d" % decision.limit),
                    (b"ratelimit-remaining", b"%d" % decision.remaining),
                ]
            return response

        guarded.__name__ = endpoint.__name__
        guarded.__doc__ = endpoint.__doc__
        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded

    return decorate
