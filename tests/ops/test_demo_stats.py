"""ops/demo_stats.py: the demo feed's first minutes, counted from the feed's own replay."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.candles import WARMUP_BARS
from hub.model import PatternEvent
from ops import demo_stats
from tests.support import make_event


def _event(i: int, confidence: float, direction: str | None) -> PatternEvent:
    data = {} if direction is None else {"direction": direction}
    return PatternEvent.model_validate(
        make_event(i, confidence=confidence, data=data, detected_at=datetime.now(UTC).isoformat())
    )


def test_histogram_buckets_and_direction_split() -> None:
    events = [
        _event(0, 0.0, "bullish"),
        _event(1, 0.35, "bearish"),
        _event(2, 0.39, None),
        _event(3, 1.0, "neutral"),
    ]
    assert demo_stats.histogram(events) == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    assert demo_stats.directions(events) == {"bullish": 1, "bearish": 1, "neutral": 1, "missing": 1}
    lines = list(demo_stats.report("t", events))
    assert lines[0] == "t: 4 events" and "missing 1 (25.0 %)" in lines[-1]


def test_the_warm_start_spreads_confidences_and_every_event_has_a_direction() -> None:
    warm = demo_stats.first_events(seconds=120, rate=2, start=WARMUP_BARS)
    cold = demo_stats.first_events(seconds=120, rate=2, start=0)
    assert len(warm) == len(cold) == 240
    assert set(demo_stats.directions(warm)) <= {"bullish", "bearish", "neutral"}
    assert len({e.confidence for e in warm}) > len({e.confidence for e in cold})
    # The cold start's wall of 0.5 (relative volume unknown) is what the warm start removes.
    at_half = sum(e.confidence == 0.5 for e in cold), sum(e.confidence == 0.5 for e in warm)
    assert at_half[0] > 2 * at_half[1], at_half


def test_main_prints_before_and_after(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_stats.main(["--seconds", "10", "--rate", "5", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "before (start at bar 0), first 10 s at 5 events/s: 50 events" in out
    assert f"after (warm start at bar {WARMUP_BARS})" in out and "direction: " in out
    # Only the warm start has relative volume for every event.
    assert [
        line.endswith("without relative volume: 0") for line in out.splitlines() if "distinct" in line
    ] == [
        False,
        True,
    ]
    with pytest.raises(SystemExit):
        demo_stats.main(["--seconds", "0"])
