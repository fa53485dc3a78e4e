"""``/ws`` end to end: a live hub, real websockets, events published to ingest over NATS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.server import ServerProtocol

from api.auth import mint_token
from api.settings import Settings
from api.wsproto import LeanProtocol
from hub.client import Delivery, HubClient, HubClientError, Subscription
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import LiveHub, make_event, publish_events, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

READER = mint_token(JWT_SECRET, subject="ws-reader", scopes=["patterns:read"])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hub(settings: Settings) -> AsyncIterator[LiveHub]:
    """A hub with short timeouts and small bounds, so the tests can reach them."""
    await delete_all_streams(settings.nats_url or "")
    tuned = replace(
        settings,
        ws_auth_timeout_s=1.0,
        ws_ping_interval_s=0.4,
        ws_idle_timeout_s=2.5,
        ws_queue_messages=100,
        ws_queue_age_s=3.0,
        ws_ring_size=50,
        ws_resume_max=5_000,
        ws_max_subscriptions=5,
        rate_limit_per_s=0,
    )
    async with LiveHub(tuned) as live:
        yield live


class Peer:
    """A raw websocket on the hub that reads frames in the background."""

    def __init__(self, ws: ClientConnection, *, answer_pings: bool) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if self.answer_pings and frame["op"] == "ping":
                    await self.ws.send('{"op":"pong"}')
                    continue
                self.frames.append(frame)
                self._new.set()
        except websockets.exceptions.ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self._new.set()

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def op(self, op: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first frame (received or to come) with this op and fields; it is removed from ``frames``."""
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames:
                    if frame.get("op") == op and all(frame.get(k) == v for k, v in match.items()):
                        self.frames.remove(frame)
                        return frame
                if self.close_code is not None:
                    raise AssertionError(
                        f"closed ({self.close_code}) before a {op!r} frame; "
                        f"got {len(self.frames)} frames, the last: {self.frames[-3:]}"
                    )
                self._new.clear()
                await self._new.wait()

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["op"] == "event"]

    async def closed(self, timeout: float = 10.0) -> int | None:
        async with asyncio.timeout(timeout):
            await self._reader
        return self.close_code

    async def aclose(self) -> None:
        await self.ws.close()
        await self._reader


@pytest_asyncio.fixture(loop_scope="session")
async def connect(hub: LiveHub) -> AsyncIterator[Any]:
    peers: list[Peer] = []

    async def open_peer(
        token: str | None = READER, *, header: bool = False, welcome: bool = True, answer_pings: bool = True
    ) -> Peer:
        url = f"{hub.ws_url}/ws"
        headers = {}
        if token and header:
            headers["Authorization"] = f"Bearer {token}"
        elif token:
            url += f"?token={token}"
        peer = Peer(
            await websockets.connect(url, additional_headers=headers, ping_interval=None),
            answer_pings=answer_pings,
        )
        peers.append(peer)
        if token and welcome:
            await peer.op("welcome")
        return peer

    yield open_peer
    for peer in peers:
        await peer.aclose()


async def publish(hub: LiveHub, events: list[dict[str, Any]]) -> None:
    await publish_events(hub.hub.js, events)


async def subscribe(
    peer: Peer, sub_id: str, since: int | None = None, *, timeout: float = 10.0, **filter_: Any
) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "subscribe", "id": sub_id, "filter": filter_}
    if since is not None:
        frame["since"] = since
    await peer.send(frame)
    return await peer.op("subscribed", timeout=timeout, id=sub_id)


