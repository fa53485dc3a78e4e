"""The byte-bounded pull fetch, against a real stream and durable pull consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from hub.jetstream import add_stream
from hub.pull import Puller
from tests.conftest import Servers
from tests.support import TcpProxy, wait_for, within

STREAM = "PULL_TEST"
CONSUMER = "puller"
SUBJECT = "pulltest.items"
KB = 1000


@pytest_asyncio.fixture(loop_scope="session")
async def js(jetstream: JetStreamContext) -> AsyncIterator[JetStreamContext]:
    """A fresh stream with one durable, explicitly acknowledged pull consumer."""
    await add_stream(jetstream, StreamConfig(name=STREAM, subjects=["pulltest.>"], max_msg_size=1 << 20))
    await jetstream.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_waiting=16),
    )
    yield jetstream


def _puller(nc: NATS, max_bytes: int = 1 << 20) -> Puller:
    return Puller(nc, stream=STREAM, consumer=CONSUMER, max_bytes=max_bytes)


async def _publish(js: JetStreamContext, *payloads: bytes) -> None:
    for payload in payloads:
        await js.publish(SUBJECT, payload)


async def _fetch_requested(
    spy_nc: NATS, puller: Puller, batch: int, *, timeout: float
) -> tuple[asyncio.Task[list[Msg]], Msg]:
    """Start ``puller.fetch(batch, timeout=timeout)`` and return its task once the server has been sent its
    pull request (seen by a spy on ``spy_nc``: a barrier, not a sleep), with that request."""
    spy = await spy_nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}")
    try:
        await spy_nc.flush()
        fetching = asyncio.create_task(puller.fetch(batch, timeout=timeout))
        request = await spy.next_msg(timeout=10)
    finally:
        await spy.unsubscribe()
    return fetching, request


async def _ack_all(msgs: list[Msg]) -> None:
    for msg in msgs:
        await msg.ack_sync()


async def test_fetch_returns_up_to_batch_in_stream_order_without_waiting_for_more(
    js: JetStreamContext, nats_client: NATS
) -> None:
    await _publish(js, *(f"m{i}".encode() for i in range(7)))
    async with _puller(nats_client) as puller, within(10, what="two fetches of messages already stored"):
        # Were a fetch to hold what it has until its timeout (30 s), the deadline (10 s) would fail it.
        first = await puller.fetch(5, timeout=30)
        second = await puller.fetch(5, timeout=30)
    assert [m.data for m in first] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [m.data for m in second] == [b"m5", b"m6"]
    assert all(m.subject == SUBJECT for m in first + second)
    assert [m.metadata.sequence.stream for m in first + second] == list(range(1, 8))


async def test_acked_messages_are_done_and_unacked_come_back(js: JetStreamContext, nats_client: NATS) -> None:
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=1, max_waiting=16),
    )  # an update: ack_wait 1 s
    await _publish(js, b"a", b"b", b"c")
    async with _puller(nats_client) as puller:
        msgs = await puller.fetch(3, timeout=2)
        assert len(msgs) == 3
        await msgs[0].ack_sync()
        await msgs[2].ack_sync()
        info = await js.consumer_info(STREAM, CONSUMER)
        assert info.num_ack_pending == 1
        assert info.ack_floor.stream_seq == 1
        again = await puller.fetch(3, timeout=3)  # after ack_wait, only the one left unacked
        assert [m.data for m in again] == [b"b"]
        assert again[0].metadata.num_delivered == 2
        await _ack_all(again)
        assert await puller.fetch(3, timeout=0.3) == []
    info = await js.consumer_info(STREAM, CONSUMER)
    assert (info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq) == (0, 0, 3)


async def test_a_fetch_is_bounded_in_bytes_but_never_empty_while_messages_remain(
    js: JetStreamContext, nats_client: NATS
) -> None:
    payloads = [bytes([65 + i]) * (100 * KB) for i in range(8)]
    await _publish(js, *payloads)
    got: list[bytes] = []
    sizes: list[int] = []
    async with _puller(nats_client, max_bytes=250 * KB) as puller:
        while len(got) < len(payloads):
            msgs = await puller.fetch(10, timeout=2)
            assert msgs, f"an empty fetch with {len(payloads) - len(got)} messages left"
            sizes.append(len(msgs))
            got += [m.data for m in msgs]
            await _ack_all(msgs)
        assert await puller.fetch(10, timeout=0.2) == []
    assert got == payloads
    assert max(sizes) <= 3 and len(sizes) >= 3


async def test_an_empty_stream_gives_an_empty_list_after_about_the_timeout(
    js: JetStreamContext, nats_client: NATS
) -> None:
    async with _puller(nats_client) as puller:
        for timeout in (0.2, 0.6):
            started = time.monotonic()
            async with within(timeout + 10, what="a fetch on an empty stream"):
                assert await puller.fetch(10, timeout=timeout) == []
            elapsed = time.monotonic() - started
            assert elapsed >= timeout * 0.8, elapsed  # hygiene: ok - a lower bound: load only lengthens it


async def test_a_fetch_waits_for_the_first_message(js: JetStreamContext, nats_client: NATS) -> None:
    async with _puller(nats_client) as puller:
        fetching, _ = await _fetch_requested(nats_client, puller, 10, timeout=30)
        assert not fetching.done()  # the request is out and the stream is empty
        await _publish(js, b"late")
        async with within(
            10, what="the fetch after the message arrived"
        ):  # delivered on arrival, not at 30 s
            msgs = await fetching
    assert [m.data for m in msgs] == [b"late"]


async def test_messages_delivered_after_a_fetch_gave_up_are_returned_by_the_next(
    js: JetStreamContext, nats_client: NATS
) -> None:
    async with _puller(nats_client) as puller:
        # The caller gives up (its own deadline, or a shutdown) while the server still holds the request.
        gave_up, _ = await _fetch_requested(nats_client, puller, 5, timeout=10)
        gave_up.cancel()
        await asyncio.gather(gave_up, return_exceptions=True)
        await _publish(js, b"x", b"y", b"z")

        async def handed_over() -> bool:  # to the old request
            return (await js.consumer_info(STREAM, CONSUMER)).num_ack_pending > 0

        await wait_for(handed_over, timeout=10, interval=0.02, what="a delivery to the abandoned request")
        # Were the first one lost in a dropped inbox, it would come back only after ack_wait (30 s).
        async with within(20, what="the three messages"):
            first = await puller.fetch(5, timeout=10)
            got = list(first)
            while len(got) < 3:
                got += await puller.fetch(5, timeout=10)
        assert first and first[0].data == b"x"
        assert [m.data for m in got] == [b"x", b"y", b"z"]
        await _ack_all(got)
        info = await js.consumer_info(STREAM, CONSUMER)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_a_stale_status_reply_is_not_returned_as_a_message(
    js: JetStreamContext, nats_client: NATS
) -> None:
    async with _puller(nats_client) as puller:
        gave_up = asyncio.create_task(puller.fetch(5, timeout=0.2))
        await asyncio.sleep(0.05)
        gave_up.cancel()
        await asyncio.gather(gave_up, return_exceptions=True)
        await asyncio.sleep(0.5)  # the server's "408 Request Timeout" for that request arrives meanwhile
        await _publish(js, b"real-1", b"real-2")
        msgs = await puller.fetch(5, timeout=2)
    assert [m.data for m in msgs] == [b"real-1", b"real-2"]
    assert all(m.reply.startswith("$JS.ACK.") for m in msgs)
    await _ack_all(msgs)


async def _raw_publish(url: str, subject: str, header_block: bytes) -> None:
    """Publish a message with a raw header block (the only way to send an inline status line)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        await reader.readline()  # INFO
        size = len(header_block)
        writer.write(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
            + f"HPUB {subject} {size} {size}\r\n".encode()
            + header_block
            + b"\r\nPING\r\n"
        )
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"PONG")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_idle_heartbeat_is_skipped_and_the_fetch_keeps_waiting(
    js: JetStreamContext, nats_client: NATS, servers: Servers
) -> None:
    async with _puller(nats_client) as puller:
        fetching, request = await _fetch_requested(nats_client, puller, 1, timeout=30)
        await _raw_publish(servers.nats_url, request.reply, b"NATS/1.0 100 Idle Heartbeat\r\n\r\n")
        # The server has routed the heartbeat (it answered the PING after it), so the message below reaches
        # the inbox after it: order, not a sleep, shows that the fetch did not end on the heartbeat.
        await _publish(js, b"after-heartbeat")
        async with within(10, what="the fetch after the heartbeat and a message"):
            msgs = await fetching
    assert [m.data for m in msgs] == [b"after-heartbeat"], "the fetch ended on a heartbeat"
    await _ack_all(msgs)


