from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop
from nats.aio.msg import Msg

from hub.broker import BrokerError, SlowConsumers, open_nats
from hub.embedded import EmbeddedNats
from tests.support import RawNats, free_port, wait_for, within


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


@pytest.mark.parametrize(
    "block",
    [
        b"NATS/1.0 \xff\xff\xff\r\n\r\n",
        b"NATS/1.0 503 \xfe\xff\r\n\r\n",
        b"NATS/1.0 100 Idle \xff\r\nX-A: 1\r\n\r\n",
    ],
    ids=["status", "description", "description-and-headers"],
)
async def test_a_header_block_that_does_not_decode_leaves_the_client_reading(servers, block: bytes) -> None:  # type: ignore[no-untyped-def]
    """nats-py's read loop stopped for good on such a block (the connection deaf, still "connected")."""
    async with open_nats(servers.nats_url, name="t") as nc, RawNats(servers.nats_url) as raw:
        sub = await nc.subscribe("t.poison")
        await nc.flush()
        await raw.publish("t.poison", block, b"poison")
        await raw.publish("t.poison", b"NATS/1.0\r\nX-Ok: 1\r\n\r\n", b"after")
        first, second = await sub.next_msg(timeout=5), await sub.next_msg(timeout=5)
    assert (first.data, first.headers, second.data, second.headers) == (
        b"poison",
        None,
        b"after",
        {"X-Ok": "1"},
    )
    assert nc.undecodable_headers == 1  # type: ignore[attr-defined]


async def test_a_server_list_connects_through_any_live_server(servers) -> None:  # type: ignore[no-untyped-def]
    dead = f"nats://127.0.0.1:{free_port()}"
    async with open_nats(f"{dead}, {servers.nats_url}", name="t", connect_timeout_s=5) as nc:
        assert nc.connected_url is not None
        assert nc.connected_url.port == int(servers.nats_url.rsplit(":", 1)[1])
        assert {s.port for s in nc.servers} >= {int(dead.rsplit(":", 1)[1])}


async def test_a_refused_list_is_named_without_its_passwords() -> None:
    urls = f"nats://hub:hunter2@127.0.0.1:{free_port()},nats://hub:hunter2@127.0.0.1:{free_port()}"
    async with within(30, what="connecting to two closed ports"):
        with pytest.raises(BrokerError) as caught:
            async with open_nats(urls, connect_timeout_s=2):
                pass
    assert "nats://hub:***@127.0.0.1:" in str(caught.value)
    assert "hunter2" not in str(caught.value)


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


def test_closing_while_the_server_is_gone_warns_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hub stopped while NATS is down (the client reconnecting, a publish pending): nats-py's close
    flushes into a closed socket, which uvloop (the hub's loop) refuses with a RuntimeError; the hub
    logs it and goes on closing the rest, rather than exiting with a traceback."""
    server = EmbeddedNats(tmp_path / "nats")
    server.__enter__()
    stopped = False
    try:

        async def scenario() -> None:
            nonlocal stopped
            async with open_nats(server.url, name="t", connect_timeout_s=5) as nc:
                server.__exit__(None, None, None)
                stopped = True
                await wait_for(lambda: not nc.is_connected, what="the client to lose the server")
                await nc.publish("tickstock.test", b"pending")

        uvloop.run(scenario())
    finally:
        if not stopped:
            server.__exit__(None, None, None)
    assert "connection lost while closing" in caplog.text
