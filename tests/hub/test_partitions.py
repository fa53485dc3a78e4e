"""Partitioned ingest: several hub nodes on one NATS, each ingest partition pulled by one node at a time, so
every symbol's events reach the clean stream in the order they were published (``hub.partitions``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from psycopg_pool import AsyncConnectionPool

from api.minting import mint_token
from api.settings import Settings
from hub.client import Delivery, HubClient, Subscription
from hub.jetstream import Topology, ensure_topology
from hub.subjects import WRITERS_SUBJECT, producer_subject
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import (
    LiveHub,
    clean_stream_messages,
    count,
    free_port,
    make_event,
    publish_events,
    publish_raw,
    stored_count,
    wait_for,
    wait_for_sync,
    wait_settled,
)

SYMBOLS = [f"P{k:03d}" for k in range(60)]


def violations(msgs: Sequence[Msg], prefix: str) -> tuple[int, int]:
    """``(events, out of order)`` among the clean-stream events ``<prefix>-<i>``: an event is out of order
    when an event of its symbol with a larger ``i`` (published later) came before it."""
    return order_violations((json.loads(msg.data) for msg in msgs), prefix)


def order_violations(events: Iterable[Mapping[str, Any]], prefix: str) -> tuple[int, int]:
    """:func:`violations` over events in the order they came (from the clean stream, or a client)."""
    last: dict[str, int] = {}
    seen = bad = 0
    for body in events:
        kind, _, number = body["id"].rpartition("-")
        if kind != prefix:
            continue
        seen += 1
        i = int(number)
        if i < last.get(body["symbol"], -1):
            bad += 1
        last[body["symbol"]] = max(i, last.get(body["symbol"], -1))
    return seen, bad


async def writers(nc: NATS, *, expect: Iterable[str] = ()) -> dict[str, list[int]]:
    """Every node's answer on ``tickstock.hub.writers``: node id -> the partitions it is pinned on. The
    answers of 0.3 s, and until every node in ``expect`` has answered (at most 10 s): a node whose loop is
    busy (an in-process hub fanning out a backlog) may answer later than that."""
    inbox = nc.new_inbox()
    answers: dict[str, list[int]] = {}
    wanted = set(expect)
    all_in = asyncio.get_running_loop().create_future()

    async def heard(msg: Msg) -> None:
        body = json.loads(msg.data)
        answers[body["node"]] = body["partitions"]
        if wanted <= answers.keys() and not all_in.done():
            all_in.set_result(None)

    sub = await nc.subscribe(inbox, cb=heard)
    await nc.publish(WRITERS_SUBJECT, b"", reply=inbox)
    await asyncio.sleep(0.3)  # the answers of whoever is there
    if wanted:
        with contextlib.suppress(TimeoutError):  # a node that never answers: the caller sees it missing
            await asyncio.wait_for(all_in, timeout=10)
    await sub.unsubscribe()
    return answers


async def publish_chains(nc: NATS, prefix: str, total: int, *, tasks: int = 4) -> None:
    """``total`` events over :data:`SYMBOLS` (``i`` rising per symbol), from ``tasks`` concurrent producers
    that each own a share of the symbols and publish in chunks."""
    js = nc.jetstream()
    events = [make_event(i, prefix=prefix, symbol=SYMBOLS[i % len(SYMBOLS)]) for i in range(total)]

    async def produce(k: int) -> None:
        mine = [e for e in events if SYMBOLS.index(str(e["symbol"])) % tasks == k]
        for start in range(0, len(mine), 200):
            await publish_events(js, mine[start : start + 200])
            await asyncio.sleep(0.01)

    await asyncio.gather(*(produce(k) for k in range(tasks)))


async def _published(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    """At least ``n`` events ``<prefix>-…`` stored and published (their clean-stream seq recorded)."""
    sql = "SELECT count(*) FROM pattern_events WHERE id LIKE %s AND stream_seq IS NOT NULL"
    return await count(pool, sql, prefix + "-%") >= n


@contextlib.asynccontextmanager
async def nodes(settings: Settings, n: int) -> AsyncIterator[list[LiveHub]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(LiveHub(settings)) for _ in range(n)]


def _node_settings(settings: Settings, **changes: object) -> Settings:
    return dataclasses.replace(settings, **{"writer_batch": 50, "ingest_partitions": 8, **changes})


class Trickle:
    """Publishes one ``<prefix>-<i>`` event per symbol every ``interval`` s while it runs: a partition is
    pinned to a node only when it has something to deliver. (The module's tests share one database:
    each its own prefix, or its events are found stored already and not published again.)"""

    def __init__(self, nc: NATS, *, prefix: str, interval: float = 0.3) -> None:
        self._js, self._interval, self.published = nc.jetstream(), interval, 0
        self._prefix = prefix
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def _run(self) -> None:
        for _ in range(1000):  # a producer, not a poll: bounded all the same (5 min)
            if self._stopping.is_set():
                return
            batch = [
                make_event(self.published + k, prefix=self._prefix, symbol=s) for k, s in enumerate(SYMBOLS)
            ]
            await publish_events(self._js, batch)
            self.published += len(batch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def __aenter__(self) -> Trickle:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stops after the round in flight (so ``published`` counts exactly what was published)."""
        self._stopping.set()
        if self._task is not None:
            await self._task