async def test_leaving_after_the_connection_closed_is_quiet(js: JetStreamContext, servers: Servers) -> None:
    nc = NATS()
    await nc.connect(servers.nats_url)
    async with _puller(nc) as puller:
        await _publish(js, b"one")
        assert [m.data for m in await puller.fetch(1, timeout=2)] == [b"one"]
        await nc.close()


async def test_a_missing_consumer_is_an_error_not_an_empty_fetch(
    js: JetStreamContext, nats_client: NATS
) -> None:
    version = nats_client.connected_server_version
    if (version.major, version.minor) < (2, 10):
        pytest.skip(f"nats-server {version} answers a pull for a missing consumer like an empty one")
    await js.delete_consumer(STREAM, CONSUMER)
    async with _puller(nats_client) as puller:
        # No answer is known at once: nothing to wait for (waiting out the 30 s would fail the deadline).
        async with within(10, what="a fetch from a missing consumer"):
            with pytest.raises(NoRespondersError):
                await puller.fetch(10, timeout=30)
        await js.add_consumer(STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT))
        await _publish(js, b"back")
        msgs = await puller.fetch(10, timeout=2)  # the same puller works once the consumer is back
    assert [m.data for m in msgs] == [b"back"]


async def test_an_answer_lost_with_the_connection_gives_an_empty_fetch_after_the_timeout(
    js: JetStreamContext, servers: Servers
) -> None:
    parts = urlsplit(servers.nats_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 4222) as proxy:
        nc = NATS()
        await nc.connect(f"nats://127.0.0.1:{proxy.port}", reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        try:
            async with _puller(nc) as puller:
                fetching = asyncio.create_task(puller.fetch(10, timeout=0.5))
                await asyncio.sleep(0.1)
                await proxy.cut()  # the request is out; its answer can no longer come back
                async with within(10, what="the fetch whose answer was lost"):
                    assert await fetching == []
                await proxy.restore()
                await _publish(js, b"after-outage")

                async def fetched() -> list[Msg]:  # once the client reconnects and resubscribes its inbox
                    return await puller.fetch(10, timeout=0.5)

                got = await wait_for(
                    fetched, timeout=30, interval=0, what="a fetch after the connection came back"
                )
                assert [m.data for m in got] == [b"after-outage"]
                await _ack_all(got)
        finally:
            await nc.close()


PINNED = "pinned"


async def _pinned_consumer(
    js: JetStreamContext, nc: NATS, *, ack_wait_s: float, pin_timeout_s: float
) -> None:
    """A durable pull consumer with a pinned-client priority group (raw: nats-py's ConsumerConfig has none)."""
    import json

    config = {
        "durable_name": PINNED,
        "ack_policy": "explicit",
        "ack_wait": int(ack_wait_s * 1e9),
        "priority_groups": ["hub"],
        "priority_policy": "pinned_client",
        "priority_timeout": int(pin_timeout_s * 1e9),
    }
    reply = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{STREAM}.{PINNED}",
        json.dumps({"stream_name": STREAM, "config": config}).encode(),
        timeout=5,
    )
    assert "error" not in json.loads(reply.data), reply.data


