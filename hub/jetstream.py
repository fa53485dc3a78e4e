"""The hub's JetStream topology: streams, consumers and their limits, set up idempotently.

| stream | subjects | retention | discard | why |
|---|---|---|---|---|
| ``TICKSTOCK_INGEST`` | ``tickstock.ingest.>``, stored as ``tickstock.ingestp.<p>.<tf>.<sym>`` | work queue | **new** | an accepted event must never be dropped to make room: when full, producers get an error and retry |
| ``TICKSTOCK_PATTERNS`` | ``tickstock.patterns.>`` | limits (age, bytes) | old | a replayable history for resume; PostgreSQL is the system of record |
| ``TICKSTOCK_DLQ`` | ``tickstock.dlq.>`` | limits | old | a feed for alerting; the ``dead_letters`` table is the record |
| ``TICKSTOCK_ADVISORIES`` | max-deliveries advisories of the writer | limits | old | advisories survive a hub restart, so no exhausted event escapes the DLQ |

Partitions (``Topology.partitions`` = P > 0): the ingest stream's subject transform stores
``tickstock.ingest.<tf>.<sym>`` as ``tickstock.ingestp.<partition(P, sym)>.<tf>.<sym>``; partition ``p`` has its
own durable consumer ``hub-writer-p<p>`` with a pinned-client priority group (:data:`PIN_GROUP`), so one
hub node at a time pulls it and every symbol's events are handled in stream order. Subjects the transform
does not match (``tickstock.ingest.unparsed``, hostile ones) and messages stored before the transform
existed stay on ``hub-writer``, shared by every node. P = 0 is the old layout: ``hub-writer`` alone.

Calling :func:`ensure_topology` on every start is safe on every node: a missing stream or consumer is
created, an existing one is updated to the configuration below.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import NotFoundError, ServerError

from hub.subjects import (
    CLEAN_WILDCARD,
    DLQ_WILDCARD,
    INGEST_WILDCARD,
    MAX_DELIVERIES_ADVISORY,
    partition_filter,
    partition_transform,
)

__all__ = [
    "ADVISORY_STREAM",
    "DEADLETTER_CONSUMER",
    "DEFAULT_PARTITIONS",
    "DEFAULT_PARTITION_ACK_WAIT_S",
    "DEFAULT_PIN_TIMEOUT_S",
    "DLQ_STREAM",
    "INGEST_STREAM",
    "MAX_PARTITIONS",
    "MAX_REPLICAS",
    "PATTERNS_STREAM",
    "PIN_GROUP",
    "WRITER_CONSUMER",
    "Topology",
    "add_stream",
    "ensure_topology",
    "partition_consumer",
    "unpin",
]

log = logging.getLogger("tickstock.jetstream")

INGEST_STREAM = "TICKSTOCK_INGEST"
PATTERNS_STREAM = "TICKSTOCK_PATTERNS"
DLQ_STREAM = "TICKSTOCK_DLQ"
ADVISORY_STREAM = "TICKSTOCK_ADVISORIES"
WRITER_CONSUMER = "hub-writer"
DEADLETTER_CONSUMER = "hub-deadletters"
DEFAULT_PARTITIONS = 0  # opt in: partitions keep each symbol's order across nodes, not the global order
MAX_PARTITIONS = 128  # a consumer each; with the others, within one page of the consumer list (256)
MAX_REPLICAS = 5  # JetStream's limit
DEFAULT_PIN_TIMEOUT_S = 3.0
DEFAULT_PARTITION_ACK_WAIT_S = 6.0
PIN_GROUP = "hub"
"""The priority group of the partition consumers: pull requests name it, the server pins one client."""

DAY_S = 86_400.0
GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Topology:
    """Limits of the streams and the writer's consumer. Defaults suit one hub on a small machine:
    JetStream reserves each stream's ``max_bytes`` from the server's store (3.6 GiB in all here)."""

    ingest_max_bytes: int = 1 * GIB
    ingest_max_msgs: int = 5_000_000
    ingest_max_age_s: float = 7 * DAY_S
    ingest_max_msg_size: int = 8 * MIB  # larger than any valid event, so oversized ones reach the DLQ
    patterns_max_bytes: int = 2 * GIB
    patterns_max_msgs: int = 20_000_000
    patterns_max_age_s: float = 7 * DAY_S
    dlq_max_bytes: int = 512 * MIB
    dlq_max_age_s: float = 30 * DAY_S
    duplicate_window_s: float = 600.0
    ack_wait_s: float = 15.0
    max_deliver: int = 30
    max_ack_pending: int = 20_000
    partitions: int = (
        DEFAULT_PARTITIONS  # 0: no partitions, every node shares hub-writer (order per node only)
    )
    pin_timeout_s: float = (
        DEFAULT_PIN_TIMEOUT_S  # a pinned node that has not pulled for this long loses its partitions
    )
    partition_ack_wait_s: float = DEFAULT_PARTITION_ACK_WAIT_S  # a dead node's messages come back after this
    partition_max_ack_pending: int = 2_000
    replicas: int = 1  # of every stream (and so of its consumers): 3 in a 3-node cluster  # at least what a writer holds: a batch and the one fetched ahead


def partition_consumer(partition: int) -> str:
    """The durable consumer of ingest partition ``partition``: ``hub-writer-p<partition>``."""
    return f"{WRITER_CONSUMER}-p{partition}"


def _streams(t: Topology) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=INGEST_STREAM,
            subjects=[INGEST_WILDCARD],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=t.replicas,
            discard=DiscardPolicy.NEW,
            max_bytes=t.ingest_max_bytes,
            max_msgs=t.ingest_max_msgs,
            max_age=t.ingest_max_age_s,
            max_msg_size=t.ingest_max_msg_size,
            duplicate_window=t.duplicate_window_s,
            subject_transform=(
                SubjectTransform(*partition_transform(t.partitions)) if t.partitions > 0 else None
            ),
            description="Raw pattern events from producers; consumed once by the hub writer.",
        ),
        StreamConfig(
            name=PATTERNS_STREAM,
            subjects=[CLEAN_WILDCARD],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=t.replicas,
            discard=DiscardPolicy.OLD,
            max_bytes=t.patterns_max_bytes,
            max_msgs=t.patterns_max_msgs,
            max_age=t.patterns_max_age_s,
            max_msg_size=1 * MIB,
            duplicate_window=t.duplicate_window_s,
            description="Validated, stored pattern events (schema v1), in store order.",
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_WILDCARD],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=t.replicas,
            discard=DiscardPolicy.OLD,
            max_bytes=t.dlq_max_bytes,
            max_age=t.dlq_max_age_s,
            duplicate_window=t.duplicate_window_s,
            description="Dead letters: original payload and headers plus the reason.",
        ),
        StreamConfig(
            name=ADVISORY_STREAM,
            subjects=[f"{MAX_DELIVERIES_ADVISORY}.{INGEST_STREAM}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=t.replicas,
            discard=DiscardPolicy.OLD,
            max_age=t.dlq_max_age_s,
            max_bytes=128 * MIB,
            description="Max-deliveries advisories of the ingest consumers, turned into dead letters.",
        ),
    ]


def _consumers(t: Topology) -> list[tuple[str, ConsumerConfig]]:
    return [
        (
            INGEST_STREAM,
            ConsumerConfig(
                durable_name=WRITER_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=t.ack_wait_s,
                max_deliver=t.max_deliver,
                max_ack_pending=t.max_ack_pending,
                filter_subject=INGEST_WILDCARD,
                max_waiting=512,
                description="The hub writer, shared by every hub node.",
            ),
        ),
        (
            ADVISORY_STREAM,
            ConsumerConfig(
                durable_name=DEADLETTER_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30.0,
                max_ack_pending=1_000,
                description="Turns max-deliveries advisories into dead letters.",
            ),
        ),
    ]


def _partition_consumers(t: Topology) -> list[tuple[str, dict[str, object]]]:
    """Raw configurations: nats-py's ConsumerConfig has no priority-group fields (ADR-42)."""
    return [
        (
            partition_consumer(p),
            {
                "durable_name": partition_consumer(p),
                "ack_policy": "explicit",
                "deliver_policy": "all",
                "ack_wait": int(t.partition_ack_wait_s * 1e9),
                "max_deliver": t.max_deliver,
                "max_ack_pending": t.partition_max_ack_pending,
                "filter_subject": partition_filter(p),
                "max_waiting": 512,
                "priority_groups": [PIN_GROUP],
                "priority_policy": "pinned_client",
                "priority_timeout": int(t.pin_timeout_s * 1e9),
                "description": f"The hub writer of ingest partition {p}: one pinned node at a time.",
            },
        )
        for p in range(t.partitions)
    ]