async def received(peer: Peer, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        events = peer.events()
        return events if len(events) >= n else None

    try:
        return await wait_for(enough, timeout=timeout, what=f"{n} events")
    except AssertionError as exc:  # say where it stopped
        raise AssertionError(f"{exc}; it has {len(peer.events())}, close code {peer.close_code}") from None


async def before_marker(
    hub: LiveHub, peers: list[Peer], marker: dict[str, Any]
) -> list[list[dict[str, Any]]]:
    """Publish ``marker`` (an event every peer's filters match) after everything else, wait until each
    peer has it, and return each peer's event frames before it. The hub delivers in stream order, so an
    event that has not arrived before the marker will not arrive: a barrier, not a sleep."""
    await publish(hub, [marker])

    async def marked(peer: Peer) -> list[dict[str, Any]] | None:
        ids = [f["event"]["id"] for f in peer.events()]
        return peer.events()[: ids.index(marker["id"])] if marker["id"] in ids else None

    return [
        await wait_for(lambda peer=peer: marked(peer), timeout=15, what=f"the marker {marker['id']}")
        for peer in peers
    ]


# -- authentication -------------------------------------------------------------------------------


async def test_a_token_in_the_query_or_the_header_gets_a_welcome(connect: Any, hub: LiveHub) -> None:
    for header in (False, True):
        peer = await connect(header=header, welcome=False)
        welcome = await peer.op("welcome")
        assert welcome["subject"] == "ws-reader"
        assert welcome["node"] == hub.hub.fanout.node
        assert welcome["limits"]["max_subscriptions"] == 5


async def test_an_auth_message_authenticates_and_ops_before_it_are_refused(connect: Any) -> None:
    peer = await connect(None)
    await peer.send({"op": "subscribe", "id": "a", "filter": {}})
    error = await peer.op("error")
    assert error["code"] == "unauthenticated" and error["id"] == "a"
    await peer.send({"op": "ping", "ts": 7})
    assert (await peer.op("pong"))["ts"] == 7
    await peer.send({"op": "auth", "token": READER})
    assert (await peer.op("welcome"))["subject"] == "ws-reader"
    await peer.send({"op": "auth", "token": READER})
    assert (await peer.op("error"))["code"] == "invalid"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("not-a-jwt", 4401),
        (mint_token("another-secret-entirely-32-bytes!", subject="x", scopes=["patterns:read"]), 4401),
        (mint_token(JWT_SECRET, subject="x", scopes=["patterns:write"]), 4403),
    ],
)
async def test_a_bad_token_or_a_missing_scope_closes_with_its_code(
    connect: Any, token: str, code: int
) -> None:
    peer = await connect(token, welcome=False)
    assert await peer.closed() == code


async def test_no_token_within_the_auth_timeout_closes_with_4401(connect: Any) -> None:
    peer = await connect(None)
    assert await peer.closed(timeout=5) == 4401


async def test_a_token_that_expires_unrefreshed_closes_with_4401(connect: Any) -> None:
    peer = await connect(mint_token(JWT_SECRET, subject="ws-reader", scopes=["patterns:read"], ttl_s=1))
    assert await peer.closed(timeout=5) == 4401
    assert "expired" in (peer.ws.close_reason or "")