async def _first_nonempty(puller: Puller, batch: int) -> list[Msg]:
    got: list[Msg] = []

    async def fetched() -> bool:
        got.extend(await puller.fetch(batch, timeout=0.3))
        return bool(got)

    await wait_for(fetched, timeout=30, interval=0.05, what="a fetch that brings messages")
    return got


async def test_a_pinned_puller_learns_from_a_423_that_its_pin_went_to_another(
    js: JetStreamContext, nats_client: NATS
) -> None:
    from hub.jetstream import PIN_GROUP

    await _pinned_consumer(js, nats_client, ack_wait_s=30, pin_timeout_s=30)
    await _publish(js, b"1", b"2")
    async with (
        Puller(nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group=PIN_GROUP) as a,
        Puller(nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group=PIN_GROUP) as b,
    ):
        first = await a.fetch(1, timeout=2)
        assert [m.data for m in first] == [b"1"] and a.pin and a.fences == 1
        await first[0].ack()
        assert await b.fetch(1, timeout=0.3) == []  # a holds the pin: b's request waits and expires
        await nats_client.request(f"$JS.API.CONSUMER.UNPIN.{STREAM}.{PINNED}", b'{"group": "hub"}', timeout=5)
        second = await _first_nonempty(b, 1)
        assert [m.data for m in second] == [b"2"] and b.pin and b.pin != a.pin
        await _publish(js, b"3")
        assert await a.fetch(1, timeout=1) == [] and a.pin is None  # 423: the next request asks afresh


