"""``/socket.io/`` with the real Node.js ``socket.io-client`` (tests/socketio, installed by ``npm ci``).

Skipped without node and npm unless ``TICKSTOCK_REQUIRE_NODE`` is set (CI sets it): then it fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from api.auth import mint_token
from tests.conftest import JWT_SECRET
from tests.node import npm_installed
from tests.support import LiveHub, make_event, publish_events, within

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIENT = Path(__file__).resolve().parents[1] / "socketio"
READER = mint_token(JWT_SECRET, subject="node-reader", scopes=["patterns:read"])


@pytest.fixture(scope="module")
def client_script() -> Path:
    """tests/socketio with node_modules installed from package-lock.json (``npm ci``, once per lock)."""
    return npm_installed(CLIENT, what="the Socket.IO client check") / "client.mjs"


class NodeClient:
    """One ``node client.mjs`` process; its stdout lines are the events it got, in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[tuple[str, Any]] = []

    async def until(self, name: str, count: int = 1, *, timeout: float = 30) -> list[Any]:
        assert self.proc.stdout is not None
        async with within(timeout, what=f"{count} {name} from the node client"):
            while len(self.named(name)) < count:
                line = await self.proc.stdout.readline()
                assert line, f"the node client ended; it saw {self.seen}"
                got = json.loads(line)
                self.seen.append((got["event"], got["data"]))
        return self.named(name)

    def named(self, name: str) -> list[Any]:
        return [data for event, data in self.seen if event == name]


@pytest_asyncio.fixture(loop_scope="session")
async def node(client_script: Path, live_hub: LiveHub) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(token: str, first: str = "", payload: Any = None) -> NodeClient:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(client_script),
            live_hub.url,
            token,
            first,
            json.dumps(payload),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return NodeClient(proc)

    yield start
    for proc in procs:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_node_client_gets_exactly_the_matching_events_in_order(node: Any, live_hub: LiveHub) -> None:
    client = await node(
        READER, "subscribe", {"id": "tsla-hourly", "filter": {"symbols": ["TSLA"], "timeframes": ["hourly"]}}
    )
    (hello,) = await client.until("connection_confirmed")
    assert hello["user_id"] == "node-reader"
    (reply,) = await client.until("subscribed")
    assert reply["id"] == "tsla-hourly"
    events = [
        make_event(
            i, prefix="node", symbol=("TSLA" if i % 3 else "AMD"), timeframe=("hourly" if i % 2 else "daily")
        )
        for i in range(40)
    ]
    await publish_events(live_hub.hub.js, events)
    wanted = [e["id"] for e in events if e["symbol"] == "TSLA" and e["timeframe"] == "hourly"]
    alerts = await client.until("pattern_alert", len(wanted))
    assert [a["event"]["data"]["id"] for a in alerts] == wanted
    assert all(a["type"] == "pattern_alert" and a["subs"] == ["tsla-hourly"] for a in alerts)
    assert all(a["event"]["data"]["symbol"] == "TSLA" for a in alerts)


async def test_node_client_with_upstreams_subscribe_patterns(node: Any, live_hub: LiveHub) -> None:
    client = await node(READER, "subscribe_patterns", {"patterns": ["engulfing"]})
    (confirmed,) = await client.until("subscription_confirmed")
    assert confirmed["patterns"] == ["engulfing"] and confirmed["count"] == 1
    events = [make_event(i, prefix="nodeup", pattern=("engulfing" if i % 2 else "doji")) for i in range(12)]
    await publish_events(live_hub.hub.js, events)
    alerts = await client.until("pattern_alert", 6)
    assert [a["event"]["data"]["id"] for a in alerts] == [
        e["id"] for e in events if e["pattern"] == "engulfing"
    ]


@pytest.mark.parametrize(("token", "code"), [("", 4401), ("junk", 4401)])
async def test_node_client_with_a_bad_token_is_refused(node: Any, token: str, code: int) -> None:
    client = await node(token)
    (refused,) = await client.until("connect_error")
    assert refused["data"] == {"code": code}
    assert "connection_confirmed" not in [event for event, _ in client.seen]
