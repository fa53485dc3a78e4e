"""The websocket fan-out of one hub node (protocol: ``docs/websocket.md``).

Every node reads the clean stream ``TICKSTOCK_PATTERNS`` with its own ordered consumer, so a client may
connect to any node and resume by ``seq`` on another. Each stored event is decoded and encoded once per
node; the subscription index (:mod:`hub.subscriptions`) finds the connections it matches; each
connection gets the frame (:mod:`hub.delivery`: written to its socket at once, or queued in its bounded
outbox, :class:`Connection`, which its own task writes). While more events wait in the live buffer,
they are handed on together, each socket written once for all of them. The fan-out never awaits a
client: a full outbox closes that connection with 4409 ("slow consumer"), and the client resumes with
``since``.

A recent window of the stream (``ring_size`` events) stays in memory, so most resumes replay without a
round trip; older ones replay from JetStream. A subscription that resumes collects live events in its
``pending`` queue while its past is sent, then sends those, so the seam has no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections import deque
from types import TracebackType
from typing import Any, Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from hub.broker import SlowConsumers
from hub.catalog import CatalogCache
from hub.connection import CLOSE_TIMEOUT_S, Connection, Send, WireWrite
from hub.delivery import COALESCE_EVENTS, deliver, event_frame
from hub.errors import HubError, SubscriptionLimitError
from hub.fanout_limits import FanOutLimits
from hub.fanout_metrics import FanOutMetrics
from hub.history import StreamHistory
from hub.jetstream import PATTERNS_STREAM
from hub.live import LiveFeed
from hub.metrics import Registry
from hub.model import EventError, canonical_symbol
from hub.overload import Overload
from hub.protocol import CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_SLOW, CLOSE_UNAUTHORIZED
from hub.subjects import UNIVERSE_CHANGED_SUBJECT
from hub.subscriptions import Entry, Filter, Subscription, SubscriptionIndex
from store.universe_resolver import SqlResolver, UniverseResolver, UnknownUniverse

__all__ = ["FanOut", "FilterError"]

log = logging.getLogger("tickstock.fanout")


class FilterError(HubError, ValueError):
    """A subscription filter the hub cannot serve (unknown universe, pattern, bad symbol)."""


class FanOut:
    """The fan-out of one node. ``async with FanOut(...)`` starts reading the clean stream; leaving it
    closes every socket with 1001 after a short drain (:meth:`go_away`)."""

    def __init__(
        self,
        *,
        nc: NATS,
        js: JetStreamContext,
        pool: AsyncConnectionPool,
        catalog: CatalogCache,
        registry: Registry,
        limits: FanOutLimits | None = None,
        node: str | None = None,
        resolver: UniverseResolver | None = None,
        slow_consumers: SlowConsumers | None = None,
    ) -> None:
        self._nc, self._js, self._pool, self._catalog = nc, js, pool, catalog
        self._resolver = resolver or SqlResolver(
            pool
        )  # universes -> symbols (in memory, when the hub keeps them)
        self.limits = limits or FanOutLimits()
        self.node = node or f"hub-{os.getpid()}-{os.urandom(2).hex()}"
        self.metrics = FanOutMetrics(registry, self)
        self.index = SubscriptionIndex()
        self.connections: dict[Connection, None] = {}
        self.head = 0
        self.accepting = False
        self.history = StreamHistory(js, ring_size=self.limits.ring_size)
        self._orders = itertools.count(1)
        self._notices: NatsSubscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._held: list[Entry] = []  # live events handled, to be handed on together (_on_live)
        self._flush_soon = False  # a hand-on of the held events is scheduled
        self.overload = Overload(
            self.connections, self.metrics, after_s=self.limits.shed_after_s, lag_s=self.limits.shed_lag_s
        )
        self._live = LiveFeed(
            js,
            limits=self.limits,
            metrics=self.metrics,
            head=lambda: self._held[-1].seq if self._held else self.head,  # handled: held or handed on
            handle=self._on_live,
            on_hole=self._hole,
            slow_consumers=slow_consumers,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        info = await self._js.stream_info(PATTERNS_STREAM)
        self.head = info.state.last_seq
        await self._live.start()
        self._notices = await self._nc.subscribe(UNIVERSE_CHANGED_SUBJECT, cb=self._on_universe_changed)
        self._housekeeper = asyncio.create_task(self._housekeep(), name="ws-housekeeper")
        self.accepting = True
        log.info("fan-out %s reading %s from seq %d", self.node, PATTERNS_STREAM, self.head + 1)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.go_away()
        await self._live.stop()
        if self._notices is not None:
            with contextlib.suppress(Exception):
                await self._notices.unsubscribe()
        tasks = [t for t in (self._housekeeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def go_away(self) -> None:
        """Stop accepting, let outboxes drain for ``drain_s``, then close every socket with 1001."""
        self.accepting = False
        conns = list(self.connections)
        if not conns:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.limits.drain_s):
                await asyncio.gather(*(c.drained() for c in conns))
        for conn in conns:
            conn.close(CLOSE_GOING_AWAY, "the hub node is shutting down; resume on another")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*(c.closed() for c in conns))
        log.info("fan-out closed %d websockets (going away)", len(conns))

    # -- connections -----------------------------------------------------------------------------

    def connect(self, send: Send, *, heartbeat: bool = True, wire: WireWrite | None = None) -> Connection:
        """Register a socket; ``heartbeat=False`` for a transport with its own liveness checks; ``wire``
        writes prepared frame bytes to it (see :class:`~hub.connection.Connection`)."""
        conn = Connection(send, self.limits, self.metrics, heartbeat=heartbeat, wire=wire)
        self.connections[conn] = None
        return conn

    def disconnect(self, conn: Connection) -> None:
        for sub in conn.subs.values():
            self.index.remove(sub)
        conn.subs.clear()
        conn.abandon()
        self.connections.pop(conn, None)

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.limits.max_connections

    @property
    def backlog(self) -> int:
        """Clean-stream events read from NATS and not yet fanned out."""
        return self._live.backlog

    # -- the live path -----------------------------------------------------------------------------

    async def _on_live(self, msg: Msg, seq: int, stored_at: float) -> None:
        """The next event of the clean stream (:class:`hub.live.LiveFeed`: in order, once). While more
        wait in the buffer, events are held (at most :data:`COALESCE_EVENTS`) and handed on together
        before the loop turns: each socket is written once for all of them (:mod:`hub.delivery`)."""
        backlog = self.backlog
        self.overload.picked(backlog, stored_at)
        try:
            entry = Entry.from_json(seq, msg.data, stored_at)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("clean-stream message %d is not a stored event (%s); skipped", seq, exc)
            self._flush()
            self.head = seq
            return
        self._held.append(entry)
        if backlog and len(self._held) < COALESCE_EVENTS:
            # The next is queued already: nats-py hands it on without the loop turning. Should it not
            # (nothing more comes), the loop's next turn hands on what is held.
            if not self._flush_soon:
                self._flush_soon = True
                asyncio.get_running_loop().call_soon(self._flush)
            return
        self._flush()
        # A batch of stored events arrives in a burst: let the outboxes' writers run between batches,
        # so a healthy client's outbox holds a few frames, not the whole burst.
        await asyncio.sleep(0)

    def _flush(self) -> None:
        """Hand on the held events (:meth:`dispatch`), then see whether the node keeps up."""
        self._flush_soon = False
        held, self._held = self._held, []
        if held:
            self.dispatch(held)
            # Measured once they are written: the first of them has waited longest (hub.overload).
            self.overload.check(self.backlog, held[0].stored_at, handed=len(held))

    def _hole(self, head: int) -> None:
        self._flush()
        self.overload.hole(head)

    def dispatch(self, entries: list[Entry]) -> None:
        """Send ``entries`` (in stream order) to every matching subscription (never waits)."""
        for entry in entries:
            self.history.append(entry)
        self.head = entries[-1].seq
        deliver(entries, self.index, self.metrics, resume_max=self.limits.resume_max)

    # -- subscriptions ---------------------------------------------------------------------------

    async def subscribe(
        self, conn: Connection, sub_id: str, filter_: Filter, since: int | None
    ) -> dict[str, Any]:
        """Add (or replace) a subscription; with ``since``, replay its past first. Returns the reply.

        Raises :class:`FilterError` for a filter the hub cannot serve.
        """
        if sub_id not in conn.subs and len(conn.subs) >= self.limits.max_subscriptions:
            raise SubscriptionLimitError(
                f"this connection already has {len(conn.subs)} subscriptions "
                f"(the limit is {self.limits.max_subscriptions})"
            )
        filter_ = self._canonical(filter_)
        symbols = await self._symbols(filter_, conn.subject or "")
        self.unsubscribe(conn, sub_id)
        sub = Subscription(sub_id, conn, filter_, symbols, order=next(self._orders))
        sub.after = self.head
        conn.subs[sub_id] = sub
        if since is None:
            self.index.add(sub)
            return {"op": "subscribed", "id": sub_id, "head": self.head, "replayed": 0, "recovered": True}
        sub.pending = deque()
        self.index.add(sub)
        replayed, recovered = await self._replay(conn, sub, since)
        if conn.subs.get(sub_id) is sub:
            # the seam: what arrived live while the past was sent, then live again
            while sub.pending and conn.close_code is None:
                entry = sub.pending.popleft()
                if await conn.offer_paced(event_frame(entry, sub.ids_json), entry.stored_at):
                    replayed += 1
            sub.pending = None
        self.metrics.replayed.inc(replayed)
        return {
            "op": "subscribed",
            "id": sub_id,
            "head": self.head,
            "replayed": replayed,
            "recovered": recovered,
        }

    def unsubscribe(self, conn: Connection, sub_id: str) -> bool:
        sub = conn.subs.pop(sub_id, None)
        if sub is None:
            return False
        self.index.remove(sub)
        sub.pending = None
        return True

    def _canonical(self, f: Filter) -> Filter:
        try:
            symbols = sorted({canonical_symbol(s) for s in f.symbols})
        except (EventError, ValueError) as exc:
            raise FilterError(str(exc)) from None
        catalog = self._catalog.current
        try:
            patterns = sorted({catalog.canonical(p) for p in f.patterns})
        except EventError as exc:
            raise FilterError(exc.detail if hasattr(exc, "detail") else str(exc)) from None
        return f.model_copy(
            update={"symbols": symbols, "patterns": patterns, "universes": list(dict.fromkeys(f.universes))}
        )

    async def _symbols(self, f: Filter, subject: str) -> frozenset[str] | None:
        """The symbols a filter covers (its symbols and the members of its universes), or ``None`` for
        any symbol. Raises :class:`FilterError` for an unknown universe."""
        if not f.symbols and not f.universes:
            return None
        try:
            members = await self._resolver.universe_symbols(f.universes, subject=subject)
        except UnknownUniverse as exc:
            raise FilterError(
                f"unknown universe(s): {', '.join(exc.names)} (see GET /api/universes)"
            ) from None
        return frozenset(f.symbols) | members

    async def _on_universe_changed(self, msg: Msg) -> None:
        try:
            subject = json.loads(msg.data)["subject"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed universe-changed notice: %r", msg.data[:200])
            return
        subs = [
            s
            for c in self.connections
            if c.subject == subject
            for s in c.subs.values()
            if s.filter.follows_my_universe
        ]
        if subs:
            task = asyncio.create_task(self._refollow(subject, subs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _refollow(self, subject: str, subs: list[Subscription]) -> None:
        for sub in subs:
            try:
                symbols = await self._symbols(sub.filter, subject)
            except Exception:  # a vanished universe key or a database blip: keep the old symbols
                log.exception("could not refresh the universe of %s", subject)
                continue
            self.index.reindex(sub, symbols)
        log.info("followed the universe change of %s (%d subscriptions)", subject, len(subs))

    # -- replay ----------------------------------------------------------------------------------

    async def _replay(self, conn: Connection, sub: Subscription, since: int) -> tuple[int, bool]:
        target = sub.after
        if since >= target:
            if since > target and since > await self.history.last_seq():
                return 0, False  # ahead of the stream: it was recreated; live from now on
            sub.after = since
            return 0, True
        start, recovered = since + 1, True
        if target - since > self.limits.resume_max:
            start, recovered = target - self.limits.resume_max + 1, False
        replayed = 0
        replay = self.history.replay(start, target, recovered=recovered)
        async for entry in replay:
            if conn.close_code is not None or conn.subs.get(sub.id) is not sub:
                break
            if sub.matches(entry) and await conn.offer_paced(
                event_frame(entry, sub.ids_json), entry.stored_at
            ):
                replayed += 1
        return replayed, replay.recovered

    # -- heartbeats, timeouts --------------------------------------------------------------------

    async def _housekeep(self) -> None:
        limits = self.limits
        period = min(1.0, limits.ping_interval_s / 4, limits.auth_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now, wall = time.monotonic(), time.time()
            self.overload.outboxes(now)
            for conn in list(self.connections):
                if conn.close_code is not None:
                    continue
                if conn.lag_s(now) > limits.queue_age_s:
                    conn.close(
                        CLOSE_SLOW,
                        f"slow consumer: a frame waited over {limits.queue_age_s:g} s; resume with since",
                    )
                elif conn.subject is None:
                    if now - conn.connected_at > limits.auth_timeout_s:
                        conn.close(CLOSE_UNAUTHORIZED, "no token within the authentication timeout")
                elif wall > conn.expires_at:
                    conn.close(CLOSE_UNAUTHORIZED, "the token expired; reconnect with a new one")
                elif not conn.heartbeat:
                    continue
                elif now - conn.last_received > limits.idle_timeout_s and not conn.busy:
                    conn.close(CLOSE_IDLE, "idle timeout")
                elif now - max(conn.last_received, conn.last_pinged) >= limits.ping_interval_s:
                    # Pinged for what it did not hear, not for what it did not send: a client that
                    # only answers pings stays connected however busily events stream to it.
                    conn.send_json({"op": "ping", "ts": int(wall * 1000)})
                    conn.last_pinged = now