async def test_a_fresh_pin_holds_newer_messages_until_the_dead_holders_come_back_then_all_in_order(
    js: JetStreamContext, nats_client: NATS
) -> None:
    """The holder took 1 and 2 and died: the next node is pinned and given 3-5 at once, but returns
    nothing until 1 and 2 are redelivered to it (ack wait), then 1-5 in stream order."""
    await _pinned_consumer(js, nats_client, ack_wait_s=1.5, pin_timeout_s=0.5)
    await _publish(js, b"1", b"2", b"3", b"4", b"5")
    async with Puller(nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group="hub") as dead:
        assert [m.data for m in await dead.fetch(2, timeout=2)] == [b"1", b"2"]
    async with Puller(nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group="hub") as heir:
        msgs = await _first_nonempty(heir, 10)
        assert [m.data for m in msgs] == [b"1", b"2", b"3", b"4", b"5"]
        assert [m.metadata.num_delivered for m in msgs] == [2, 2, 1, 1, 1]
        assert heir.fences == 1


async def test_a_delivery_lost_on_its_way_to_the_pinned_puller_is_awaited_before_anything_newer(
    js: JetStreamContext, nats_client: NATS
) -> None:
    """The pin stays, but one answer never reached the puller (the connection to its server died with
    it in flight): the server counts 2 as delivered and gives 3-5 to the next request at once. The gap in
    the consumer's delivery sequence fences that fetch: nothing until 2 comes back (ack wait), then 2-5
    in stream order."""
    import json

    await _pinned_consumer(js, nats_client, ack_wait_s=1.5, pin_timeout_s=30)
    await _publish(js, b"1", b"2", b"3", b"4", b"5")
    async with Puller(nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group="hub") as puller:
        first = await puller.fetch(1, timeout=2)
        assert [m.data for m in first] == [b"1"] and puller.pin and puller.fences == 1
        await first[0].ack_sync()
        # The lost answer: a request under the puller's pin whose reply goes where nobody reads it.
        void = nats_client.new_inbox()

        async def drop(msg: Msg) -> None:
            pass

        dropped = await nats_client.subscribe(void, cb=drop)
        request = {"batch": 1, "group": "hub", "id": puller.pin, "expires": int(2e9)}
        await nats_client.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{PINNED}", json.dumps(request).encode(), reply=void
        )

        async def delivered() -> bool:
            return (await js.consumer_info(STREAM, PINNED)).num_ack_pending == 1

        await wait_for(delivered, timeout=10, interval=0.02, what="2 delivered to the lost request")
        await dropped.unsubscribe()
        msgs = await _first_nonempty(puller, 10)
    assert [m.data for m in msgs] == [b"2", b"3", b"4", b"5"]
    assert [m.metadata.num_delivered for m in msgs] == [2, 1, 1, 1]
    assert puller.fences == 2


