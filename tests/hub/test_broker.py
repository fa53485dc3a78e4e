from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from hub.broker import BrokerError, SlowConsumers, open_nats
from tests.support import free_port, wait_for, within


async def test_connects_publishes_and_drains(servers) -> None:  # type: ignore[no-untyped-def]
    async with open_nats(servers.nats_url, name="t") as nc:
        sub = await nc.subscribe("t.hello")
        await nc.publish("t.hello", b"hi")
        msg = await sub.next_msg(timeout=2)
        assert msg.data == b"hi"
    assert nc.is_closed


async def test_unreachable_server_fails_fast_with_one_clear_line() -> None:
    async with within(30, what="connecting to a closed port"):  # a deadline, not a measurement
        with pytest.raises(BrokerError, match=r"cannot connect to NATS at nats://127.0.0.1:\d+"):
            async with open_nats(f"nats://127.0.0.1:{free_port()}", connect_timeout_s=2):
                pass


async def test_a_full_pending_buffer_tells_the_subscriptions_owner(servers) -> None:  # type: ignore[no-untyped-def]
    """nats-py drops what a subscription's full pending buffer cannot take; the owner hears of each."""
    relay = SlowConsumers()
    told: list[str] = []
    gate = asyncio.Event()

    async def stuck(msg: Msg) -> None:
        await gate.wait()  # handles nothing until the burst is in

    async with open_nats(servers.nats_url, name="t", slow_consumers=relay) as nc:
        sub = await nc.subscribe("t.burst", cb=stuck, pending_msgs_limit=2)
        other = await nc.subscribe("t.other", cb=stuck, pending_msgs_limit=1)
        relay.watch(sub, lambda: told.append("burst"))
        for n in range(10):
            await nc.publish("t.burst", str(n).encode())
        await nc.flush()
        await wait_for(lambda: len(told) >= 7, timeout=10, what="drops reported")
        relay.forget(sub)
        for _ in range(5):
            await nc.publish("t.other", b"x")
        await nc.flush()
        await wait_for(lambda: relay.dropped >= len(told) + 3, timeout=10, what="unowned drops counted")
        gate.set()
        await other.unsubscribe()
    assert set(told) == {"burst"}
