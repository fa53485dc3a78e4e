"""The ingest partitions, shared by the hub nodes: each partition pulled by one node at a time, in order.

The ingest stream stores ``tickstock.ingest.<tf>.<sym>`` under ``tickstock.ingestp.<p>.<tf>.<sym>``, ``p``
a hash of the symbol (:mod:`hub.jetstream`). Partition ``p``'s durable consumer has a pinned-client
priority group: the server delivers to one pull request's client (its pin) until that client has not
pulled for the consumer's priority timeout (a dead or stuck node) or is unpinned, and then pins the next
waiting client. :class:`hub.pull.Puller` fences a fresh pin, so a takeover keeps the order.

Every node runs :class:`Partitions`:

* a writer on ``hub-writer`` (shared: the subjects the transform does not match, and what the stream held
  before it had partitions);
* one writer per partition it *contends for* or *holds*. Each round (``rebalance_s``) it asks
  ``tickstock.hub.writers`` who is there (every node answers), so ``n`` nodes share ``P`` partitions at
  most ``ceil(P / n)`` each: a node holding more releases the surplus (its writer finishes the batch in
  hand and hands back the rest, then the partition is unpinned and the node keeps off it for
  ``cooloff_s``); a node holding fewer contends for every partition it does not hold; a node holding its
  share stops contending. A new node is thus given partitions within a few rounds, and a dead node's
  are taken over after the pin timeout plus the ack wait of what it left unacknowledged.
* Until the messages stored under the old layout (4-token ``tickstock.ingest.<tf>.<sym>``) are gone
  (``hub-writer`` drains them), no partition writer starts: an upgrade keeps the order too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from types import TracebackType

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from hub.jetstream import INGEST_STREAM, PIN_GROUP, WRITER_CONSUMER, partition_consumer, unpin
from hub.subjects import INGEST_PREFIX, WRITERS_SUBJECT
from hub.writer import Writer

__all__ = ["DEFAULT_REBALANCE_S", "Partitions"]

log = logging.getLogger("tickstock.partitions")

DEFAULT_REBALANCE_S = 1.0
PRESENCE_WAIT_S = 0.25  # how long a round listens for the other nodes' answers
# Makes a writer for a consumer: (consumer, priority group or None).
MakeWriter = Callable[[str, str | None], Writer]


class Partitions:
    """Runs this node's writers from ``__aenter__`` until ``__aexit__`` (which stops them, each finishing
    its batch, and unpins what this node held so the others take over at once)."""

    def __init__(
        self,
        *,
        nc: NATS,
        partitions: int,
        make_writer: MakeWriter,
        rebalance_s: float = DEFAULT_REBALANCE_S,
        cooloff_s: float | None = None,
    ) -> None:
        self._nc, self._js = nc, nc.jetstream()
        self.partitions = partitions
        self._make_writer = make_writer
        self._rebalance_s = rebalance_s
        self._cooloff_s = cooloff_s if cooloff_s is not None else 2 * rebalance_s
        self.node = uuid.uuid4().hex[:12]
        self.shared: Writer | None = None
        self.running: dict[int, Writer] = {}
        self._cooloff: dict[int, float] = {}
        self._stopped_batches = 0
        self.nodes = 1  # as last counted
        self.migrated = partitions == 0
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def batches(self) -> int:
        """Batches handled by this node's writers, all of them."""
        running = sum(w.batches for w in self.running.values())
        return self._stopped_batches + running + (self.shared.batches if self.shared else 0)

    @property
    def held(self) -> list[int]:
        """The partitions this node is pinned on."""
        return sorted(p for p, w in self.running.items() if w.puller is not None and w.puller.pin)

    async def _answer(self, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(NatsError):
                await msg.respond(json.dumps({"node": self.node, "partitions": self.held}).encode())

    async def count_nodes(self) -> int:
        """How many nodes answer on ``tickstock.hub.writers`` within :data:`PRESENCE_WAIT_S` (this one too)."""
        inbox = self._nc.new_inbox()
        nodes: set[str] = set()

        async def heard(msg: Msg) -> None:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                nodes.add(str(json.loads(msg.data)["node"]))

        sub = await self._nc.subscribe(inbox, cb=heard)
        try:
            await self._nc.publish(WRITERS_SUBJECT, b"", reply=inbox)
            await asyncio.sleep(PRESENCE_WAIT_S)
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        return max(1, len(nodes))

    async def _old_layout_left(self) -> bool:
        info = await self._js.stream_info(INGEST_STREAM, subjects_filter=f"{INGEST_PREFIX}.*.*")
        return bool(info.state.subjects)

    async def _start(self, partition: int) -> None:
        writer = self._make_writer(partition_consumer(partition), PIN_GROUP)
        self.running[partition] = await writer.__aenter__()

    async def _stop(self, partition: int, *, cooloff: bool) -> None:
        writer = self.running.pop(partition)
        await writer.__aexit__(None, None, None)
        self._stopped_batches += writer.batches
        if writer.puller is not None and writer.puller.pin:
            with contextlib.suppress(NatsError, JetStreamError):
                await unpin(self._js, partition_consumer(partition))
        if cooloff:
            self._cooloff[partition] = time.monotonic() + self._cooloff_s

    async def rebalance(self) -> None:
        """One round: count the nodes, then release, keep or contend (see the module docstring)."""
        if not self.migrated:
            self.migrated = not await self._old_layout_left()
            if not self.migrated:
                return
        self.nodes = await self.count_nodes()
        share = math.ceil(self.partitions / self.nodes)
        held = self.held
        if len(held) > share:
            log.info("partitions %s released (%d node(s), share %d)", held[share:], self.nodes, share)
            await asyncio.gather(*(self._stop(p, cooloff=True) for p in held[share:]))
            return
        if len(held) == share:
            await asyncio.gather(*(self._stop(p, cooloff=False) for p in self.running if p not in held))
            return
        now = time.monotonic()
        for partition in range(self.partitions):
            if partition not in self.running and self._cooloff.get(partition, 0.0) <= now:
                await self._start(partition)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.rebalance()
            except (NatsError, JetStreamError, TimeoutError) as exc:
                log.warning("partitions: rebalance round failed: %s", exc)
            except Exception:  # a bug must not stop the rounds: the writers already running go on
                log.exception("partitions: rebalance round failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._rebalance_s)

    async def __aenter__(self) -> Partitions:
        self.shared = await self._make_writer(WRITER_CONSUMER, None).__aenter__()
        if self.partitions:  # a node without partitions pulls none: it must not be counted in the shares
            self._sub = await self._nc.subscribe(WRITERS_SUBJECT, cb=self._answer)
            self._task = asyncio.create_task(self._loop(), name="tickstock-partitions")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        stops = [self._stop(p, cooloff=False) for p in list(self.running)]
        if self.shared is not None:
            stops.append(self.shared.__aexit__(None, None, None))
        await asyncio.gather(*stops)
        log.info("partitions: writers stopped (node %s)", self.node)
