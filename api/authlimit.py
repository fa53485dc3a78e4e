"""Failed authentications per client address: a token bucket that bounds how fast one address may guess.

Every failed authentication (a 401 over HTTP, a refused token on a websocket) and every websocket opened
without a token takes one token from the bucket of the client's address (``tickstock:rl:authfail:<addr>``,
through :class:`api.ratelimit.RateLimiter`, so it is shared by every node and falls back to an
in-process bucket while Redis fails). When the bucket is empty the answer becomes HTTP 429 with
``Retry-After`` (a websocket is closed with 4429). Successful authentications cost nothing.

The address is the ASGI client host (the TCP peer): ``X-Forwarded-For`` is not trusted. IPv6 peers are
grouped by their /64, which one host usually holds whole.
"""

from __future__ import annotations

import ipaddress
import math
from typing import TYPE_CHECKING

from api.errors import ApiError
from api.ratelimit import DEFAULT_TIMEOUT_S as RATE_LIMIT_TIMEOUT_S
from api.ratelimit import KEY_PREFIX, Decision, RateLimiter
from api.settings import DEFAULT_AUTH_FAILURE_BURST, DEFAULT_AUTH_FAILURE_PER_S, Settings
from hub.metrics import Counter, Registry

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from starlette.requests import HTTPConnection


__all__ = ["AUTH_FAILURE_KEY_PREFIX", "AuthFailureLimiter", "AuthFailuresExceeded", "client_address"]

AUTH_FAILURE_KEY_PREFIX = KEY_PREFIX + "authfail:"
DEFAULT_PER_S = DEFAULT_AUTH_FAILURE_PER_S
DEFAULT_BURST = DEFAULT_AUTH_FAILURE_BURST


class AuthFailuresExceeded(ApiError):
    """429: too many failed authentications from this address, with ``Retry-After``."""

    def __init__(self, decision: Decision) -> None:
        seconds = max(1, math.ceil(decision.retry_after_s))
        super().__init__(
            f"too many failed authentications from this address; retry in {seconds} s",
            status=429,
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after_s = seconds


def client_address(conn: HTTPConnection) -> str:
    """The bucket name of ``conn``'s peer: the IPv4 address, the IPv6 /64, or ``unknown``."""
    host = conn.client.host if conn.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class AuthFailureLimiter:
    """One bucket per client address. No I/O until :meth:`charge`; a rate of 0 turns it off."""

    def __init__(
        self,
        *,
        rate_per_s: float = DEFAULT_PER_S,
        burst: int = DEFAULT_BURST,
        timeout_s: float = RATE_LIMIT_TIMEOUT_S,
    ) -> None:
        # Failures are rare: each asks Redis (no tokens drawn ahead, sync_s=0), so the bucket is exact.
        self.limiter = RateLimiter(
            rate_per_s=rate_per_s,
            burst=burst,
            timeout_s=timeout_s,
            sync_s=0.0,
            key_prefix=AUTH_FAILURE_KEY_PREFIX,
        )
        self.refused = Counter(
            "tickstock_auth_failures_limited_total",
            "Failed authentications or token-less websocket opens refused per address, by transport.",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthFailureLimiter:
        """From ``auth_failure_per_s``, ``auth_failure_burst`` and ``rate_limit_timeout_ms``."""
        return cls(
            rate_per_s=float(getattr(settings, "auth_failure_per_s", DEFAULT_PER_S)),
            burst=int(getattr(settings, "auth_failure_burst", DEFAULT_BURST)),
            timeout_s=float(getattr(settings, "rate_limit_timeout_ms", RATE_LIMIT_TIMEOUT_S * 1000)) / 1000,
        )

    def register(self, registry: Registry) -> bool:
        """Expose the counter in ``registry``; False when it already has one (several apps on one hub)."""
        try:
            registry.add(self.refused)
        except ValueError:
            return False
        return True

    async def charge(self, redis: aioredis.Redis, address: str, *, transport: str = "http") -> Decision:
        """Take one token from ``address``'s bucket. Waits at most the limiter's timeout for Redis and
        never raises because of it; ``allowed`` is False once the address is over its limit."""
        decision = await self.limiter.acquire(redis, address)
        if not decision.allowed:
            self.refused.inc(transport=transport)
        return decision


def limiter_for(state: object) -> AuthFailureLimiter:
    """``app.state.auth_failures``, made from the hub's settings on first use."""
    limiter: AuthFailureLimiter | None = getattr(state, "auth_failures", None)
    if limiter is None:
        limiter = AuthFailureLimiter.from_settings(state.hub.settings)  # type: ignore[attr-defined]
        limiter.register(state.hub.metrics.registry)  # type: ignore[attr-defined]
        state.auth_failures = limiter  # type: ignore[attr-defined]
    return limiter