async def test_late_acks_of_messages_held_again_do_not_end_a_fence_while_the_old_holder_has_more(
    js: JetStreamContext, nats_client: NATS
) -> None:
    """The old holder took 1-2, then 3-4, and stalled: 1-2 ran out of ack wait and were redelivered to the
    heir, then the old holder finished them after all and acknowledged them late, while it still held 3-4
    (kept alive). The pending count (3-6) then equals what the heir holds (1, 2, 5, 6): without knowing 1-2
    are settled, the fence would hand out 5-6 before 3-4. With ``settled``, 1-2 are acknowledged and dropped,
    and the heir returns 3-6 once 3-4 come back."""
    await _pinned_consumer(js, nats_client, ack_wait_s=1.5, pin_timeout_s=0.5)
    await _publish(js, b"1", b"2", b"3", b"4", b"5", b"6")
    done: set[bytes] = set()
    rounds = 0

    async def settled(msgs: Sequence[Msg]) -> set[int]:  # stands for the store's "already published"
        return {m.metadata.sequence.stream for m in msgs if m.data in done}

    async def counted(msg: Msg) -> None:  # each fence round reads the consumer's pending count
        nonlocal rounds
        rounds += 1

    spy = await nats_client.subscribe(f"$JS.API.CONSUMER.INFO.{STREAM}.{PINNED}", cb=counted)

    async with Puller(nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group="hub") as old:
        first = await old.fetch(2, timeout=2)
        second = await old.fetch(2, timeout=2)
    assert [m.data for m in first + second] == [b"1", b"2", b"3", b"4"]

    async def keep_alive() -> None:  # the old holder is slow, not dead: 3-4 stay in its hands
        while True:  # hygiene: ok - keeps 3-4 in the old holder's hands until cancelled; not a poll
            for msg in second:
                await msg.in_progress()
            await asyncio.sleep(0.3)

    alive = asyncio.create_task(keep_alive())
    try:
        async with Puller(
            nats_client, stream=STREAM, consumer=PINNED, max_bytes=1 << 20, group="hub", settled=settled
        ) as heir:
            fetching = asyncio.create_task(_first_nonempty(heir, 10))

            async def redelivered() -> bool:  # 1-2 ran out of ack wait and went to the heir
                return (await js.consumer_info(STREAM, PINNED)).num_redelivered >= 2

            await wait_for(redelivered, timeout=20, interval=0.05, what="1 and 2 redelivered to the heir")
            done.update(m.data for m in first)  # published (as the store would say) before the acks
            for msg in first:  # the old holder's late acknowledgements
                await msg.ack_sync()
            seen = rounds
            # Two more rounds: the count the fence reads now matches what it holds; it must hold on.
            await wait_for(
                lambda: rounds >= seen + 2 or fetching.done(),
                timeout=20,
                interval=0.02,
                what="two fence rounds",
            )
            assert not fetching.done(), [m.data for m in fetching.result()]
            alive.cancel()  # the old holder dies: 3-4 come back after their ack wait
            msgs = await fetching
    finally:
        alive.cancel()
        await spy.unsubscribe()
    assert [m.data for m in msgs] == [b"3", b"4", b"5", b"6"]
    assert [m.metadata.num_delivered for m in msgs] == [2, 2, 1, 1]
    assert (await js.consumer_info(STREAM, PINNED)).num_ack_pending == 4  # 1-2 acknowledged, for good


def test_the_clean_publish_goes_out_in_segments_of_distinct_symbols_in_batch_order() -> None:
    from hub.clean_publish import segments
    from hub.model import PatternEvent
    from tests.support import make_event

    symbols = ["A", "B", "A", "A", "C", "B"]
    events = [PatternEvent.model_validate(make_event(i, symbol=s)) for i, s in enumerate(symbols)]
    assert segments(events) == [[0, 1], [2], [3, 4, 5]]
    assert segments([]) == []
