"""Tokens this process verified recently, so that a busy caller's signature is checked once, not per request.

An entry is keyed by the token itself (its exact text) and holds the principal verification produced.
It is used only while all of these hold, else the token is verified in full again:

* the wall clock is before the token's ``exp`` (never after it, leeway or not: from ``exp`` on, full
  verification decides, and it refuses the token once ``exp`` plus the documented leeway has passed);
* for a token checked against a key set (JWKS), that key set is still the one loaded now and is not
  older than the key set's refresh interval, so a withdrawn key stops a remembered token exactly when
  it stops a fresh one.

At most ``max_entries`` are kept, the least recently used first out; 0 remembers nothing. Only tokens
that passed verification enter, so made-up tokens cannot fill it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from api.settings import DEFAULT_AUTH_CACHE_SIZE

Principal = TypeVar("Principal")  # what verification produced (api.auth.Principal)

__all__ = ["DEFAULT_MAX_ENTRIES", "VerifiedTokens"]

DEFAULT_MAX_ENTRIES = DEFAULT_AUTH_CACHE_SIZE


@dataclass(frozen=True, slots=True)
class _Entry(Generic[Principal]):
    principal: Principal
    until: float  # the token's exp (wall clock, seconds)
    keys: int | None  # the key set generation it was verified with; None: the shared secret


class VerifiedTokens(Generic[Principal]):
    """A bounded map from token to principal; no I/O, no locks (one event loop uses it)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry[Principal]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, *, now: float, keys: int) -> Principal | None:
        """The principal remembered for ``token`` while ``now`` (wall clock) is before its ``exp`` and,
        for a key-set token, ``keys`` is the generation it was verified with; else ``None`` (and an
        entry that can no longer be used is dropped)."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry.until or (entry.keys is not None and entry.keys != keys):
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        self.hits += 1
        return entry.principal

    def remember(self, token: str, principal: Principal, *, until: float, keys: int | None) -> None:
        """Keep ``principal`` for ``token`` until ``until`` (its ``exp``; the caller remembers only tokens
        whose ``exp`` is still ahead)."""
        if self.max_entries == 0:
            return
        self._entries[token] = _Entry(principal, until, keys)
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
