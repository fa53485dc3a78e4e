"""Per-subject request rate limits, shared by every hub node through Redis.

A token bucket per token subject (``tickstock:rl:<subject>``): ``burst`` tokens, refilled at
``rate_per_s``; a request takes one. The shared bucket lives in Redis; a Lua script refills it on
Redis's clock (``TIME``, so nodes with skewed clocks share one bucket) and hands out up to the tokens
asked for, atomically. The key expires once a full bucket would be indistinguishable from no key.

Each node decides locally (:mod:`api.leases`): it draws tokens from the shared bucket and spends them
in process, so a busy subject's requests do not wait for Redis. A draw asks for what this node's
demand for the subject needs in ``sync_s`` (``TICKSTOCK_RATE_LIMIT_SYNC_MS``; at most what the bucket
refills in that time), is made ahead when half of it is spent, and its tokens expire ``sync_s`` after
it was sent. A quiet subject draws one token per request, as if there were no leases. The tolerance,
across any number of nodes: in any interval of ``t`` seconds the nodes together admit at most
``burst + rate_per_s * (t + sync_s + timeout_s)`` requests of one subject (every admitted request spent
a token the shared bucket gave out at most ``sync_s`` before, or ``timeout_s`` before for requests that
waited for the draw), against ``burst + rate_per_s * t`` for a bucket asked per request. In return a
request may be refused while other nodes still hold unspent tokens: at most ``lease_size`` each, which
expire unspent. ``sync_s = 0`` asks Redis on every request.

Redis is an aid, not a dependency: when it is down or slower than ``timeout_s`` the request is decided
by an in-process token bucket of the same size (so each node limits on its own during an outage rather
than letting everything through), counted, and logged once per outage. After a failure the limiter
leaves Redis alone for ``retry_s`` (the local buckets decide) rather than make every request wait for
the timeout. The local buckets and the leases are bounded (``LOCAL_MAX_KEYS`` each, least recently used
first out; a lease dropped takes its unspent tokens with it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError

from api.errors import ApiError
from api.leases import Batch, Drawn, Lease, lease_size
from api.settings import (
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_RATE_LIMIT_PER_S,
    DEFAULT_RATE_LIMIT_SYNC_MS,
    DEFAULT_RATE_LIMIT_TIMEOUT_MS,
    Settings,
)
from hub.metrics import Counter, Registry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["KEY_PREFIX", "Decision", "Limit", "LocalBuckets", "RateLimitExceeded", "RateLimiter"]

log = logging.getLogger("tickstock.ratelimit")

KEY_PREFIX = "tickstock:rl:"
# Generous: the scan property test pages ~2,100 requests with one token in ~10 s (peaks of ~400/s).
# A production hub sets its own (TICKSTOCK_RATE_LIMIT_PER_S / _BURST); one hub process serves ~350/s here.
DEFAULT_RATE_PER_S = DEFAULT_RATE_LIMIT_PER_S
DEFAULT_BURST = DEFAULT_RATE_LIMIT_BURST
DEFAULT_TIMEOUT_S = DEFAULT_RATE_LIMIT_TIMEOUT_MS / 1000
DEFAULT_SYNC_S = DEFAULT_RATE_LIMIT_SYNC_MS / 1000
DEFAULT_RETRY_S = 1.0
LOCAL_MAX_KEYS = 10_000  # in-process buckets kept while Redis is failing; leases kept
MAX_ROUNDS = 8  # draws a request may wait for before it draws for itself alone

# KEYS[1] the bucket; ARGV: rate per second, burst, tokens wanted. Returns {tokens granted, tokens left,
# seconds until one} (numbers as strings: Redis truncates Lua numbers to integers). A refusal (no whole
# token) does not write.
SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3]) or 1
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
if tokens < 1 then
  return {0, tostring(tokens), tostring((1 - tokens) / rate)}
end
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {granted, tostring(tokens), '0'}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class Limit:
    """``rate_per_s`` tokens a second up to ``burst``; a rate of 0 means unlimited."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate_per_s < 0 or not math.isfinite(self.rate_per_s):
            raise ValueError("a rate limit must be a finite number >= 0 (0 = unlimited)")
        if self.rate_per_s and self.burst < 1:
            raise ValueError("a rate limit's burst must be at least 1")

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0


@dataclass(frozen=True)
class Decision:
    """What the limiter decided. ``checked`` is False when no bucket was asked (limiting is off); then
    ``remaining`` means nothing. ``local`` is True when the in-process fallback bucket decided (Redis failed)."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    checked: bool
    local: bool = False

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``/``-Remaining`` and, when refused, ``Retry-After`` (whole seconds, >= 1)."""
        if not self.checked:
            return {}
        headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class RateLimitExceeded(ApiError):
    """429 with ``Retry-After`` and the ``RateLimit-*`` headers."""

    def __init__(self, decision: Decision) -> None:
        seconds = decision.headers()["Retry-After"]
        super().__init__(
            f"too many requests for this token; retry in {seconds} s", status=429, headers=decision.headers()
        )


