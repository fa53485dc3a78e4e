"""Websocket subscriptions: their filters, and the index that finds which ones an event matches.

Matching never scans every connection. Each subscription is indexed under the symbols it covers
(its ``symbols`` plus the members of its ``universes``, resolved when it subscribes and again when a
universe it follows changes); subscriptions with no symbol restriction sit in one "any symbol" set.
An event looks up its symbol, then checks the few remaining fields of each candidate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hub.model import EventType, Timeframe

if TYPE_CHECKING:
    from collections import deque

from store.universe_resolver import MY_UNIVERSE

__all__ = ["MY_UNIVERSE", "Entry", "Filter", "Subscription", "SubscriptionIndex"]

MAX_FILTER_SYMBOLS = 2_000
MAX_FILTER_UNIVERSES = 50
MAX_FILTER_PATTERNS = 200

Text = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Filter(BaseModel):
    """What a subscription asks for. Absent or empty lists mean "any"; fields AND, values OR."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    symbols: Annotated[list[Text], Field(max_length=MAX_FILTER_SYMBOLS)] = []
    universes: Annotated[list[Text], Field(max_length=MAX_FILTER_UNIVERSES)] = []
    patterns: Annotated[list[Text], Field(max_length=MAX_FILTER_PATTERNS)] = []
    timeframes: Annotated[list[Timeframe], Field(max_length=8)] = []
    types: Annotated[list[EventType], Field(max_length=3)] = []
    confidence_min: Annotated[float, Field(ge=0, le=1)] = 0.0

    @property
    def follows_my_universe(self) -> bool:
        return MY_UNIVERSE in self.universes


class Entry(NamedTuple):
    """One stored event as the fan-out holds it: the fields filters look at, and its JSON once."""

    seq: int
    symbol: str
    pattern: str
    timeframe: str
    type: str
    confidence: float
    text: str  # the event's canonical JSON, encoded once per node
    stored_at: float  # epoch seconds the clean stream stored it

    @classmethod
    def from_json(cls, seq: int, data: bytes, stored_at: float) -> Entry:
        """Raises ``ValueError``/``KeyError``/``TypeError`` for a body that is not a stored event."""
        text = data.decode()
        event: dict[str, Any] = json.loads(text)
        return cls(
            seq,
            event["symbol"],
            event["pattern"],
            event["timeframe"],
            event["type"],
            float(event["confidence"]),
            text,
            stored_at,
        )


@dataclass(eq=False)
class Subscription:
    """One subscription of one connection. ``symbols`` ``None`` means any symbol.

    While it replays its past (``since``), ``pending`` collects the live entries that match it; the
    replay sends them after the past, so nothing is missed or sent twice at the seam.
    """

    id: str
    owner: Any  # the connection; compared by identity
    filter: Filter
    symbols: frozenset[str] | None
    order: int = 0
    after: int = 0  # only events with a higher seq are for it
    pending: deque[Entry] | None = None
    patterns: frozenset[str] | None = field(init=False)
    timeframes: frozenset[str] | None = field(init=False)
    types: frozenset[str] | None = field(init=False)
    confidence_min: float = field(init=False)
    ids_json: str = field(init=False)

    def __post_init__(self) -> None:
        f = self.filter
        self.patterns = frozenset(f.patterns) or None
        self.timeframes = frozenset(f.timeframes) or None
        self.types = frozenset(f.types) or None
        self.confidence_min = f.confidence_min
        self.ids_json = json.dumps([self.id])

    def matches_rest(self, e: Entry) -> bool:
        """Every condition but the symbol, which the index has already checked."""
        return (
            (self.patterns is None or e.pattern in self.patterns)
            and (self.timeframes is None or e.timeframe in self.timeframes)
            and (self.types is None or e.type in self.types)
            and e.confidence >= self.confidence_min
        )

    def matches(self, e: Entry) -> bool:
        return (self.symbols is None or e.symbol in self.symbols) and self.matches_rest(e)


class SubscriptionIndex:
    """Subscriptions by symbol. Not thread-safe; the fan-out uses it from one event loop."""

    def __init__(self) -> None:
        self._by_symbol: dict[str, dict[Subscription, None]] = {}
        self._any: dict[Subscription, None] = {}
        self._all: dict[Subscription, None] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._all))

    def add(self, sub: Subscription) -> None:
        self._all[sub] = None
        self._place(sub)

    def remove(self, sub: Subscription) -> None:
        if sub in self._all:
            del self._all[sub]
            self._displace(sub)

    def reindex(self, sub: Subscription, symbols: frozenset[str] | None) -> None:
        """Give an indexed subscription a new symbol set (its universe changed)."""
        if sub not in self._all:
            return
        self._displace(sub)
        sub.symbols = symbols
        self._place(sub)

    def _place(self, sub: Subscription) -> None:
        if sub.symbols is None:
            self._any[sub] = None
            return
        for symbol in sub.symbols:
            self._by_symbol.setdefault(symbol, {})[sub] = None

    def _displace(self, sub: Subscription) -> None:
        if sub.symbols is None:
            self._any.pop(sub, None)
            return
        for symbol in sub.symbols:
            subs = self._by_symbol.get(symbol)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self._by_symbol[symbol]

    def match(self, e: Entry) -> dict[Any, list[Subscription]]:
        """The matching subscriptions of ``e``, grouped by owner, each group in subscription order."""
        found: dict[Any, list[Subscription]] = {}
        for candidates in (self._by_symbol.get(e.symbol, ()), self._any):
            for sub in candidates:
                if sub.matches_rest(e):
                    group = found.get(sub.owner)
                    if group is None:
                        found[sub.owner] = [sub]
                    else:
                        group.append(sub)
        for group in found.values():
            if len(group) > 1:
                group.sort(key=_order)
        return found


def _order(sub: Subscription) -> int:
    return sub.order
