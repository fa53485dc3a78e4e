"""Live events onto the sockets they match: one write per socket and batch, order and once-only kept.

Pure logic over real :class:`Connection` objects: a socket here is a function that records what it is
given (the fan-out's end-to-end behaviour under load is in ``tests/api/test_ws_overload.py``).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest

from hub.connection import Connection
from hub.delivery import deliver, event_frame, ids_json
from hub.fanout_limits import FanOutLimits
from hub.fanout_metrics import FanOutMetrics
from hub.metrics import Registry
from hub.subscriptions import Entry, Filter, Subscription, SubscriptionIndex
from hub.wsframe import header_size, text_frame


class _Node:
    """What :class:`FanOutMetrics` reads of a fan-out."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.index: list[Subscription] = []
        self.backlog = 0


class _Socket:
    """A socket: takes prepared bytes (``wire``) while ``takes``, and texts through ``send``."""

    def __init__(self, *, takes: bool = True) -> None:
        self.takes = takes
        self.writes: list[bytes] = []
        self.texts: list[str] = []
        self.closes: list[int] = []

    def wire(self, data: bytes) -> bool:
        if self.takes:
            self.writes.append(data)
        return self.takes

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            self.closes.append(message["code"])
        else:
            self.texts.append(message["text"])


def _entry(seq: int, symbol: str = "AAPL") -> Entry:
    text = json.dumps({"id": f"e{seq}", "symbol": symbol})
    return Entry(seq, symbol, "hammer", "daily", "pattern_detected", 0.8, text, 1.0)


def _setup(**limits: Any) -> tuple[SubscriptionIndex, FanOutMetrics, FanOutLimits]:
    return SubscriptionIndex(), FanOutMetrics(Registry(), _Node()), FanOutLimits(**limits)


def _subscribe(index: SubscriptionIndex, conn: Connection, sub_id: str, order: int, **f: Any) -> Subscription:
    symbols = f.pop("symbols", None)
    sub = Subscription(sub_id, conn, Filter(**f), frozenset(symbols) if symbols else None, order=order)
    conn.subs[sub_id] = sub
    index.add(sub)
    return sub


def test_a_socket_that_takes_prepared_bytes_gets_its_frames_of_a_batch_in_one_write() -> None:
    index, metrics, limits = _setup()
    socket = _Socket()
    conn = Connection(socket.send, limits, metrics, wire=socket.wire)
    sub = _subscribe(index, conn, "all", 1)
    entries = [_entry(s) for s in (5, 6, 7)]
    deliver(entries, index, metrics, resume_max=limits.resume_max)
    frames = [event_frame(e, sub.ids_json) for e in entries]
    assert socket.writes == [b"".join(text_frame(f) for f in frames)]  # one write, in stream order
    assert socket.texts == []
    assert metrics.prepared == metrics.events == 3  # counted per event frame, not per write
    payload = sum(len(text_frame(f)) - header_size(text_frame(f)) for f in frames)
    assert metrics.bytes == payload


def test_one_event_is_one_write_and_each_socket_gets_only_what_matches() -> None:
    index, metrics, limits = _setup()
    aapl, msft = _Socket(), _Socket()
    a = Connection(aapl.send, limits, metrics, wire=aapl.wire)
    m = Connection(msft.send, limits, metrics, wire=msft.wire)
    sub_a = _subscribe(index, a, "a", 1, symbols=["AAPL"])
    _subscribe(index, m, "m", 2, symbols=["MSFT"])
    entries = [_entry(1, "AAPL"), _entry(2, "MSFT"), _entry(3, "AAPL")]
    deliver(entries[:1], index, metrics, resume_max=limits.resume_max)
    assert aapl.writes == [text_frame(event_frame(entries[0], sub_a.ids_json))] and msft.writes == []
    deliver(entries[1:], index, metrics, resume_max=limits.resume_max)
    assert [json.loads(w[header_size(w) :])["seq"] for w in msft.writes] == [2]
    assert len(aapl.writes) == 2 and b'"seq":3' in aapl.writes[1] and b'"seq":2' not in aapl.writes[1]


def test_a_socket_that_cannot_take_prepared_bytes_gets_each_frame_through_its_outbox_in_order() -> None:
    index, metrics, limits = _setup()
    paused, plain = _Socket(takes=False), _Socket()
    p = Connection(paused.send, limits, metrics, wire=paused.wire)  # e.g. paused by flow control
    q = Connection(plain.send, limits, metrics)  # no prepared bytes at all (compression, Socket.IO)
    sub_p, sub_q = _subscribe(index, p, "p", 1), _subscribe(index, q, "q", 2)
    entries = [_entry(s) for s in (10, 11, 12)]
    deliver(entries, index, metrics, resume_max=limits.resume_max)
    assert paused.writes == []
    assert paused.texts == [event_frame(e, sub_p.ids_json) for e in entries]
    assert plain.texts == [event_frame(e, sub_q.ids_json) for e in entries]
    assert metrics.prepared == 0 and metrics.events == 6


