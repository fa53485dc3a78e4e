"""Hot answers kept in this process in front of Redis, dropped by the notices that change generations.

A copy is put here only after Redis (or a computation) produced it, with the version this process had
of each generation it depends on *before* Redis was asked, and a deadline. It is served while

* no notice changed any of those generations since that snapshot (:meth:`LocalCopies.changed`, called
  when this node bumps them and when it hears that another node did; :meth:`LocalCopies.clear` when
  notices may have been missed), and
* its deadline has not passed: never later than Redis itself would serve it (its TTL, and for an entry
  valid only by the staleness bound, the bound), and never more than ``max_age_s`` after it was taken,
  so a notice that never arrives costs at most that much extra staleness.

So an answer from here is as fresh as one from Redis whenever notices arrive within the staleness
bound after the commit, the assumption Redis's own bumps already rest on (docs/cache.md). At most
``max_entries`` copies and ``max_bytes`` of bodies are kept, the least recently used first out.
Invalidation is by version, in O(1) per generation named: stale copies are found and dropped on read.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_BYTES", "Copy", "LocalCopies", "body_tag"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def body_tag(body: bytes) -> str:
    """A short stable digest of a body (an HTTP entity tag is made of it)."""
    return hashlib.blake2b(body, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Copy:
    body: bytes
    tag: str  # body_tag(body), computed once
    computed_at: float  # wall clock, for the age a hit reports
    versions: tuple[int, ...]
    until: float  # monotonic deadline


class LocalCopies:
    """Bodies by cache key; no I/O, no locks (one event loop uses it)."""

    def __init__(self, *, max_entries: int, max_age_s: float, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 0 or max_age_s < 0 or max_bytes < 0:
            raise ValueError("max_entries, max_age_s and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._copies: OrderedDict[str, Copy] = OrderedDict()
        self._bytes = 0
        self._versions: dict[str, int] = {}
        self._epoch = 0  # every copy depends on it: clear() moves it on
        self.hits = 0

    def __len__(self) -> int:
        return len(self._copies)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_age_s > 0

    def snapshot(self, names: Iterable[str]) -> tuple[int, ...]:
        """The versions of ``names`` now: take it before asking Redis, give it to :meth:`put`."""
        versions = self._versions
        return (self._epoch, *(versions.get(n, 0) for n in names))

    def get(self, key: str, names: Iterable[str]) -> Copy | None:
        """The copy of ``key`` while it may be served (see the module docstring), else ``None``."""
        found = self._copies.get(key)
        if found is None:
            return None
        if time.monotonic() >= found.until or found.versions != self.snapshot(names):
            self._drop(key)
            return None
        self._copies.move_to_end(key)
        self.hits += 1
        return found

    def put(
        self,
        key: str,
        body: bytes,
        *,
        versions: tuple[int, ...],
        until: float,
        computed_at: float,
        tag: str | None = None,
    ) -> Copy | None:
        """Keep ``body`` for ``key`` until ``until`` (wall clock; capped at ``max_age_s`` from now) unless
        a generation changed since ``versions`` was taken. Returns the copy kept, or ``None``."""
        now = time.time()
        ttl = min(until - now, self.max_age_s)
        if not self.enabled or ttl <= 0 or len(body) > self.max_bytes:
            return None
        copy = Copy(body, tag or body_tag(body), computed_at, versions, time.monotonic() + ttl)
        self._drop(key)
        self._copies[key] = copy
        self._bytes += len(body)
        while len(self._copies) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._copies)))
        return copy

    def changed(self, names: Iterable[str]) -> None:
        """Generations ``names`` changed: copies that depend on them are no longer served."""
        versions = self._versions
        for name in names:
            versions[name] = versions.get(name, 0) + 1

    def clear(self) -> None:
        """Notices may have been missed: no copy taken before now is served."""
        self._epoch += 1
        self._copies.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        gone = self._copies.pop(key, None)
        if gone is not None:
            self._bytes -= len(gone.body)