async def test_refresh_replaces_the_token_for_the_same_subject_only(connect: Any) -> None:
    peer = await connect(
        mint_token(JWT_SECRET, subject="ws-reader", scopes=["patterns:read"], ttl_s=2), answer_pings=False
    )
    await peer.send(
        {"op": "refresh", "token": mint_token(JWT_SECRET, subject="someone-else", scopes=["patterns:read"])}
    )
    assert (await peer.op("error"))["code"] == "forbidden"
    await peer.send({"op": "refresh", "token": "junk"})
    assert (await peer.op("error"))["code"] == "unauthenticated"
    await peer.send(
        {"op": "refresh", "token": mint_token(JWT_SECRET, subject="ws-reader", scopes=["patterns:write"])}
    )
    assert (await peer.op("error"))["code"] == "forbidden"
    await peer.send({"op": "refresh", "token": READER})
    refreshed = await peer.op("refreshed")
    assert refreshed["expires_at"] > 3000
    for _ in range(8):  # 8 pings of 0.4 s: past the first token's expiry, and still open
        await peer.op("ping", timeout=5)
        await peer.send({"op": "pong"})
    await peer.send({"op": "ping"})
    await peer.op("pong")


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('{"id": "x"}', "bad_frame"),
        (b"\x00\x01", "bad_frame"),
        ({"op": "bogus"}, "unknown_op"),
        ({"op": "subscribe", "id": "x", "filter": {}, "extra": 1}, "invalid"),
        ({"op": "subscribe", "id": "", "filter": {}}, "invalid"),
        ({"op": "subscribe", "id": "x", "filter": {}, "since": -1}, "invalid"),
        ({"op": "subscribe", "id": "x", "filter": {"timeframes": ["2min"]}}, "invalid_filter"),
        ({"op": "subscribe", "id": "x", "filter": {"confidence_min": 85}}, "invalid_filter"),
        ({"op": "subscribe", "id": "x", "filter": {"colour": "red"}}, "invalid_filter"),
        ({"op": "subscribe", "id": "x", "filter": {"universes": ["no-such-universe"]}}, "invalid_filter"),
        ({"op": "subscribe", "id": "x", "filter": {"patterns": ["not a real pattern"]}}, "invalid_filter"),
        ({"op": "subscribe", "id": "x", "filter": {"symbols": ["not a symbol!"]}}, "invalid_filter"),
        ({"op": "unsubscribe", "id": "never"}, "unknown_subscription"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_usable(
    connect: Any, frame: dict[str, Any] | str | bytes, code: str
) -> None:
    peer = await connect()
    await peer.send(frame)
    error = await peer.op("error")
    assert error["code"] == code, error
    assert error["message"]
    await peer.send({"op": "ping", "ts": 1})
    assert (await peer.op("pong"))["ts"] == 1


async def test_a_frame_over_the_limit_closes_with_1009(connect: Any) -> None:
    peer = await connect()
    await peer.send(json.dumps({"op": "ping", "ts": "x" * 70_000}))
    assert await peer.closed() == 1009


async def test_the_subscription_limit_holds_and_replacing_an_id_does_not_count(connect: Any) -> None:
    peer = await connect()
    for i in range(5):
        await subscribe(peer, f"s{i}", symbols=["AAPL"])
    await subscribe(peer, "s0", symbols=["MSFT"])  # a replacement
    await peer.send({"op": "subscribe", "id": "s5", "filter": {}})
    assert (await peer.op("error", id="s5"))["code"] == "too_many_subscriptions"
    await peer.send({"op": "unsubscribe", "id": "s1"})
    await peer.op("unsubscribed", id="s1")
    await subscribe(peer, "s5")


# -- delivery -------------------------------------------------------------------------------------


async def test_each_client_gets_exactly_what_its_filter_matches_in_order_once(
    connect: Any, hub: LiveHub
) -> None:
    """A brute-force oracle over mixed filters: symbols, a universe, pattern aliases, timeframes,
    types and confidence, with several subscriptions per connection."""
    rng = random.Random(7)
    symbols = ["AAPL", "MSFT", "JPM", "XOM", "BRK.B", "ZZZT"]  # ZZZT: in no index
    patterns = ["hammer", "doji", "engulfing"]
    filters = [
        {},
        {"symbols": ["AAPL"]},
        {"symbols": ["BRK.B", "xom"]},
        {"universes": ["dow30"]},
        {"universes": ["sp500"], "patterns": ["Hammer"]},
        {"patterns": ["CDLDOJI"], "confidence_min": 0.5},
        {"timeframes": ["hourly"]},
        {"types": ["pattern_expired"]},
        {
            "symbols": ["ZZZT"],
            "universes": ["dow30"],
            "timeframes": ["daily", "hourly"],
            "confidence_min": 0.3,
        },
    ]
    peers = []
    for _ in range(12):
        peer = await connect()
        chosen = rng.sample(range(len(filters)), k=rng.choice((1, 2)))
        for k in chosen:
            await subscribe(peer, f"f{k}", **filters[k])
        await subscribe(peer, "mark", symbols=["ZZMK"])  # matches the closing marker only
        peers.append((peer, chosen))
    members = {}
    async with hub.hub.pool.connection() as db:
        for key in ("dow30", "sp500"):
            cur = await db.execute("SELECT symbol FROM universe_members WHERE universe = %s", (key,))
            members[key] = {r["symbol"] for r in await cur.fetchall()}
    events = [
        make_event(
            i,
            prefix="oracle",
            symbol=rng.choice(symbols),
            pattern=rng.choice(patterns),
            timeframe=rng.choice(("daily", "hourly")),
            confidence=rng.choice((0.2, 0.4, 0.6, 0.9)),
            type=rng.choice(("pattern_detected", "pattern_expired")),
        )
        for i in range(300)
    ]
    await publish(hub, events)

    canonical = {"Hammer": "hammer", "CDLDOJI": "doji"}

    def matches(f: dict[str, Any], e: dict[str, Any]) -> bool:
        wanted = {s.upper() for s in f.get("symbols", [])} | set().union(
            *(members[u] for u in f.get("universes", []))
        )
        return (
            ((not f.get("symbols") and not f.get("universes")) or e["symbol"] in wanted)
            and (not f.get("patterns") or e["pattern"] in {canonical.get(p, p) for p in f["patterns"]})
            and (not f.get("timeframes") or e["timeframe"] in f["timeframes"])
            and (not f.get("types") or e["type"] in f["types"])
            and e["confidence"] >= f.get("confidence_min", 0)
        )

    marked = await before_marker(
        hub, [peer for peer, _ in peers], make_event(0, prefix="oracle-mark", symbol="ZZMK")
    )
    for (_peer, chosen), got in zip(peers, marked, strict=True):
        expected = [(e["id"], sorted(f"f{k}" for k in chosen if matches(filters[k], e))) for e in events]
        expected = [(i, subs) for i, subs in expected if subs]
        assert [(f["event"]["id"], sorted(f["subs"])) for f in got] == expected
        seqs = [f["seq"] for f in got]
        assert seqs == sorted(set(seqs))


async def test_my_universe_is_followed_when_the_user_changes_it(connect: Any, hub: LiveHub) -> None:
    token = mint_token(JWT_SECRET, subject="follower", scopes=["patterns:read", "universe:write"])
    async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert (
            await http.put("/api/users/universe", json={"symbols": ["AAPL"], "universe_keys": []})
        ).status_code == 200
        peer = await connect(token)
        await subscribe(peer, "mine", universes=["my"])
        await publish(
            hub, [make_event(1, prefix="my-a", symbol="AAPL"), make_event(2, prefix="my-a", symbol="MSFT")]
        )
        assert [f["event"]["symbol"] for f in await received(peer, 1)] == ["AAPL"]
        assert (
            await http.put("/api/users/universe", json={"symbols": ["MSFT"], "universe_keys": []})
        ).status_code == 200

        async def followed() -> bool:
            return any(s.symbols == frozenset({"MSFT"}) for s in hub.hub.fanout.index if s.id == "mine")

        await wait_for(followed, timeout=10, what="the subscription to follow the new universe")
        await publish(
            hub, [make_event(3, prefix="my-b", symbol="AAPL"), make_event(4, prefix="my-b", symbol="MSFT")]
        )
        got = await received(peer, 2)
        assert [f["event"]["symbol"] for f in got] == ["AAPL", "MSFT"]


# -- resume ---------------------------------------------------------------------------------------


async def _head(hub: LiveHub, at_least: int) -> int:
    async def reached() -> int | None:
        return hub.hub.fanout.head if hub.hub.fanout.head >= at_least else None

    return await wait_for(reached, what=f"the fan-out to reach seq {at_least}")


@pytest.mark.parametrize("count", [30, 400])  # within the ring (50) / from JetStream
async def test_since_replays_the_matching_past_then_continues_live_without_gap_or_duplicate(
    connect: Any, hub: LiveHub, count: int
) -> None:
    start = hub.hub.fanout.head
    events = [make_event(i, prefix=f"resume{count}", symbol=("AAPL", "MSFT")[i % 2]) for i in range(count)]
    await publish(hub, events)
    await _head(hub, start + count)
    peer = await connect()
    later = [make_event(i, prefix=f"resume{count}-live", symbol="AAPL") for i in range(count, count + 40)]
    publishing = asyncio.create_task(publish(hub, later))  # events arrive during the replay
    reply = await subscribe(peer, "a", since=start, symbols=["AAPL"])
    await publishing
    assert reply["recovered"] is True
    expected = [e["id"] for e in events if e["symbol"] == "AAPL"] + [e["id"] for e in later]
    [got] = await before_marker(hub, [peer], make_event(0, prefix=f"resume{count}-mark", symbol="AAPL"))
    assert [f["event"]["id"] for f in got] == expected
    seqs = [f["seq"] for f in got]
    assert seqs == sorted(set(seqs)) and seqs[0] > start


@pytest.mark.slow
async def test_since_beyond_the_resume_bound_or_ahead_of_the_stream_is_not_recovered(
    connect: Any, hub: LiveHub
) -> None:
    peer = await connect()
    reply = await subscribe(peer, "ahead", since=hub.hub.fanout.head + 1_000_000, symbols=["NOTHING"])
    assert reply["recovered"] is False and reply["replayed"] == 0
    head = hub.hub.fanout.head
    if head < 5_001:
        await publish(hub, [make_event(i, prefix="bulk", symbol="ZZZT") for i in range(5_001 - head)])
        head = await _head(hub, 5_001)
    # The reply comes after the replay: up to 5,000 events read back from the clean stream, which took
    # over 10 s once with two test runs and five other jobs sharing the two cores.
    reply = await subscribe(peer, "far", since=0, symbols=["ZZZT"], timeout=60.0)
    assert reply["recovered"] is False
    assert 0 < reply["replayed"] <= 5_000


async def test_the_python_client_resumes_after_a_drop_with_every_event_once(hub: LiveHub) -> None:
    subs = [Subscription("aapl", {"symbols": ["AAPL"]}), Subscription("all", {})]
    got: list[Delivery] = []
    async with HubClient(
        f"{hub.ws_url}/ws", token=READER, subscriptions=subs, backoff_initial_s=0.05
    ) as client:
        await wait_for(
            _true_when(lambda: client.state == "connected" and len(client.recovered) == 2),
            what="the client to subscribe",
        )
        events = [make_event(i, prefix="client", symbol=("AAPL", "MSFT")[i % 3 == 0]) for i in range(600)]

        async def produce() -> None:
            for i in range(0, 600, 50):
                await publish(hub, events[i : i + 50])
                if i == 200:
                    await client.drop()
                await asyncio.sleep(0.02)

        producing = asyncio.create_task(produce())
        async with asyncio.timeout(30):
            async for delivery in client:
                got.append(delivery)
                if len([d for d in got if "all" in d.subs]) == 600:
                    break
        await producing
        assert client.connects >= 2
    ids_all = [d.event["id"] for d in got if "all" in d.subs]
    ids_aapl = [d.event["id"] for d in got if "aapl" in d.subs]
    assert ids_all == [e["id"] for e in events]
    assert ids_aapl == [e["id"] for e in events if e["symbol"] == "AAPL"]


async def test_the_python_client_starts_its_back_off_again_after_a_good_connection(hub: LiveHub) -> None:
    """Each drop follows a good session, so each reconnect waits at most ``backoff_initial_s``: the
    back-off does not keep doubling across drops."""
    base = 0.05
    async with HubClient(
        f"{hub.ws_url}/ws", token=READER, subscriptions=[], backoff_initial_s=base, backoff_max_s=60.0
    ) as client:
        for drop in range(1, 5):
            await wait_for(
                _true_when(lambda d=drop: client.state == "connected" and client.connects == d),
                what=f"connection {drop}",
            )
            await client.drop()
            await wait_for(
                _true_when(lambda d=drop: client.connects == d + 1), timeout=30, what=f"reconnect {drop}"
            )
            assert client.backoff_s == base, f"after drop {drop} the back-off grew to {client.backoff_s} s"


def _true_when(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate


async def test_the_python_client_stops_on_a_refused_token(hub: LiveHub) -> None:
    async with HubClient(f"{hub.ws_url}/ws", token="junk", subscriptions=[]) as client:
        with pytest.raises(HubClientError, match="4401"):
            async with asyncio.timeout(10):
                await anext(client)


# -- flow control, heartbeats ---------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer_and_others_are_not(
    connect: Any, hub: LiveHub
) -> None:
    fast = await connect()
    await subscribe(fast, "all")
    async with raw_client(hub, "all", {}):  # it never reads
        big = {"blob": "x" * 12_000}
        start, before = hub.hub.fanout.head, len(fast.events())
        # In steps of 50 frames (600 KB), each published once the reader has the previous one: its
        # outbox never nears the bounds (100 frames, 1 MiB) however loaded the machine, while the
        # outbox of the client that never reads fills past them within two steps.
        for step in range(20):
            events = [
                make_event(i, prefix="slow", symbol="MSFT", data=big)
                for i in range(step * 50, step * 50 + 50)
            ]
            await publish(hub, events)
            await received(fast, before + step * 50 + 50, timeout=60)

        async def slow_closed() -> bool:
            return hub.hub.fanout.metrics.closes.value(code="4409") == 1  # the one that never reads

        await wait_for(slow_closed, timeout=30, what="the slow consumer to be closed")
        assert [f["seq"] for f in fast.events()][-1000:] == list(range(start + 1, start + 1001))


@contextlib.asynccontextmanager
async def raw_client(
    hub: LiveHub, sub_id: str, filter_: dict[str, Any]
) -> AsyncIterator[asyncio.StreamReader]:
    """A bare websocket client with a tiny receive buffer that reads only when the test does (a
    websockets client would buffer for us), subscribed to ``filter_``; it keeps sending pongs, so it is
    never idle. Yields its reader, positioned after the handshake."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws?token={READER} HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    writer.write(_client_frame(json.dumps({"op": "subscribe", "id": sub_id, "filter": filter_})))
    talking = asyncio.create_task(_keep_talking(writer))
    try:
        yield reader
    finally:
        talking.cancel()
        writer.transport.abort()


def _client_frame(text: str) -> bytes:
    """One masked text frame, as a client must send it (RFC 6455 section 5.2)."""
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _keep_talking(writer: asyncio.StreamWriter) -> None:
    while True:  # hygiene: ok - a heartbeat that runs until cancelled, not a wait
        writer.write(_client_frame('{"op":"pong"}'))
        await asyncio.sleep(0.3)


async def test_the_server_pings_and_a_silent_client_is_closed_for_idleness(connect: Any) -> None:
    peer = await connect(answer_pings=False)
    ping = await peer.op("ping", timeout=5)
    assert isinstance(ping["ts"], int)
    assert await peer.closed(timeout=10) == 4408


async def test_answering_pings_keeps_a_connection_open(connect: Any) -> None:
    peer = await connect(answer_pings=False)
    for _ in range(8):  # 8 x 0.4 s > the 2.5 s idle timeout
        await peer.op("ping", timeout=5)
        await peer.send({"op": "pong"})
    assert peer.close_code is None


async def test_a_client_that_only_answers_pings_outlives_the_idle_timeout_while_events_stream(
    connect: Any, hub: LiveHub
) -> None:
    """Events every 0.1 s for 4 s (over the 2.5 s idle timeout, every gap under the 0.4 s ping
    interval): the server still pings, and answering is all the client does."""
    peer = await connect()
    await subscribe(peer, "stream", symbols=["KO"])
    for i in range(40):
        await publish(hub, [make_event(i, prefix="streaming", symbol="KO")])
        await received(peer, i + 1)
        await asyncio.sleep(0.1)  # the pace of a busy market, not a wait for something
    assert peer.close_code is None


async def test_metrics_count_connections_frames_and_latency(connect: Any, hub: LiveHub) -> None:
    peer = await connect()
    await subscribe(peer, "m", symbols=["MSFT"])
    await publish(hub, [make_event(i, prefix="metrics", symbol="MSFT") for i in range(5)])
    await received(peer, 5)
    async with httpx.AsyncClient(base_url=hub.url) as http:
        text = (await http.get("/metrics")).text
    for name in (
        "tickstock_ws_connections",
        "tickstock_ws_subscriptions",
        "tickstock_ws_messages_sent_total",
        "tickstock_ws_bytes_sent_total",
        "tickstock_ws_queue_high_water",
        "tickstock_ws_stored_to_sent_seconds_count",
    ):
        assert name in text
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert lines["tickstock_ws_connections"] >= 1
    assert lines["tickstock_ws_stored_to_sent_seconds_count"] >= 5


async def _metric(hub: LiveHub, name: str) -> float:
    async with httpx.AsyncClient(base_url=hub.url) as http:
        text = (await http.get("/metrics")).text
    return next(float(line.split(" ")[1]) for line in text.splitlines() if line.split(" ")[0] == name)


async def test_bytes_sent_counts_utf8_bytes_of_non_ascii_frames(hub: LiveHub) -> None:
    """``tickstock_ws_bytes_sent_total`` grows by the UTF-8 size of what the socket carried, not by
    the number of characters: event data in other scripts and emoji take 2-4 bytes a character."""

    async def alone() -> bool:
        return await _metric(hub, "tickstock_ws_connections") == 0

    await wait_for(alone, what="no other websocket")
    before = await _metric(hub, "tickstock_ws_bytes_sent_total")
    texts: list[str] = []
    async with websockets.connect(f"{hub.ws_url}/ws?token={READER}", ping_interval=None) as ws:

        async def read() -> None:
            async for raw in ws:
                assert isinstance(raw, str)
                texts.append(raw)
                if json.loads(raw)["op"] == "ping":
                    await ws.send('{"op":"pong"}')

        reader = asyncio.create_task(read())
        await ws.send(json.dumps({"op": "subscribe", "id": "u", "filter": {"symbols": ["NVDA"]}}))
        note = "Köln – 東京 – ₿ 😀"
        await publish(
            hub, [make_event(i, prefix="utf8", symbol="NVDA", data={"note": note}) for i in range(3)]
        )

        async def events_in() -> bool:
            return sum('"op":"event"' in t for t in texts) == 3

        await wait_for(events_in, what="three events")
        assert all(
            len(t.encode()) > len(t) for t in texts if '"op":"event"' in t
        )  # sent as UTF-8, not escaped

        async def counted() -> bool:  # equal whenever no frame is on its way (a ping may be)
            return await _metric(hub, "tickstock_ws_bytes_sent_total") - before == sum(
                len(t.encode()) for t in texts
            )

        await wait_for(counted, timeout=10, what="the counter to equal the UTF-8 bytes received")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_a_node_going_away_closes_with_1001_and_its_clients_resume_on_another(hub: LiveHub) -> None:
    second = LiveHub(hub.settings)
    await second.__aenter__()
    try:
        raw = await websockets.connect(f"{second.ws_url}/ws?token={READER}", ping_interval=None)
        peer = Peer(raw, answer_pings=True)
        await peer.op("welcome")
        subs = [Subscription("all", {"symbols": ["KO"]})]
        client = HubClient(
            [f"{second.ws_url}/ws", f"{hub.ws_url}/ws"],
            token=READER,
            subscriptions=subs,
            backoff_initial_s=0.05,
        )
        async with client:
            await wait_for(
                _true_when(lambda: client.recovered.get("all") is not None), what="the subscription"
            )
            assert client.node == second.hub.fanout.node
            events = [make_event(i, prefix="away", symbol="KO") for i in range(300)]
            await publish(hub, events[:100])
            await second.__aexit__(None, None, None)  # the node shuts down while events keep coming
            assert await peer.closed() == 1001
            await publish(hub, events[100:])
            got: list[str] = []
            seqs: list[int] = []
            async with asyncio.timeout(30):
                async for delivery in client:
                    got.append(delivery.event["id"])
                    seqs.append(delivery.seq)
                    if len(got) == 300:
                        break
            # two writers share the ingest consumer, so the clean stream interleaves their batches:
            # every event once, in clean-stream order
            assert sorted(got) == sorted(e["id"] for e in events) and len(set(got)) == 300
            assert seqs == sorted(seqs)
            assert client.node == hub.hub.fanout.node and client.connects == 2
    finally:
        if second.state is not None:
            await second.__aexit__(None, None, None)


async def test_junk_on_the_clean_stream_or_the_notice_subject_is_skipped_and_delivery_goes_on(
    connect: Any, hub: LiveHub
) -> None:
    peer = await connect()
    await subscribe(peer, "all")
    js = hub.hub.js
    await js.publish("tickstock.patterns.daily.JUNK", b"not an event")  # not the writer's: skipped with a log
    await hub.hub.nats.publish("tickstock.users.universe.changed", b"{broken")
    await publish(hub, [make_event(1, prefix="after-junk", symbol="KO")])
    got = await received(peer, 1)
    assert [f["event"]["id"] for f in got] == ["after-junk-1"]


async def test_since_equal_to_the_head_replays_nothing_and_is_recovered(connect: Any, hub: LiveHub) -> None:
    peer = await connect()
    reply = await subscribe(peer, "now", since=hub.hub.fanout.head, symbols=["KO"])
    assert reply["recovered"] is True and reply["replayed"] == 0
    await publish(hub, [make_event(1, prefix="at-head", symbol="KO")])
    assert [f["event"]["id"] for f in await received(peer, 1)] == ["at-head-1"]


async def test_a_resume_older_than_the_stream_keeps_is_not_recovered(connect: Any, hub: LiveHub) -> None:
    from hub.jetstream import PATTERNS_STREAM

    await publish(hub, [make_event(i, prefix="purged", symbol="PEP") for i in range(120)])
    head = await _head(hub, hub.hub.fanout.head + 120)
    await hub.hub.js.purge_stream(
        PATTERNS_STREAM, seq=head - 99
    )  # the stream now starts 100 back; the ring holds 50
    peer = await connect()
    reply = await subscribe(peer, "old", since=head - 110, symbols=["PEP"])
    assert reply["recovered"] is False
    assert reply["replayed"] == 100
    assert [f["seq"] for f in peer.events()] == list(range(head - 99, head + 1))


async def _read_frame(reader: asyncio.StreamReader) -> str:
    """One unmasked text frame from the server."""
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return (await reader.readexactly(size)).decode()


async def test_a_client_that_falls_behind_and_catches_up_gets_everything_in_order(hub: LiveHub) -> None:
    """The socket backs up (the hub queues in the outbox behind a waiting send), then drains."""
    async with raw_client(hub, "mine", {"symbols": ["CAT"]}) as reader:
        assert json.loads(await _read_frame(reader))["op"] == "welcome"
        assert json.loads(await _read_frame(reader))["op"] == "subscribed"
        conns = [c for c in hub.hub.fanout.connections if "mine" in c.subs]
        assert len(conns) == 1
        sent = 0

        async def backed_up() -> bool:  # publish until the hub has to queue for this socket
            nonlocal sent
            if conns[0].queued:
                return True
            assert sent < 2_000, "the socket never backed up"
            await publish(
                hub,
                [
                    make_event(sent + i, prefix="behind", symbol="CAT", data={"blob": "y" * 12_000})
                    for i in range(10)
                ],
            )
            sent += 10
            return False

        await wait_for(backed_up, timeout=60, what="the socket to back up")
        seqs: list[int] = []
        while len(seqs) < sent:
            frame = json.loads(await asyncio.wait_for(_read_frame(reader), 10))
            if frame["op"] == "ping":
                continue
            assert frame["op"] == "event"
            seqs.append(frame["seq"])
        assert len(seqs) == sent and seqs == sorted(set(seqs))
        assert conns[0].close_code is None and not conns[0].queued


async def test_the_python_client_stops_on_a_filter_the_hub_refuses(hub: LiveHub) -> None:
    with pytest.raises(ValueError, match="at least one"):
        HubClient([], token=READER, subscriptions=[])
    bad = [Subscription("bad", {"universes": ["no-such-universe"]})]
    async with HubClient(f"{hub.ws_url}/ws", token=lambda: READER, subscriptions=bad) as client:
        with pytest.raises(HubClientError, match="invalid_filter"):
            async with asyncio.timeout(10):
                await anext(client)


async def test_a_client_whose_oldest_frame_waits_too_long_is_closed_as_a_slow_consumer(hub: LiveHub) -> None:
    async with raw_client(hub, "lag", {"symbols": ["DE"]}):
        await wait_for(
            _true_when(lambda: any("lag" in c.subs for c in hub.hub.fanout.connections)),
            what="the subscription",
        )
        conn = next(c for c in hub.hub.fanout.connections if "lag" in c.subs)
        sent = 0

        async def backed_up() -> bool:  # back the socket up, then stop: the outbox stays far below its bounds
            nonlocal sent
            if conn.queued:
                return True
            assert sent < 2_000, "the socket never backed up"
            await publish(
                hub,
                [
                    make_event(sent + i, prefix="lag", symbol="DE", data={"blob": "z" * 12_000})
                    for i in range(10)
                ],
            )
            sent += 10
            return False

        await wait_for(backed_up, timeout=60, what="the socket to back up")
        assert conn.queued < 100
        await wait_for(
            _true_when(lambda: conn.close_code is not None), timeout=10, what="the lagging client closed"
        )
        assert conn.close_code == 4409 and "waited" in conn.close_reason


# -- memory ---------------------------------------------------------------------------------------


def _server_protocols() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, (LeanProtocol, ServerProtocol)))


async def test_a_closed_websocket_is_freed_without_the_cyclic_collector(connect: Any, hub: LiveHub) -> None:
    """A worker runs the cyclic collector over its old objects rarely (api/cli/serving.py's _tune_gc):
    a connection that is gone must be freed as its last reference goes, not wait for it in a cycle
    (websockets' parser and its protocol, the server's send in the scope: api/wsproto.py,
    api/requestid.py). With the collector off, its protocol objects go once it closes."""
    fanout = hub.hub.fanout
    assert fanout is not None
    gc.collect()
    gc.disable()
    try:
        before = _server_protocols()
        peers = [await connect() for _ in range(5)]
        for n, peer in enumerate(peers):
            await subscribe(peer, f"s{n}")
        assert _server_protocols() == before + 10  # ours and websockets' for each
        for peer in peers[:3]:
            await peer.aclose()
        peers[3].ws.transport.abort()  # dropped, no closing handshake
        await wait_for(lambda: len(fanout.connections) <= 1, what="the server to see them go")
        await peers[4].aclose()
        await wait_for(lambda: _server_protocols() == before, what="the closed connections freed")
    finally:
        gc.enable()
