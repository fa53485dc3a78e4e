from __future__ import annotations

import pytest

from hub.broker import BrokerError, open_nats
from tests.support import free_port, within


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
