"""The fan-out's own Python per delivery (``hub.delivery.deliver``), without sockets or system calls.

    .venv/bin/python ops/bench_delivery.py [--connections 5000] [--rounds 7]

Real :class:`~hub.connection.Connection` and :class:`~hub.subscriptions.SubscriptionIndex` objects,
``--connections`` of them subscribed to everything, each taking prepared bytes through a function that
only says yes: what is left is the matching, the frames, the bookkeeping and the metrics. Prints µs per
delivery for events handed on one at a time (a node that keeps up) and in batches of four (one that
catches up), each round's figure and the median. On a shared machine the rounds differ by tens of per
cent: compare two trees (a ``git worktree`` of the other) run one after the other, several times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.connection import Connection
from hub.delivery import deliver
from hub.fanout_limits import FanOutLimits
from hub.fanout_metrics import FanOutMetrics
from hub.metrics import Registry
from hub.subscriptions import Entry, Filter, Subscription, SubscriptionIndex

EVENTS_PER_ROUND = 20


class _Node:
    """What :class:`FanOutMetrics` reads of a fan-out."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.index: list[Subscription] = []
        self.backlog = 0


def _taken(frame: bytes) -> bool:
    return True


async def _send(message: dict[str, Any]) -> None:
    return None


def _entry(seq: int) -> Entry:
    text = json.dumps({"id": f"e{seq}", "symbol": "AAPL", "pattern": "hammer", "confidence": 0.8})
    return Entry(seq, "AAPL", "hammer", "daily", "pattern_detected", 0.8, text, time.time())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    limits, index = FanOutLimits(), SubscriptionIndex()
    metrics = FanOutMetrics(Registry(), _Node())
    for i in range(args.connections):
        conn = Connection(_send, limits, metrics, wire=_taken)
        sub = Subscription(f"s{i % 50}", conn, Filter(), None, order=i)
        conn.subs[sub.id] = sub
        index.add(sub)
    seq = 0
    for batch in (1, 4):
        figures = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for _ in range(EVENTS_PER_ROUND // batch):
                entries = [_entry(seq + k + 1) for k in range(batch)]
                seq += batch
                deliver(entries, index, metrics, resume_max=limits.resume_max)
            figures.append((time.perf_counter() - started) / (EVENTS_PER_ROUND * args.connections) * 1e6)
        print(
            f"{'one event at a time' if batch == 1 else f'batches of {batch}'}: "
            f"median {statistics.median(figures):.3f} µs per delivery "
            f"(rounds: {', '.join(f'{f:.3f}' for f in figures)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
