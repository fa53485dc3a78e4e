"""Tokens a node drew from a shared bucket and spends locally: the rate limiter's in-process side.

A :class:`Lease` is one subject's tokens on this node, in batches; each batch expires ``sync_s`` after the
draw that brought it was sent, so no token is spent later than that after the shared bucket gave it out.
Requests take from the oldest batch that is still valid, without I/O. A draw is in flight at most once
per lease; requests that find no token wait for it and then claim from the batch it brought, even if
that batch expired while they waited (they asked for it before then).

How many tokens a draw asks for follows the demand seen on this node: the tokens taken since the last
draw began, per second, times ``sync_s``, but at most twice those tokens (so a short burst does not
draw, and then waste, a whole lease), between 1 and ``max_size``. When a lease runs down to half of
that, the limiter draws ahead in the background, so a busy subject's requests rarely wait for Redis.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Batch", "Drawn", "Lease", "lease_size"]


@dataclass
class Batch:
    """Tokens from one draw: usable until ``expires`` (monotonic seconds)."""

    tokens: int
    expires: float


@dataclass(frozen=True)
class Drawn:
    """What a draw brought: ``batch`` (``None`` when the shared bucket had no whole token), the tokens left
    in the shared bucket after it and, when refused, the seconds until one comes back."""

    batch: Batch | None
    left: float
    retry_after_s: float


def lease_size(rate_per_s: float, burst: int, sync_s: float) -> int:
    """The most a node draws ahead for one subject: what the bucket refills in ``sync_s``, at least one,
    at most the burst."""
    return max(1, min(burst, math.floor(rate_per_s * sync_s)))


@dataclass
class Lease:
    """One subject's tokens on this node, and the draw in flight for it."""

    batches: deque[Batch] = field(default_factory=deque)
    shared_left: float = 0.0  # the shared bucket's tokens after the last draw
    size: int = 1  # tokens the next draw asks for (what demand suggests)
    taken: int = 0  # tokens taken since ``since``
    since: float = 0.0  # monotonic: when the last draw began
    draw: asyncio.Future[Drawn | None] | None = None

    def take(self, now: float) -> bool:
        """Take one token from the oldest valid batch; False when none is left. Never waits."""
        batches = self.batches
        while batches:
            batch = batches[0]
            if batch.tokens > 0 and now < batch.expires:
                batch.tokens -= 1
                self.taken += 1
                return True
            batches.popleft()
        return False

    def claim(self, batch: Batch) -> bool:
        """Take one token from ``batch`` (the draw this request waited for), valid or not."""
        if batch.tokens > 0:
            batch.tokens -= 1
            self.taken += 1
            return True
        return False

    def tokens(self, now: float) -> int:
        return sum(b.tokens for b in self.batches if now < b.expires)

    def start(self, now: float, max_size: int, sync_s: float) -> int:
        """A draw begins at ``now``: how many tokens it asks for (the demand since the last one)."""
        elapsed = now - self.since
        if self.since and elapsed > 0:
            demand = min(2 * self.taken, math.ceil(self.taken / elapsed * sync_s))
            self.size = max(1, min(max_size, demand))
        self.taken = 0
        self.since = now
        return self.size

    def wants_more(self, now: float) -> bool:
        """True when a draw ahead is due: demand asks for more than one token a draw, none is in flight,
        and what is left has run down to half a draw."""
        return self.size > 1 and self.draw is None and self.tokens(now) <= self.size // 2