_UNCHECKED = Decision(allowed=True, limit=0, remaining=0, retry_after_s=0.0, checked=False)


class LocalBuckets:
    """In-process token buckets (the limiter's fallback while Redis fails): the same arithmetic as the
    Redis script, on this process's monotonic clock. At most ``max_keys`` buckets; the least recently
    used goes first (it then starts full again, as a bucket whose Redis key expired would)."""

    def __init__(self, max_keys: int = LOCAL_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def clear(self) -> None:
        self._buckets.clear()

    def take(self, key: str, limit: Limit, now: float | None = None) -> Decision:
        """Take one token from ``key``'s bucket; never waits."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + max(0.0, now - at) * limit.rate_per_s)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, max(now, at))
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        retry = 0.0 if allowed else (1 - tokens) / limit.rate_per_s
        return Decision(
            allowed=allowed,
            limit=limit.burst,
            remaining=max(0, math.floor(tokens)),
            retry_after_s=retry,
            checked=True,
            local=True,
        )


class RateLimiter:
    """Token buckets in Redis, one per subject, spent through per-node leases; ``admin`` principals may
    have their own limit.

    No I/O until :meth:`acquire`. The Redis client is passed per call (the hub's, opened by the lifespan).
    """

    def __init__(
        self,
        *,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: int = DEFAULT_BURST,
        admin_rate_per_s: float | None = None,
        admin_burst: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_s: float = DEFAULT_RETRY_S,
        sync_s: float = DEFAULT_SYNC_S,
        key_prefix: str = KEY_PREFIX,
    ) -> None:
        if timeout_s <= 0 or retry_s < 0 or not 0 <= sync_s < math.inf:
            raise ValueError("timeout_s must be positive, retry_s and sync_s >= 0")
        self.limit = Limit(rate_per_s, burst)
        self.admin_limit = Limit(
            rate_per_s if admin_rate_per_s is None else admin_rate_per_s,
            burst if admin_burst is None else admin_burst,
        )
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.sync_s = sync_s
        self.key_prefix = key_prefix
        self.limited = Counter(
            "tickstock_rate_limited_total", "Requests refused with 429 by the rate limiter."
        )
        self.fail_open = Counter(
            "tickstock_rate_limit_fail_open_total",
            "Requests decided by the in-process fallback bucket because Redis failed or was slow, by reason.",
        )
        self.script_loads = 0
        self.draws = 0  # calls of the script (for the tests and the bench)
        self.local = LocalBuckets()
        self._leases: OrderedDict[str, Lease] = OrderedDict()
        self._down_since: float | None = None
        self._skip_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limiter ``settings`` describe (``rate_limit_per_s``, ``rate_limit_burst``,
        ``rate_limit_admin_per_s``, ``rate_limit_admin_burst``, ``rate_limit_timeout_ms``,
        ``rate_limit_sync_ms``); defaults for any the settings do not have."""
        admin_rate = getattr(settings, "rate_limit_admin_per_s", None)
        admin_burst = getattr(settings, "rate_limit_admin_burst", None)
        return cls(
            rate_per_s=float(getattr(settings, "rate_limit_per_s", DEFAULT_RATE_PER_S)),
            burst=int(getattr(settings, "rate_limit_burst", DEFAULT_BURST)),
            admin_rate_per_s=None if admin_rate is None else float(admin_rate),
            admin_burst=None if admin_burst is None else int(admin_burst),
            timeout_s=float(getattr(settings, "rate_limit_timeout_ms", DEFAULT_TIMEOUT_S * 1000)) / 1000,
            sync_s=float(getattr(settings, "rate_limit_sync_ms", DEFAULT_SYNC_S * 1000)) / 1000,
        )

    def register(self, registry: Registry) -> bool:
        """Expose the counters in ``registry`` (the hub's ``/metrics``); False when that registry already
        has a limiter's counters (several apps on one hub, as in the tests)."""
        try:
            registry.add(self.limited)
        except ValueError:
            return False
        registry.add(self.fail_open)
        return True

    @property
    def degraded(self) -> bool:
        """True while Redis is failing and the in-process buckets decide."""
        return self._down_since is not None

    async def acquire(self, redis: aioredis.Redis, subject: str, *, admin: bool = False) -> Decision:
        """Take one token for ``subject``: from this node's lease when it has one (no I/O), else from the
        draw in flight or a new one. Waits at most about ``timeout_s`` per draw for Redis; never raises
        because of Redis (this process's own bucket for ``subject`` decides and ``fail_open`` counts it)."""
        limit = self.admin_limit if admin else self.limit
        if not limit.enabled:
            return _UNCHECKED
        key = self.key_prefix + subject
        if self._down_since is not None and time.monotonic() < self._skip_until:
            self.fail_open.inc(reason="skipped")
            return self._local_take(key, limit)
        lease = self._lease(key)
        for _ in range(MAX_ROUNDS):
            taken = self._take(redis, key, limit, lease)
            if taken is not None:
                return taken
            if lease.draw is None:
                self._draw(redis, key, limit, lease, time.monotonic())
            drawn = await asyncio.shield(lease.draw)  # type: ignore[arg-type]
            if drawn is None:  # Redis failed or was slow
                return self._local_take(key, limit)
            if drawn.batch is None:
                self.limited.inc()
                return Decision(False, limit.burst, 0, drawn.retry_after_s, checked=True)
            if lease.claim(drawn.batch):
                return self._allowed(limit, lease, time.monotonic())
        # Others kept taking what the draws brought: this request draws one token for itself.
        drawn = await self._drawing(redis, key, limit, lease, time.monotonic(), 1)
        if drawn is None:
            return self._local_take(key, limit)
        if drawn.batch is None or not lease.claim(drawn.batch):
            self.limited.inc()
            return Decision(False, limit.burst, 0, drawn.retry_after_s, checked=True)
        return self._allowed(limit, lease, time.monotonic())

    def take_now(self, redis: aioredis.Redis, subject: str, *, admin: bool = False) -> Decision | None:
        """:meth:`acquire`'s decision when it needs no wait: the limit is off, or this node's lease for
        ``subject`` holds a token (taken). ``None`` otherwise, with nothing taken: ask :meth:`acquire`."""
        limit = self.admin_limit if admin else self.limit
        if not limit.enabled:
            return _UNCHECKED
        lease = self._leases.get(key := self.key_prefix + subject)
        if lease is None or self._down_since is not None:
            return None
        self._leases.move_to_end(key)
        return self._take(redis, key, limit, lease)

    def _take(self, redis: aioredis.Redis, key: str, limit: Limit, lease: Lease) -> Decision | None:
        now = time.monotonic()
        if not lease.take(now):
            return None
        if self.sync_s and lease.wants_more(now):
            self._draw(redis, key, limit, lease, now)
        return self._allowed(limit, lease, now)

    def _lease(self, key: str) -> Lease:
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = Lease()
            while len(self._leases) > LOCAL_MAX_KEYS:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(key)
        return lease

    def _allowed(self, limit: Limit, lease: Lease, now: float) -> Decision:
        remaining = max(0, math.floor(lease.shared_left) + lease.tokens(now))
        return Decision(True, limit.burst, remaining, 0.0, checked=True)

    def _draw(self, redis: aioredis.Redis, key: str, limit: Limit, lease: Lease, now: float) -> None:
        """Start the lease's draw (it runs on even if the request that started it is cancelled)."""
        want = lease.start(now, lease_size(limit.rate_per_s, limit.burst, self.sync_s), self.sync_s)
        future = asyncio.ensure_future(self._drawing(redis, key, limit, lease, now, want))
        lease.draw = future
        future.add_done_callback(lambda done: _settled(lease, done))

    async def _drawing(
        self, redis: aioredis.Redis, key: str, limit: Limit, lease: Lease, now: float, want: int
    ) -> Drawn | None:
        """Ask the shared bucket for ``want`` tokens; ``None`` when Redis failed or was too slow."""
        try:
            granted, left, retry = await asyncio.wait_for(self._run(redis, key, limit, want), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        if self._down_since is not None:
            log.warning(
                "rate limiter: Redis answers again after %.1f s; limiting through Redis resumes",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self.local.clear()
        batch = None
        if int(granted):
            batch = Batch(int(granted), now + self.sync_s)
            lease.batches.append(batch)
        lease.shared_left = float(left)
        return Drawn(batch, float(left), float(retry))

    def _local_take(self, key: str, limit: Limit) -> Decision:
        decision = self.local.take(key, limit)
        if not decision.allowed:
            self.limited.inc()
        return decision

    async def _run(self, redis: aioredis.Redis, key: str, limit: Limit, want: int) -> Any:
        self.draws += 1
        args = (key, repr(limit.rate_per_s), str(limit.burst), str(want))
        try:
            return await redis.evalsha(SCRIPT_SHA, 1, *args)
        except NoScriptError:
            # First use on this Redis, or it restarted or flushed its scripts.
            await redis.script_load(SCRIPT)
            self.script_loads += 1
            return await redis.evalsha(SCRIPT_SHA, 1, *args)

    def _failed(self, exc: BaseException) -> None:
        reason = "timeout" if isinstance(exc, TimeoutError) else "error"
        self.fail_open.inc(reason=reason)
        now = time.monotonic()
        self._skip_until = now + self.retry_s
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "rate limiter: Redis %s (%s); limiting with in-process buckets until it answers",
                "timed out" if reason == "timeout" else "failed",
                str(exc) or type(exc).__name__,
            )


def _settled(lease: Lease, done: asyncio.Future[Drawn | None]) -> None:
    if lease.draw is done:
        lease.draw = None
    if not done.cancelled():
        done.exception()  # retrieved: a draw's own failure is handled by its waiters
