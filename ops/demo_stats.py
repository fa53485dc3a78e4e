"""What the demo feed publishes over its first minutes: a confidence histogram and the direction split.

    python -m ops.demo_stats --seconds 120              # at `tickstock run`'s rate (2 events/s)
    python -m ops.demo_stats --seconds 120 --rate 5     # at `tickstock demo-feed`'s default rate

The events are the ones :class:`hub.demo_feed.DemoFeed` would publish, in its order: the same
:func:`hub.demo_feed.load_tracks` over the shipped files, the same :func:`hub.demo_feed.replay` iterator
and the same :meth:`hub.candles.Detection.to_event` (so each is a validated schema-v1 event). Only the
pacing is skipped: the feed publishes about ``rate`` events per second, so its first ``seconds`` of
replay are the first ``rate * seconds`` events of the iterator, computed here in well under a second
with no NATS. ``--compare`` prints the old start (bar 0, before the indicators' warm-up) beside the warm
start the feed uses now.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice

from hub.candles import WARMUP_BARS
from hub.demo_feed import load_tracks, replay
from hub.model import PatternEvent
from hub.ohlcv import default_files

DIRECTIONS = ("bullish", "bearish", "neutral")
BUCKETS = 10  # 0.1 wide


def first_events(*, seconds: float, rate: float, start: int) -> list[PatternEvent]:
    """The events the demo feed publishes in its first ``seconds`` at ``rate`` events/s, replaying
    each file from bar ``start``."""
    tracks = load_tracks(default_files())
    now = datetime.now(UTC)
    pairs = islice(replay(tracks, loop=True, start=start), math.ceil(seconds * rate))
    return [d.to_event(run_id="stats", now=now, lap=lap) for d, lap in pairs]


def histogram(events: Sequence[PatternEvent]) -> list[int]:
    """Counts per 0.1 of confidence: [0, 0.1), ..., [0.9, 1.0] (1.0 falls in the last)."""
    counts = [0] * BUCKETS
    for e in events:
        counts[min(int(e.confidence * BUCKETS), BUCKETS - 1)] += 1
    return counts


def directions(events: Sequence[PatternEvent]) -> Counter[str]:
    return Counter(str(e.data.get("direction", "missing")) for e in events)


def report(title: str, events: Sequence[PatternEvent]) -> Iterator[str]:
    total = len(events)
    yield f"{title}: {total} events"
    counts = histogram(events)
    width = max(counts) or 1
    for i, n in enumerate(counts):
        bar = "#" * round(40 * n / width)
        yield f"  {i / BUCKETS:.1f}-{(i + 1) / BUCKETS:.1f}  {n:5d}  {100 * n / max(total, 1):5.1f} %  {bar}"
    distinct = len({e.confidence for e in events})
    flat = sum(e.confidence == 0.5 for e in events)  # the formula's value when relative volume is unknown
    unknown = sum("relative_volume" not in e.indicators for e in events)
    yield f"  distinct confidences: {distinct}; exactly 0.50: {flat}; without relative volume: {unknown}"
    split = directions(events)
    yield "  direction: " + ", ".join(
        f"{d} {split[d]} ({100 * split[d] / max(total, 1):.1f} %)"
        for d in (*DIRECTIONS, "missing")
        if split[d]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.demo_stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="replay time to cover (default 120)")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="events per second (default 2: tickstock run)"
    )
    parser.add_argument("--compare", action="store_true", help="also show the old start at bar 0")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0 and math.isfinite(args.rate) and args.rate > 0):
        parser.error("--seconds and --rate must be positive numbers")
    runs = [("before (start at bar 0)", 0)] if args.compare else []
    runs.append((f"after (warm start at bar {WARMUP_BARS})", WARMUP_BARS))
    for label, start in runs:
        events = first_events(seconds=args.seconds, rate=args.rate, start=start)
        for line in report(f"{label}, first {args.seconds:g} s at {args.rate:g} events/s", events):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