async def _shared_out(nc: NATS, n: int, partitions: int) -> dict[str, list[int]]:
    """Wait (with events trickling in) until ``n`` nodes hold every partition, none more than its share."""
    last: list[dict[str, list[int]]] = [{}]

    async def spread() -> dict[str, list[int]] | None:
        held = last[0] = await writers(nc)
        counts = [len(p) for p in held.values()]
        fair = -(-partitions // n)
        ok = len(held) == n and sum(counts) == partitions and max(counts) <= fair
        return held if ok else None

    try:
        return await wait_for(spread, timeout=60, interval=0.5, what=f"{partitions} partitions on {n} nodes")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {last[0]}") from None


async def test_a_partitioned_message_is_stored_under_its_partition_and_dead_letters_name_the_producers_subject(
    settings: Settings, ref_pool: AsyncConnectionPool, nats_client: NATS
) -> None:
    await delete_all_streams(settings.nats_url or "")
    async with LiveHub(_node_settings(settings)) as hub:
        js = hub.hub.js
        mismatch = make_event(1, prefix="psubj", symbol="MSFT")  # published under AAPL
        await publish_raw(
            js,
            [
                ("tickstock.ingest.daily.AAPL", json.dumps(mismatch).encode(), None),
                ("tickstock.ingest.daily.AAPL", json.dumps(make_event(2, prefix="psubj")).encode(), None),
            ],
        )
        await wait_for(lambda: stored_count(ref_pool, "psubj"), timeout=30, what="the good event stored")
        await wait_settled(js)
        # A producer cannot pick a partition: no stream captures the stored form.
        with pytest.raises(Exception, match="no response from stream"):
            await js.publish("tickstock.ingestp.0.daily.AAPL", b"{}", timeout=1)
    async with ref_pool.connection() as conn:
        row = await (
            await conn.execute("SELECT subject, reason FROM dead_letters WHERE event_id = 'psubj-1'")
        ).fetchone()
    assert row == {"subject": "tickstock.ingest.daily.AAPL", "reason": "subject_mismatch"}
    assert producer_subject("tickstock.ingestp.5.daily.BRK_B") == "tickstock.ingest.daily.BRK_B"
    assert producer_subject("tickstock.ingest.unparsed") == "tickstock.ingest.unparsed"


async def test_messages_stored_before_the_partitions_are_drained_first_then_the_partitions_start(
    settings: Settings, ref_pool: AsyncConnectionPool, nats_client: NATS
) -> None:
    """An upgrade: the stream holds messages under the old subjects (no transform yet); the new hub
    stores them through ``hub-writer`` before any partition writer starts, so the order holds."""
    await delete_all_streams(settings.nats_url or "")
    js = nats_client.jetstream()
    await ensure_topology(js, Topology(partitions=0))  # the stream as an older hub made it
    await publish_events(js, [make_event(i, prefix="upg", symbol=SYMBOLS[i % 5]) for i in range(1000)])
    await ensure_topology(
        js, Topology(partitions=8)
    )  # the new hub's stream: what comes now is stored in partitions
    await publish_events(js, [make_event(i, prefix="upg", symbol=SYMBOLS[i % 5]) for i in range(1000, 1300)])
    async with LiveHub(_node_settings(settings)) as hub:
        await wait_for(lambda: _published(ref_pool, "upg", 1300), timeout=60, what="1300 on the clean stream")
        await wait_settled(js)
        migrated = hub.hub.writer.migrated
        shared_batches = hub.hub.writer.shared.batches if hub.hub.writer.shared else 0
    seen, bad = violations(await clean_stream_messages(js), "upg")
    print(f"upgrade: {seen} events on the clean stream, {bad} out of per-symbol order")
    assert migrated and shared_batches > 0
    assert (seen, bad) == (1300, 0)
    assert await stored_count(ref_pool, "upg") == 1300


@pytest.mark.slow
async def test_three_nodes_share_the_partitions_and_keep_every_symbols_order(
    settings: Settings, ref_pool: AsyncConnectionPool, nats_client: NATS
) -> None:
    await delete_all_streams(settings.nats_url or "")
    total = 6000
    node = _node_settings(settings)
    js = nats_client.jetstream()
    async with LiveHub(node) as first:
        # One node alone pins every partition; two more join and are given their share.
        async with Trickle(nats_client, prefix="warm3") as trickle, contextlib.AsyncExitStack() as stack:
            await _shared_out(nats_client, 1, node.ingest_partitions)
            others = [await stack.enter_async_context(LiveHub(node)) for _ in range(2)]
            started = time.monotonic()
            held = await _shared_out(nats_client, 3, node.ingest_partitions)
            print(f"rebalanced to 3 nodes in {time.monotonic() - started:.1f} s: {sorted(held.values())}")
            await trickle.__aexit__()
            await publish_chains(nats_client, "order", total)
            await wait_for(
                lambda: _published(ref_pool, "order", total), timeout=120, what="every event published"
            )
            await wait_settled(js)
            batches = [h.hub.writer.batches for h in (first, *others)]
            stored = sum(h.hub.metrics.stored.total() for h in (first, *others))
    msgs = await clean_stream_messages(js)
    ids = [json.loads(m.data)["id"] for m in msgs]
    seen, bad = violations(msgs, "order")
    print(
        f"3 nodes, {total} events over {len(SYMBOLS)} symbols: batches per node {batches}, "
        f"{seen} published, {bad} out of per-symbol order"
    )
    assert all(b > 0 for b in batches)
    assert len(ids) == len(set(ids)) == total + trickle.published and stored == len(ids)
    assert (seen, bad) == (total, 0)
    assert await stored_count(ref_pool, "order") == total


@pytest.mark.slow
async def test_the_old_shared_consumer_loses_the_per_symbol_order_with_three_nodes(
    settings: Settings, ref_pool: AsyncConnectionPool, nats_client: NATS
) -> None:
    """The same load with ``TICKSTOCK_INGEST_PARTITIONS=0`` (one consumer shared by every node): what the
    partitions fix. Batches of one symbol are handled by different nodes at the same time."""
    await delete_all_streams(settings.nats_url or "")
    total = 6000
    js = nats_client.jetstream()
    async with nodes(_node_settings(settings, ingest_partitions=0), 3):
        await publish_chains(nats_client, "shared", total)
        await wait_for(
            lambda: _published(ref_pool, "shared", total), timeout=120, what="every event published"
        )
        await wait_settled(js)
    seen, bad = violations(await clean_stream_messages(js), "shared")
    print(f"shared consumer, 3 nodes: {seen} published, {bad} out of per-symbol order")
    assert seen == total and bad > 0


def _serve(settings: Settings) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
    env.update(
        TICKSTOCK_DATABASE_URL=settings.database_url or "",
        TICKSTOCK_NATS_URL=settings.nats_url or "",
        TICKSTOCK_REDIS_URL=settings.redis_url or "",
        TICKSTOCK_JWT_SECRET=JWT_SECRET,
        TICKSTOCK_WRITER_BATCH=str(settings.writer_batch),
        TICKSTOCK_INGEST_PARTITIONS=str(settings.ingest_partitions),
        TICKSTOCK_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for_sync(ready, timeout=60, interval=0.1, what="the hub to start")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    return proc, port


READER = mint_token(JWT_SECRET, subject="partitions-reader", scopes=["patterns:read"])


@dataclasses.dataclass
class Watcher:
    """A websocket client (``hub.client.HubClient``) of one node that resumes on the next of its URLs, and
    every delivery it handed on, in order."""

    client: HubClient
    got: list[Delivery] = dataclasses.field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _drain(self) -> None:
        async for delivery in self.client:
            self.got.append(delivery)

    def count(self, prefix: str) -> int:
        """The events ``<prefix>-…`` delivered so far (a client that gave up raises its error)."""
        if self.task is not None and self.task.done():
            self.task.result()
        return sum(d.event["id"].startswith(prefix + "-") for d in self.got)


@contextlib.asynccontextmanager
async def watchers(*plans: tuple[list[str], dict[str, Any]]) -> AsyncIterator[list[Watcher]]:
    """One :class:`Watcher` per ``(urls, filter)``, each subscribed (its answer in) when yielded."""
    async with contextlib.AsyncExitStack() as stack:
        found: list[Watcher] = []
        for urls, filter_ in plans:
            client = HubClient(
                urls, token=READER, subscriptions=[Subscription("w", filter_)], backoff_initial_s=0.05
            )
            found.append(Watcher(await stack.enter_async_context(client)))
        for w in found:
            w.task = asyncio.create_task(w._drain())
            stack.callback(w.task.cancel)
        await wait_for(
            lambda: all("w" in w.client.recovered for w in found), timeout=30, what="the clients subscribed"
        )
        yield found


async def _after(start: float, predicate: Any, what: str) -> float:
    """Seconds from ``start`` until ``predicate`` holds (polled every 0.1 s, at most 60 s)."""
    await wait_for(predicate, timeout=60, interval=0.1, what=what)
    return time.monotonic() - start


@pytest.mark.slow
async def test_kill_9_of_a_node_its_partitions_are_taken_over_and_nothing_is_lost_or_reordered(
    settings: Settings, ref_pool: AsyncConnectionPool, nats_client: NATS
) -> None:
    """Three nodes, one of them a process killed with ``kill -9`` during ingest: its partitions are
    pinned by the others, nothing is lost, duplicated or reordered; and the websocket clients it served
    (one for every event, one filtered on the symbols) resume on a survivor and receive exactly what
    the clean stream holds from their subscription on, once each, in stream order."""
    await delete_all_streams(settings.nats_url or "")
    dead_before = await count(ref_pool, "SELECT count(*) FROM dead_letters")  # earlier tests' own
    total = 6000
    node = _node_settings(settings)
    js = nats_client.jetstream()
    victim, victim_port = _serve(node)
    try:
        async with nodes(node, 2) as survivors:
            async with Trickle(nats_client, prefix="warmkill") as trickle:
                held = await _shared_out(nats_client, 3, node.ingest_partitions)
            mine = {h.hub.writer.node for h in survivors}
            lost = next(p for n, p in held.items() if n not in mine)
            fanouts = {h.hub.fanout.node for h in survivors}
            on_victim = f"ws://127.0.0.1:{victim_port}/ws"
            filters: list[dict[str, Any]] = [{}, {"symbols": SYMBOLS}]  # every event; the test's symbols
            plans = [([on_victim, f"{h.ws_url}/ws"], f) for h, f in zip(survivors, filters, strict=True)]
            async with watchers(*plans) as clients:
                assert all(w.client.node not in (None, *fanouts) for w in clients)  # on the victim
                producer = asyncio.create_task(publish_chains(nats_client, "kill", total, tasks=2))
                await wait_for(
                    lambda: _published(ref_pool, "kill", 1500), timeout=60, what="some events published"
                )
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed = time.monotonic()

                async def taken_over() -> bool:
                    now = await writers(nats_client, expect=mine)
                    return set(lost) <= {p for n, ps in now.items() if n in mine for p in ps}

                def resumed() -> bool:
                    return all(w.client.node in fanouts and w.client.state == "connected" for w in clients)

                pinned_after, resumed_after = await asyncio.gather(
                    _after(killed, taken_over, "the dead node's partitions pinned by another"),
                    _after(killed, resumed, "the victim's websocket clients connected to a survivor"),
                )
                await producer
                await wait_for(
                    lambda: _published(ref_pool, "kill", total), timeout=120, what="every event published"
                )
                settled_after = time.monotonic() - killed
                await wait_settled(js)
                await wait_for(
                    lambda: all(w.count("kill") >= total for w in clients),
                    timeout=60,
                    what=f"all {total} events at each websocket client",
                )
                shed = sum(h.hub.fanout.metrics.shed.total() for h in survivors)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    msgs = await clean_stream_messages(js)
    ids = [json.loads(m.data)["id"] for m in msgs]
    seen, bad = violations(msgs, "kill")
    print(
        f"kill -9 of a node holding partitions {lost}: pinned by another node after {pinned_after:.1f} s, "
        f"everything published {settled_after:.1f} s after the kill; {seen} published, {bad} out of order"
    )
    print(f"the survivors shed {shed:.0f} websocket connections with 4409 (overloaded; each resumed by seq)")
    stream = [(m.metadata.sequence.stream, i) for m, i in zip(msgs, ids, strict=True)]
    for w, label in zip(clients, ("every event", f"{len(SYMBOLS)} symbols"), strict=True):
        got = [(d.seq, d.event["id"]) for d in w.got]
        received, disordered = order_violations((d.event for d in w.got), "kill")
        print(
            f"websocket client of the killed node ({label}): on a survivor {resumed_after:.1f} s after the "
            f"kill, {w.client.connects - 1} reconnect(s); received {len(got)} events, {received} of the "
            f"{total} kill events, {len(got) - len({i for _, i in got})} duplicated, {disordered} out of order"
        )
        assert got and got == stream[stream.index(got[0]) :]  # from its subscription on: no gap, no extra
        assert (received, disordered) == (total, 0)
        assert w.client.connects >= 2 and w.client.node in fanouts
    assert len(ids) == len(set(ids)) == total + trickle.published
    assert (seen, bad) == (total, 0)
    assert await stored_count(ref_pool, "kill") == total
    dead = await count(ref_pool, "SELECT count(*) FROM dead_letters")
    assert dead == dead_before, await _dead_letters(ref_pool)


async def test_garbage_on_the_writers_subject_is_ignored_and_the_node_keeps_counting(
    settings: Settings, nats_client: NATS
) -> None:
    """Someone answers the presence request with garbage, or publishes to it without a reply subject:
    neither counts as a node, neither stops the rebalancing."""
    await delete_all_streams(settings.nats_url or "")

    async def garbage(msg: Msg) -> None:
        if msg.reply:
            await nats_client.publish(msg.reply, b"\xff not json")
            await nats_client.publish(msg.reply, b'{"partitions": []}')

    rogue = await nats_client.subscribe(WRITERS_SUBJECT, cb=garbage)
    try:
        async with LiveHub(_node_settings(settings)) as hub:
            await nats_client.publish(WRITERS_SUBJECT, b"no reply wanted")
            async with Trickle(nats_client, prefix="garbage"):
                await _shared_out(nats_client, 1, hub.hub.writer.partitions)
            assert hub.hub.writer.nodes == 1
    finally:
        await rogue.unsubscribe()


@pytest.mark.slow
async def test_a_node_that_stops_hands_its_partitions_over_at_once_and_the_order_holds(
    settings: Settings, ref_pool: AsyncConnectionPool, nats_client: NATS
) -> None:
    """A rolling restart's step: the stopping node finishes its batches and unpins its partitions, so the
    other is pinned on them without waiting for the pin timeout; the events go on in order."""
    await delete_all_streams(settings.nats_url or "")
    total = 4000
    node = _node_settings(settings)
    async with LiveHub(node) as stays:
        leaving = LiveHub(node)
        await leaving.__aenter__()
        try:
            async with Trickle(nats_client, prefix="warmstop") as trickle:
                held = await _shared_out(nats_client, 2, node.ingest_partitions)
            producer = asyncio.create_task(publish_chains(nats_client, "stop", total, tasks=2))
            await wait_for(
                lambda: _published(ref_pool, "stop", total // 3), timeout=60, what="a third published"
            )
        finally:
            stopped = time.monotonic()
            await leaving.__aexit__(None, None, None)
        async with Trickle(
            nats_client, prefix="warmstop2"
        ) as after:  # a partition is pinned when it has work
            await wait_for(
                lambda: _holds(nats_client, stays.hub.writer.node, node.ingest_partitions),
                timeout=30,
                interval=0.1,
                what="every partition on the node that stays",
            )
            taken_over = time.monotonic() - stopped
        await producer
        await wait_for(lambda: _published(ref_pool, "stop", total), timeout=120, what="every event published")
        await wait_settled(nats_client.jetstream())
    msgs = await clean_stream_messages(nats_client.jetstream())
    ids = [json.loads(m.data)["id"] for m in msgs]
    seen, bad = violations(msgs, "stop")
    print(
        f"a node holding {len(held) and sorted(held.values())} stopped: every partition on the other "
        f"{taken_over:.1f} s after the stop began; {seen} published, {bad} out of order"
    )
    assert len(ids) == len(set(ids)) == total + trickle.published + after.published
    assert (seen, bad) == (total, 0)


async def _holds(nc: NATS, node: str, partitions: int) -> bool:
    return len((await writers(nc)).get(node, [])) == partitions


async def _dead_letters(pool: AsyncConnectionPool) -> list[object]:
    async with pool.connection() as conn:
        return await (await conn.execute("SELECT reason, subject, detail FROM dead_letters")).fetchall()