def test_subscriptions_of_one_connection_share_a_frame_and_skip_what_they_had() -> None:
    index, metrics, limits = _setup()
    socket = _Socket()
    conn = Connection(socket.send, limits, metrics, wire=socket.wire)
    first, second = _subscribe(index, conn, "x", 1), _subscribe(index, conn, "y", 2)
    second.after = 20  # subscribed when the head was 20: it had event 20 already
    entries = [_entry(20), _entry(21)]
    deliver(entries, index, metrics, resume_max=limits.resume_max)
    expected = text_frame(event_frame(entries[0], first.ids_json)) + text_frame(
        event_frame(entries[1], ids_json([first, second]))
    )
    assert socket.writes == [expected]
    assert json.loads(event_frame(entries[1], ids_json([first, second])))["subs"] == ["x", "y"]


@pytest.mark.asyncio
async def test_a_resuming_subscription_collects_events_and_too_many_close_its_connection() -> None:
    index, metrics, limits = _setup(resume_max=2)
    socket = _Socket()
    conn = Connection(socket.send, limits, metrics, wire=socket.wire)
    sub = _subscribe(index, conn, "r", 1)
    sub.pending = deque()  # its past is being replayed: live events wait after it
    deliver([_entry(1), _entry(2)], index, metrics, resume_max=limits.resume_max)
    assert [e.seq for e in sub.pending] == [1, 2] and socket.writes == [] and conn.close_code is None
    deliver([_entry(3)], index, metrics, resume_max=limits.resume_max)
    assert conn.close_code == 4409 and "resuming" in conn.close_reason
    assert [e.seq for e in sub.pending] == [1, 2]
    await conn.closed()
    assert socket.closes == [4409] and socket.texts == []


@pytest.mark.parametrize("batch", [False, True])
def test_one_event_at_a_time_or_in_a_batch_a_subscription_skips_what_it_had(batch: bool) -> None:
    """The same frames whether events come one by one (written as they are matched) or together."""
    index, metrics, limits = _setup()
    socket = _Socket()
    conn = Connection(socket.send, limits, metrics, wire=socket.wire)
    sub = _subscribe(index, conn, "only", 1)
    sub.after = 31  # subscribed when the head was 31
    entries = [_entry(s) for s in (30, 31, 32)]
    if batch:
        deliver(entries, index, metrics, resume_max=limits.resume_max)
    else:
        for entry in entries:
            deliver([entry], index, metrics, resume_max=limits.resume_max)
    assert b"".join(socket.writes) == text_frame(event_frame(entries[2], sub.ids_json))
    assert metrics.prepared == metrics.events == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("batch", [False, True])
async def test_a_connection_with_a_resuming_and_a_live_subscription_gets_the_live_ones_frames(
    batch: bool,
) -> None:
    index, metrics, limits = _setup(resume_max=1)
    socket = _Socket()
    conn = Connection(socket.send, limits, metrics, wire=socket.wire)
    live = _subscribe(index, conn, "live", 1)
    resuming = _subscribe(index, conn, "back", 2)
    resuming.pending = deque()
    had = _subscribe(index, conn, "had", 3)
    had.after = 41  # it had both events already: never in a frame's ids
    entries = [_entry(40), _entry(41)]
    if batch:
        deliver(entries, index, metrics, resume_max=limits.resume_max)
    else:
        for entry in entries:
            deliver([entry], index, metrics, resume_max=limits.resume_max)
    # The resuming subscription keeps the first event; the second is one too many: the connection is
    # closed with 4409 (it resumes), and nothing is written to it after that.
    assert [e.seq for e in resuming.pending] == [40]
    assert conn.close_code == 4409
    if batch:  # the close came while the batch was gathered: none of it is written
        assert socket.writes == []
    else:  # the first event went out as it was matched, with the live subscription's id only
        assert socket.writes == [text_frame(event_frame(entries[0], live.ids_json))]
    await conn.closed()
    assert socket.closes == [4409] and socket.texts == []


def test_connections_whose_subscriptions_have_the_same_ids_share_one_frame() -> None:
    index, metrics, limits = _setup()
    sockets = [_Socket() for _ in range(3)]
    conns = [Connection(s.send, limits, metrics, wire=s.wire) for s in sockets]
    for conn in conns[:2]:
        _subscribe(index, conn, "same", 1)
    for n, sub_id in enumerate(("x", "y")):  # the third: two subscriptions that both had the event
        _subscribe(index, conns[2], sub_id, 2 + n).after = 50
    deliver([_entry(50)], index, metrics, resume_max=limits.resume_max)
    assert sockets[0].writes == sockets[1].writes == [text_frame(event_frame(_entry(50), '["same"]'))]
    assert sockets[0].writes[0] is sockets[1].writes[0]  # the same bytes object: built once
    assert sockets[2].writes == [] and metrics.prepared == 2
