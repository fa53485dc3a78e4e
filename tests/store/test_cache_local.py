"""The in-process copies in front of Redis: versions, deadlines and bounds (pure logic, no servers)."""

from __future__ import annotations

import time

import pytest

from store.cache_local import LocalCopies, body_tag

NAMES = ("daily", "ref")


def _copies(**kwargs: float) -> LocalCopies:
    return LocalCopies(**{"max_entries": 10, "max_age_s": 60.0, **kwargs})  # type: ignore[arg-type]


def _put(
    copies: LocalCopies, key: str, body: bytes = b"{}", names: tuple[str, ...] = NAMES, **kwargs: float
) -> object:
    versions = copies.snapshot(names)
    return copies.put(
        key, body, versions=versions, until=kwargs.get("until", time.time() + 30), computed_at=time.time()
    )


def test_a_copy_is_served_until_one_of_its_generations_changes() -> None:
    copies = _copies()
    kept = _put(copies, "scan:a", b'{"a":1}')
    _put(copies, "scan:b", b'{"b":1}', names=("weekly",))
    found = copies.get("scan:a", NAMES)
    assert found is kept and found is not None and found.tag == body_tag(b'{"a":1}')
    copies.changed(["hourly"])  # not one of its generations
    assert copies.get("scan:a", NAMES) is kept
    copies.changed(["daily"])
    assert copies.get("scan:a", NAMES) is None and len(copies) == 1  # dropped on read
    assert copies.get("scan:b", ("weekly",)) is not None and copies.hits == 3


def test_a_notice_between_snapshot_and_put_voids_the_copy() -> None:
    copies = _copies()
    versions = copies.snapshot(NAMES)  # taken before Redis was asked
    copies.changed(["ref"])  # a notice arrives while Redis answers
    copies.put("k", b"{}", versions=versions, until=time.time() + 30, computed_at=time.time())
    assert copies.get("k", NAMES) is None


def test_clear_voids_every_copy_and_snapshots_taken_before() -> None:
    copies = _copies()
    versions = copies.snapshot(NAMES)
    _put(copies, "k")
    copies.clear()
    assert len(copies) == 0
    copies.put("k", b"{}", versions=versions, until=time.time() + 30, computed_at=time.time())
    assert copies.get("k", NAMES) is None


def test_deadlines_the_entry_s_own_and_max_age() -> None:
    copies = _copies(max_age_s=30.0)
    assert _put(copies, "past", until=time.time() - 1) is None  # nothing to serve
    _put(copies, "soon", until=time.time() + 1e-9)
    assert copies.get("soon", NAMES) is None
    assert _put(copies, "long", until=time.time() + 3600) is not None
    assert copies.get("long", NAMES) is not None
    brief = _copies(max_age_s=1e-9)  # a copy never outlives max_age_s, whatever Redis would allow
    _put(brief, "long", until=time.time() + 3600)
    assert brief.get("long", NAMES) is None


def test_bounded_by_entries_and_bytes_least_recently_used_first_out() -> None:
    copies = _copies(max_entries=2, max_bytes=10)
    _put(copies, "a", b"1234")
    _put(copies, "b", b"1234")
    assert copies.get("a", NAMES) is not None  # b is now the least recently used
    _put(copies, "c", b"1234")
    assert [copies.get(k, NAMES) is not None for k in "abc"] == [True, False, True]
    _put(copies, "d", b"123456789")  # 4 + 4 + 9 bytes > 10: the oldest go until it fits
    assert len(copies) == 1 and copies.get("d", NAMES) is not None
    assert _put(copies, "big", b"x" * 11) is None and len(copies) == 1
    _put(copies, "d", b"12")  # replacing a copy frees its bytes
    _put(copies, "e", b"12345678")
    assert len(copies) == 2


def test_turned_off_keeps_nothing() -> None:
    for copies in (_copies(max_entries=0), _copies(max_age_s=0)):
        assert not copies.enabled and _put(copies, "k") is None and len(copies) == 0


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        LocalCopies(max_entries=-1, max_age_s=1)
    with pytest.raises(ValueError, match="max_entries"):
        LocalCopies(max_entries=1, max_age_s=1, max_bytes=-1)
