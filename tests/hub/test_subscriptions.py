"""The subscription index: which subscriptions an event matches, found without scanning them all."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hub.subscriptions import Entry, Filter, Subscription, SubscriptionIndex

SYMBOLS = ["AAPL", "MSFT", "JPM", "XOM"]
PATTERNS = ["hammer", "doji"]


def entry(
    seq: int,
    symbol: str = "AAPL",
    pattern: str = "hammer",
    timeframe: str = "daily",
    type_: str = "pattern_detected",
    confidence: float = 0.5,
) -> Entry:
    return Entry(seq, symbol, pattern, timeframe, type_, confidence, "{}", 0.0)


def sub(owner: object, sub_id: str, symbols: list[str] | None = None, **f: object) -> Subscription:
    return Subscription(sub_id, owner, Filter(**f), frozenset(symbols) if symbols is not None else None)


def test_matches_are_grouped_by_owner_in_subscription_order() -> None:
    index = SubscriptionIndex()
    a, b = object(), object()
    s2 = Subscription("second", a, Filter(), None, order=2)
    s1 = Subscription("first", a, Filter(), frozenset({"AAPL"}), order=1)
    s3 = sub(b, "msft", ["MSFT"])
    for s in (s2, s1, s3):
        index.add(s)
    assert index.match(entry(1, "AAPL")) == {a: [s1, s2]}
    assert index.match(entry(2, "MSFT")) == {a: [s2], b: [s3]}
    assert len(index) == 3


def test_remove_and_reindex_move_a_subscription_between_symbols() -> None:
    index = SubscriptionIndex()
    owner = object()
    s = sub(owner, "mine", ["AAPL"])
    index.add(s)
    index.reindex(s, frozenset({"MSFT"}))
    assert index.match(entry(1, "AAPL")) == {}
    assert index.match(entry(2, "MSFT")) == {owner: [s]}
    index.reindex(s, None)  # now any symbol
    assert index.match(entry(3, "XOM")) == {owner: [s]}
    index.remove(s)
    index.remove(s)  # twice is harmless
    index.reindex(s, frozenset({"AAPL"}))  # not indexed: ignored
    assert index.match(entry(4, "AAPL")) == {} and len(index) == 0 and list(index) == []


def test_filter_rejects_unknown_fields_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError):
        Filter(colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Filter(confidence_min=1.5)
    with pytest.raises(ValidationError):
        Filter(timeframes=["2min"])  # type: ignore[list-item]
    assert Filter(universes=["my", "sp500"]).follows_my_universe
    assert not Filter().follows_my_universe


def test_entry_from_json_reads_the_fields_filters_use() -> None:
    e = Entry.from_json(
        7,
        b'{"symbol":"AAPL","pattern":"hammer","timeframe":"daily","type":"pattern_detected",'
        b'"confidence":0.9,"id":"x"}',
        1.5,
    )
    assert (e.seq, e.symbol, e.confidence, e.stored_at) == (7, "AAPL", 0.9, 1.5)
    with pytest.raises(KeyError):
        Entry.from_json(8, b'{"symbol":"AAPL"}', 0)


filters = st.fixed_dictionaries(
    {},
    optional={
        "symbols": st.lists(st.sampled_from(SYMBOLS), max_size=3),
        "patterns": st.lists(st.sampled_from(PATTERNS), max_size=2),
        "timeframes": st.lists(st.sampled_from(["daily", "hourly"]), max_size=2),
        "types": st.lists(st.sampled_from(["pattern_detected", "pattern_expired"]), max_size=2),
        "confidence_min": st.sampled_from([0.0, 0.3, 0.7]),
    },
)


@given(st.lists(filters, min_size=1, max_size=12), st.integers(0, 2**32))
def test_the_index_agrees_with_checking_every_subscription(
    chosen: list[dict[str, object]], seed: int
) -> None:
    rng = random.Random(seed)
    index = SubscriptionIndex()
    owners = [object() for _ in range(4)]
    subs = []
    for i, f in enumerate(chosen):
        symbols = f.pop("symbols", None)
        s = Subscription(
            f"s{i}", rng.choice(owners), Filter(**f), frozenset(symbols) if symbols else None, order=i
        )
        subs.append(s)
        index.add(s)
    for seq in range(30):
        e = entry(
            seq,
            rng.choice(SYMBOLS),
            rng.choice(PATTERNS),
            rng.choice(["daily", "hourly"]),
            rng.choice(["pattern_detected", "pattern_expired"]),
            rng.choice([0.1, 0.5, 0.9]),
        )
        brute: dict[object, list[Subscription]] = {}
        for s in subs:
            if s.matches(e):
                brute.setdefault(s.owner, []).append(s)
        assert index.match(e) == brute
