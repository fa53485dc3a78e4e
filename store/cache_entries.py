"""What a cached response is made of: the generations it depends on, what a miss computed, what was served.

Routes build :class:`Dependencies` and :class:`Computed`; :class:`store.cache.ResponseCache` hands back
:class:`Served`. Plain values, no Redis.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

__all__ = ["Computed", "Dependencies", "Flight", "Outcome", "Served", "Source"]

Outcome = Literal["hit", "miss", "coalesced", "bypass"]


@dataclass(frozen=True)
class Dependencies:
    """The generations an entry was computed under.

    ``events`` are bumped when events are stored: an entry stays valid while they are unchanged, and
    for the staleness bound after its generations were read whatever happens to them. ``strict``
    ones (reference data) invalidate at once when they change.
    """

    events: tuple[str, ...] = ()
    strict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Computed:
    """What a miss computed: the body, and how long Redis may keep it (0: not at all)."""

    body: bytes
    ttl_s: float


@dataclass(frozen=True, slots=True)
class Source:
    """Where a served body is kept in this process: its route, its (digested) key and its generations."""

    route: str
    key: str
    deps: Dependencies


@dataclass(frozen=True)
class Served:
    body: bytes
    outcome: Outcome
    age_s: float | None  # for a hit, how long ago the body was computed
    # Wall time until which this body may be served again without asking Redis, provided none of its
    # generations changes meanwhile (0: not at all). See store.cache_local.
    reusable_until: float = 0.0
    tag: str | None = None  # a digest of the body when one is at hand (store.cache_local.body_tag)
    source: Source | None = None  # set when this process keeps a copy of the body (api.hotreads)

    @property
    def hit(self) -> bool:
        return self.outcome == "hit"


@dataclass
class Flight:
    """A computation in progress on this node: identical requests await its ``future`` while it is
    fresh (``read_at`` is when its generations were read)."""

    future: asyncio.Future[Served]
    read_at: float
