"""A node that falls behind (issue #14, "bounded under overload"): a real backlog in the live NATS
subscription, driven by an event loop kept busy, sheds the slowest connections with 4409 while a
fast client keeps every event in order; a pending buffer so small that NATS drops events closes every
subscribed connection with 4409, and a resume by ``seq`` gets exactly what was missed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
import websockets
from nats.aio.client import Client as NATS
from websockets.asyncio.client import ClientConnection

from api.auth import mint_token
from api.settings import Settings
from hub.connection import Connection
from hub.delivery import COALESCE_EVENTS
from hub.fanout_limits import FanOutLimits
from hub.fanout_metrics import FanOutMetrics
from hub.jetstream import PATTERNS_STREAM
from hub.metrics import Registry
from hub.overload import (
    CLOSE_SLICE,
    HEADROOM,
    MAX_SHED_FRACTION,
    MIN_LATE_OUTBOXES,
    REASON_MISSED,
    REASON_SHED,
    SHED_FRACTION,
    Overload,
    Shedder,
)
from hub.subjects import clean_subject
from hub.subscriptions import Filter, Subscription
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import LiveHub, make_event, publish_events, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="overload-reader", scopes=["patterns:read"])
SLOW = 20
EVENTS = 300


def tuned(settings: Settings, **changes: Any) -> Settings:
    return replace(
        settings,
        ws_queue_age_s=60.0,  # the outbox age bound must not be what closes the slow ones
        ws_ping_interval_s=30.0,
        ws_idle_timeout_s=120.0,
        ws_resume_max=10_000,
        rate_limit_per_s=0,
        **changes,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def shedding_hub(settings: Settings) -> AsyncIterator[LiveHub]:
    await delete_all_streams(settings.nats_url or "")
    # Windows longer than the busy loop's slices (see busy_loop): a slice is not a quiet window.
    async with LiveHub(tuned(settings, ws_shed_after_s=1.0)) as live:
        yield live


@pytest_asyncio.fixture(loop_scope="session")
async def tiny_buffer_hub(settings: Settings) -> AsyncIterator[LiveHub]:
    await delete_all_streams(settings.nats_url or "")
    # No shedding here: these tests are about what NATS drops, not about closing the slowest.
    async with LiveHub(tuned(settings, ws_live_pending_messages=20, ws_shed_after_s=600.0)) as live:
        yield live


@contextlib.asynccontextmanager
async def busy_loop(slice_s: float = 0.02 * COALESCE_EVENTS) -> AsyncIterator[None]:
    """Keep the event loop (the hub's too: it runs in this process) busy for ``slice_s`` between any
    two callbacks, so the fan-out reads NATS faster than it can fan out: a real backlog. (It hands on
    at most :data:`COALESCE_EVENTS` events a turn of the loop: by default 50 a second.)"""
    running = True

    async def hog() -> None:
        while running:  # hygiene: ok - not a poll: it keeps the loop busy until told to stop
            time.sleep(slice_s)
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    try:
        yield
    finally:
        running = False
        await task


async def opened(live: LiveHub, *, since: int | None = None, max_queue: int = 1024) -> ClientConnection:
    """A subscribed connection; what it replayed before ``subscribed`` is in ``REPLAYED[ws]``."""
    ws = await websockets.connect(
        f"{live.ws_url}/ws?token={READER}", ping_interval=None, max_queue=max_queue, max_size=1 << 22
    )
    subscribe: dict[str, Any] = {"op": "subscribe", "id": "all", "filter": {}}
    if since is not None:
        subscribe["since"] = since
    await ws.send(json.dumps(subscribe))
    replayed = REPLAYED[ws] = []
    async with asyncio.timeout(15):
        while (frame := json.loads(await ws.recv()))["op"] != "subscribed":
            if frame["op"] == "event":
                replayed.append(frame)
    return ws


REPLAYED: dict[ClientConnection, list[dict[str, Any]]] = {}


class Reader:
    """Reads a connection's events in the background until it closes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = REPLAYED.pop(ws, [])
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame["op"] == "event":
                    self.events.append(frame)

    async def ended(self) -> tuple[int | None, str | None]:
        async with asyncio.timeout(30):
            await self.task
        return self.ws.close_code, self.ws.close_reason


async def test_a_backlog_sheds_the_slowest_and_a_fast_client_keeps_everything(
    shedding_hub: LiveHub,
) -> None:
    fanout = shedding_hub.hub.fanout
    assert fanout is not None
    fast = Reader(await opened(shedding_hub))  # the oldest connection, reading all the time
    slow = [await opened(shedding_hub, max_queue=1) for _ in range(SLOW)]  # read nothing more
    shed0 = fanout.metrics.shed.total()
    events = [make_event(i, prefix="shed", symbol="SHED") for i in range(EVENTS)]
    # Events reach the clean stream at 150/s from another thread, while the busy fan-out hands on at
    # most 50/s: its backlog grows.
    publisher = threading.Thread(
        target=publish_to_clean, args=(shedding_hub.settings.nats_url or "", events), kwargs={"rate": 150.0}
    )
    async with busy_loop():
        publisher.start()
        await wait_for(lambda: fanout.metrics.shed.total() > shed0, timeout=60, what="a shed")
    await asyncio.to_thread(publisher.join)
    shed = int(fanout.metrics.shed.total() - shed0)

    got = await wait_for(
        lambda: fast.events if len(fast.events) >= EVENTS else None, timeout=60, what="every event"
    )
    assert [f["event"]["id"] for f in got] == [e["id"] for e in events]  # all of them, in order, once
    assert fast.ws.close_code is None
    await fast.ws.send('{"op":"ping","ts":1}')  # and it is still served

    codes = await asyncio.gather(*(_ending(ws) for ws in slow))
    shed_codes = [c for c in codes if c == (4409, REASON_SHED)]
    assert 1 <= len(shed_codes) == shed < SLOW  # only slow ones, and a step at a time
    await fast.ws.close()


async def _ending(ws: ClientConnection) -> tuple[int | None, str | None]:
    """How a slow connection ended: read what it was sent; one still open after that is closed by us."""
    reader = Reader(ws)
    try:
        async with asyncio.timeout(3.0):
            await asyncio.shield(reader.task)
    except TimeoutError:
        await ws.close()
        await reader.task
        return None, None
    return ws.close_code, ws.close_reason


async def test_events_nats_drops_are_read_again_and_arrive_in_order_exactly_once(
    tiny_buffer_hub: LiveHub,
) -> None:
    """A live buffer of 20 events: a burst overflows it and NATS drops events; the feed reads the
    stream again from the last event handled, so a subscriber still gets each event once, in order."""
    fanout = tiny_buffer_hub.hub.fanout
    assert fanout is not None
    reader = Reader(await opened(tiny_buffer_hub))
    events = [make_event(i, prefix="drop", symbol="DROP") for i in range(EVENTS)]
    # Straight onto the clean stream in one burst (how fast the writer publishes depends on its
    # batches, which ingest partitions make smaller): the live buffer must overflow.
    nc = tiny_buffer_hub.hub.nats
    for e in events:
        await nc.publish(clean_subject("daily", "DROP"), json.dumps(e).encode())
    await nc.flush()
    got = await wait_for(
        lambda: reader.events if len(reader.events) >= EVENTS else None, timeout=60, what="every event"
    )
    assert [f["event"]["id"] for f in got] == [e["id"] for e in events]
    assert fanout.metrics.live_dropped > 0  # NATS did drop events ...
    assert fanout.metrics.live_restarts.total() > 0  # ... and they were read again
    assert reader.ws.close_code is None and fanout.metrics.holes.total() == 0
    marker = make_event(EVENTS, prefix="drop", symbol="DROP")  # delivered after anything late
    await publish_events(tiny_buffer_hub.hub.js, [marker])
    await wait_for(lambda: reader.events[-1]["event"]["id"] == marker["id"], timeout=30, what="the marker")
    assert [f["event"]["id"] for f in reader.events] == [e["id"] for e in [*events, marker]]  # none twice
    await reader.ws.close()


def publish_to_clean(
    url: str, events: list[dict[str, Any]], *, rate: float, delete: int | None = None
) -> None:
    """Publish ``events`` straight to the clean stream at ``rate``/s (in this thread's own event loop),
    then delete the ``delete``-th from the stream."""

    async def go() -> None:
        nc = NATS()
        await nc.connect(url)
        js = nc.jetstream()
        seqs = []
        for e in events:
            seqs.append(
                (await js.publish(clean_subject("daily", str(e["symbol"])), json.dumps(e).encode())).seq
            )
            await asyncio.sleep(1 / rate)
        if delete is not None:
            await js.delete_msg(PATTERNS_STREAM, seqs[delete])
        await nc.close()

    asyncio.run(go())


def publish_while_frozen(url: str, events: list[dict[str, Any]], delete: range) -> None:
    """From another thread (this one's event loop, the hub's, stays frozen meanwhile): publish
    ``events`` straight to the clean stream, then delete those at the indexes ``delete`` from the
    stream. The hub then reads them in one burst, past its buffer."""

    async def go() -> None:
        nc = NATS()
        await nc.connect(url)
        js = nc.jetstream()
        seqs = [
            (await js.publish(clean_subject("daily", str(e["symbol"])), json.dumps(e).encode())).seq
            for e in events
        ]
        for i in delete:
            await js.delete_msg(PATTERNS_STREAM, seqs[i])
        await nc.close()

    thread = threading.Thread(target=lambda: asyncio.run(go()))
    thread.start()
    thread.join()  # blocks the event loop on purpose: the hub reads nothing until it returns


async def test_events_gone_from_the_stream_close_every_subscriber_to_resume(tiny_buffer_hub: LiveHub) -> None:
    """A burst past the buffer, and a run of its events deleted from the stream before the node reads
    them again (as retention deletes a run): what came before is handed on, the hole closes the
    subscriber with 4409, a resume by seq gets everything after it.

    Which events the node gets live before NATS drops (or holds back by flow control) varies from run
    to run (the 21st, the 37th, ...): the deleted run reaches from the 31st to the last but one, so
    wherever the drops begin, the node reads a deleted event again from the stream and misses it."""
    fanout = tiny_buffer_hub.hub.fanout
    assert fanout is not None
    reader = Reader(await opened(tiny_buffer_hub))
    events = [make_event(i, prefix="hole", symbol="HOLE") for i in range(120)]
    deleted = range(30, len(events) - 1)
    publish_while_frozen(tiny_buffer_hub.settings.nats_url or "", events, delete=deleted)
    code, reason = await reader.ended()
    assert (code, reason) == (4409, REASON_MISSED)
    assert fanout.metrics.holes.total() == 1
    before = [f["event"]["id"] for f in reader.events]
    assert before == [e["id"] for e in events[: len(before)]] and len(before) < deleted.stop
    expected = [e["id"] for i, e in enumerate(events) if i >= len(before) and i not in deleted]

    again = Reader(await opened(tiny_buffer_hub, since=reader.events[-1]["seq"] if reader.events else None))
    rest = await wait_for(
        lambda: again.events if len(again.events) >= len(expected) else None,
        timeout=30,
        what=f"the rest after {len(before)} ({[f['seq'] for f in again.events]})",
    )
    assert [f["event"]["id"] for f in rest] == expected
    await again.ws.close()


# -- the shedding policy (pure bookkeeping) ------------------------------------------------------------


async def test_sheds_only_when_the_backlog_stays_and_does_not_drain() -> None:
    shedder = Shedder(after_s=1.0)
    assert not shedder.due(5, 0.0)  # behind from now
    assert not shedder.due(9, 0.5)
    assert shedder.due(9, 1.0)  # a window behind and not shrinking: a step
    assert not shedder.due(12, 1.5)  # the step's own window: its closes and the drain are not measured
    assert not shedder.due(12, 2.0)  # a new window
    assert shedder.due(12, 3.0)  # still growing: another step
    assert not shedder.due(8, 4.0)  # a new window after the step's own
    assert shedder.due(8, 5.0)  # not draining: another
    assert not shedder.due(4, 6.0)
    assert not shedder.due(2, 7.0)  # draining: no more
    assert not shedder.due(0, 7.1)  # caught up
    assert not shedder.due(300, 7.2)  # a burst ...
    assert not shedder.due(150, 8.2)  # ... that drains never sheds
    assert not shedder.due(10, 9.2)


async def test_sheds_when_events_stay_late_and_lets_a_recovering_node_be() -> None:
    shedder = Shedder(after_s=1.0, lag_s=0.2)
    assert shedder.lag(5.01, backlog=0) == 0.0  # picked up as it came: the clocks differ by 5.01 s
    assert shedder.offset == pytest.approx(5.01)
    assert not shedder.due(0, 0.25, waited=5.51)  # 0.5 s late, the buffer empty: a window starts
    assert not shedder.due(0, 0.75, waited=5.55)
    assert shedder.due(0, 1.25, waited=5.61)  # a window late and not recovering: a step
    assert not shedder.due(0, 1.75, waited=5.9)  # the step's own window
    assert not shedder.due(0, 2.25, waited=5.91)  # a new window, 0.9 s late
    assert not shedder.due(0, 3.25, waited=5.71)  # recovering fast (0.2 s/s): back under within 4 windows
    assert shedder.due(0, 4.25, waited=5.69)  # late and barely recovering: another step
    assert not shedder.due(0, 4.5, waited=5.1)
    assert not shedder.due(0, 5.5, waited=5.1)  # on time again
    assert not shedder.due(0, 5.75, waited=6.0)  # late again ...
    assert not shedder.due(0, 8.0, waited=6.0)  # ... but nothing came for longer than a window:
    assert not shedder.due(0, 8.5, waited=6.0)  # a new window starts, not yet over
    assert shedder.due(0, 9.0, waited=6.0)


async def test_a_step_is_sized_by_the_shortfall_it_measured() -> None:
    shedder = Shedder(after_s=1.0, lag_s=0.2)
    assert shedder.lag(0.0, backlog=0) == 0.0  # picked up as it came: the clocks agree
    assert not shedder.due(0, 0.0, waited=0.0)  # on time
    assert not shedder.due(5, 0.5, waited=0.3)  # late: a window starts
    # Over the window the wait grew by 0.3 s a second: events went out at 0.7 of the rate they came in;
    # and it reached 0.6 s, three times the bound: a third of the connections would be within it. The
    # smaller says more; the step is at most MAX_SHED_FRACTION.
    assert shedder.due(5, 1.5, waited=0.6) == MAX_SHED_FRACTION
    assert not shedder.due(5, 2.6, waited=0.1)  # (a window after the step's own)
    # By count, the wait under the bound: 4 events handed on while the buffer grew by 1, 4 of the 5.
    for t in (2.8, 3.0, 3.2):
        assert not shedder.due(5, t, waited=0.1)
    assert shedder.due(6, 3.6, waited=0.1) == pytest.approx(1 - HEADROOM * 0.8)
    assert not shedder.due(6, 4.7, waited=0.1)
    assert shedder.due(6, 5.7, waited=0.1) == SHED_FRACTION  # behind, no shortfall measured: the least step
    # The buffer empty and the wait steady at 0.25 s, over the 0.2 s bound: batches that take that long
    # to write; 0.2 / 0.25 of the connections would be within the bound.
    assert not shedder.due(0, 6.8, waited=0.25)
    assert shedder.due(0, 7.8, waited=0.25) == pytest.approx(1 - HEADROOM * 0.8)
    assert not shedder.due(0, 8.9, waited=0.5)
    assert shedder.due(0, 9.9, waited=0.5) == MAX_SHED_FRACTION  # 0.2 / 0.5: more than a step may close
    assert not shedder.due(8, 11.0, waited=9.0)
    assert shedder.due(9, 12.0, waited=20.0) == MAX_SHED_FRACTION  # stalled: a measurement can be wrong
    assert shedder.step(kept_up=1.0) == SHED_FRACTION and shedder.step(kept_up=0.99) == pytest.approx(0.208)


async def test_a_wait_that_grows_just_past_the_bound_is_sized_by_its_growth() -> None:
    shedder = Shedder(after_s=1.0, lag_s=0.5)
    assert shedder.lag(0.0, backlog=0) == 0.0
    assert not shedder.due(5, 0.5, waited=0.45)  # behind: a window starts
    # The wait grew by 0.1 s a second (0.9 of the rate handed on) to 0.55 s, just past the bound (0.5 /
    # 0.55 = 0.91 of the connections would be within it): the growth says more. The step keeps
    # HEADROOM of that share.
    assert shedder.due(5, 1.5, waited=0.55) == pytest.approx(1 - HEADROOM * 0.9)


async def test_only_an_event_picked_up_as_it_came_teaches_the_clocks_offset() -> None:
    shedder = Shedder(after_s=1.0, lag_s=0.2)
    # Written in batches, each event had waited 0.3 s when it was written, and the buffer is empty
    # after each batch: that is the node's wait, not a difference between the clocks.
    assert not shedder.due(0, 0.0, waited=0.3)
    assert shedder.due(0, 1.0, waited=0.3)
    assert shedder.offset == math.inf


async def test_without_a_fresh_event_the_wait_is_taken_as_the_clocks_say() -> None:
    shedder = Shedder(after_s=1.0, lag_s=0.2)
    assert shedder.lag(0.5, backlog=3) == 0.5  # nothing seen on time yet: no offset
    assert shedder.lag(-0.3, backlog=0) == 0.0  # this clock is behind NATS's: the offset is -0.3 s
    assert shedder.lag(0.2, backlog=3) == pytest.approx(0.5)


async def test_many_late_outboxes_shed_the_slowest_and_a_few_never_do() -> None:
    metrics = FanOutMetrics(Registry(), _Counted())
    healthy_sent: list[Any] = []

    async def healthy(message: Any) -> None:
        healthy_sent.append(message)

    conns: list[Connection] = []
    for n in range(MIN_LATE_OUTBOXES + 20):
        stuck = n < MIN_LATE_OUTBOXES  # their sockets take nothing: a second frame waits in the outbox
        conn = Connection(_never if stuck else healthy, FanOutLimits(), metrics)
        conn.subs["s"] = Subscription("s", conn, Filter(), None, order=n)
        assert conn.offer("a") and conn.offer("b")
        conns.append(conn)
    overload = Overload(conns, metrics, after_s=0.5, lag_s=0.15)
    try:
        now = time.monotonic() + 1.0  # the stuck outboxes' frames have waited a second
        overload.outboxes(now)  # a window starts
        overload.outboxes(now + 0.3)  # late all along, but not for a whole window yet
        assert metrics.shed.total() == 0
        overload.outboxes(now + 0.6)
        closed = [c for c in conns if c.close_code == 4409]
        assert len(closed) == 12 == metrics.shed.total()  # a tenth of the subscribed, ...
        assert all(conns.index(c) < MIN_LATE_OUTBOXES for c in closed)  # ... late ones only
        assert {c.close_reason for c in closed} == {REASON_SHED}
        # 88 late outboxes are left: fewer than MIN_LATE_OUTBOXES, a few slow clients, not an overload
        overload.outboxes(now + 1.2)
        overload.outboxes(now + 1.8)
        assert metrics.shed.total() == 12
    finally:
        for conn in conns:
            conn.abandon()


async def test_a_shed_step_stops_writing_at_once_and_sends_its_close_frames_a_slice_at_a_time() -> None:
    """Thousands of closes in one turn of the loop stalled it for hundreds of milliseconds: the step's
    connections get nothing more from the moment it is taken, and their close frames go a slice a turn."""
    metrics = FanOutMetrics(Registry(), _Counted())
    closes: list[int] = []

    async def stuck_until_closed(message: Any) -> None:
        if message["type"] == "websocket.close":
            closes.append(message["code"])
            return
        await asyncio.Event().wait()  # takes no frame: the second one waits in the outbox

    step = 2 * CLOSE_SLICE + 10  # three slices
    conns: list[Connection] = []
    for n in range(10 * step):  # a tenth of them is one step
        conn = Connection(stuck_until_closed, FanOutLimits(), metrics)
        conn.subs["s"] = Subscription("s", conn, Filter(), None, order=n)
        assert conn.offer("a") and conn.offer("b")
        conns.append(conn)
    overload = Overload(conns, metrics, after_s=0.5, lag_s=0.15)
    try:
        now = time.monotonic() + 1.0
        overload.outboxes(now)
        overload.outboxes(now + 0.6)
        victims = [c for c in conns if c.close_code == 4409]
        assert len(victims) == step == metrics.shed.total()
        assert not any(v.offer("c") for v in victims)  # nothing more is written to any of them
        victims[-1].abandon()  # its socket went before its slice came: no close frame for it
        await _turns(1)  # the first slice's close frames (and the second's tasks made), not all
        assert 0 < len(closes) < step - 1
        await wait_for(lambda: len(closes) == step - 1, timeout=5, what="every other close frame of the step")
        assert set(closes) == {4409}
    finally:
        for conn in conns:
            conn.abandon()


async def test_behind_with_no_subscribed_connection_closes_nothing_and_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = FanOutMetrics(Registry(), _Counted())
    idle = Connection(_never, FanOutLimits(), metrics)  # connected, not subscribed
    overload = Overload([idle], metrics, after_s=0.05, lag_s=0.01)
    stored_at = time.time() - 5.0  # every event five seconds late, a backlog that never drains
    checks = 0

    async def windows_passed() -> bool:
        nonlocal checks
        overload.check(3, stored_at)
        checks += 1
        return checks >= 20

    await wait_for(windows_passed, timeout=10, interval=0.02, what="several windows behind")
    assert metrics.shed.total() == 0 and idle.close_code is None
    assert "closed the" not in caplog.text


async def _turns(n: int) -> None:
    """Let the event loop run ``n`` turns: a future resolved by a callback queued behind what is ready."""
    loop = asyncio.get_running_loop()
    for _ in range(n):
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn


async def _never(message: Any) -> None:
    await asyncio.Event().wait()


async def test_the_victims_are_the_slowest_subscribed_connections() -> None:
    metrics = FanOutMetrics(Registry(), _Counted())
    conns = []
    for n in range(20):
        conn = Connection(_never, FanOutLimits(), metrics)
        conn.connected_at = float(n)
        conn.subs["s"] = Subscription("s", conn, Filter(), None, order=n)
        conns.append(conn)
    idle = Connection(_never, FanOutLimits(), metrics)  # no subscription: never shed
    behind = conns[3]
    assert behind.offer("a") and behind.offer("b")  # its socket takes nothing: "b" waits in the outbox
    try:
        victims = Shedder(after_s=1.0).victims(
            [idle, *conns], now=1e12, share=0.1
        )  # any "now" after the offers
        assert victims == [behind, conns[19]]  # the oldest outbox head, then the newest connection
        assert Shedder(after_s=1.0).victims([idle], now=0.0, share=0.1) == []
    finally:
        behind.abandon()


async def test_a_hole_in_the_stream_closes_every_subscribed_connection() -> None:
    metrics = FanOutMetrics(Registry(), _Counted())
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    subscribed, idle = Connection(send, FanOutLimits(), metrics), Connection(send, FanOutLimits(), metrics)
    subscribed.subs["s"] = Subscription("s", subscribed, Filter(), None, order=1)
    Overload([subscribed, idle], metrics, after_s=1.0).hole(41)
    await subscribed.closed()
    assert sent == [{"type": "websocket.close", "code": 4409, "reason": REASON_MISSED}]
    assert idle.close_code is None and metrics.holes.total() == 1


class _Counted:
    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.index: list[Subscription] = []
        self.backlog = 0