async def unpin(js: JetStreamContext, consumer: str) -> None:
    """Unpin the node pinned on ``consumer``'s group: the next waiting pull request is pinned instead."""
    body = json.dumps({"group": PIN_GROUP}).encode()
    await js._api_request(f"{js._prefix}.CONSUMER.UNPIN.{INGEST_STREAM}.{consumer}", body)


STORE_BUSY = 10049  # "error creating store for stream": the store of a just-deleted namesake is still going


async def add_stream(js: JetStreamContext, config: StreamConfig, *, patience_s: float = 5.0) -> None:
    """Create a stream that is empty, whatever a just-deleted stream of that name left behind.

    Right after a stream is deleted, the server may refuse to create its namesake while the old store is
    being removed (waited out here, up to ``patience_s``), or, on a loaded machine, create it over the
    old store's files and answer with the deleted stream's messages in it (seen with nats-server 2.15:
    about 1 in 15 quick recreations with both cores busy). Those are purged, up to the last sequence the
    creation reported, so a message published after the creation is kept.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    delay = 0.02
    while True:
        try:
            info = await js.add_stream(config)
        except ServerError as exc:
            if exc.err_code != STORE_BUSY or loop.time() + delay > deadline:
                raise
            log.warning(
                "stream %s: store still busy (%s); retrying in %.0f ms",
                config.name,
                exc.description,
                delay * 1000,
            )
        else:
            if info.state.messages:
                log.warning(
                    "stream %s came back with %d message(s) of a deleted namesake; purging them",
                    config.name,
                    info.state.messages,
                )
                await js.purge_stream(config.name or "", seq=info.state.last_seq + 1)
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def ensure_topology(js: JetStreamContext, topology: Topology | None = None) -> None:
    """Create or update every stream and consumer. Raises nats-py's errors if the server refuses."""
    t = topology or Topology()
    for config in _streams(t):
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            await add_stream(js, config)
            log.info("created stream %s", config.name)
        else:
            await js.update_stream(config)
    for stream, consumer in _consumers(t):
        await js.add_consumer(stream, consumer)  # create-or-update for a durable with the same config
    for name, raw in _partition_consumers(t):
        body = json.dumps({"stream_name": INGEST_STREAM, "config": raw}).encode()
        await js._api_request(f"{js._prefix}.CONSUMER.CREATE.{INGEST_STREAM}.{name}", body)
    log.info("jetstream topology ready (%s)", ", ".join(c.name or "" for c in _streams(t)))
