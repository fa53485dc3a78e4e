"""The hub on a local 3-node NATS cluster (``hub.embedded.EmbeddedNatsCluster``) with every stream at R3:
two hub nodes ingest, and the ingest stream's leader is killed (``kill -9``) in the middle of it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings
from hub.embedded import EmbeddedNatsCluster, lead_on
from hub.jetstream import INGEST_STREAM, PATTERNS_STREAM
from ops.harness import growth_moments, longest_pause
from tests.hub.test_partitions import Trickle, _published, _shared_out, publish_chains, violations
from tests.support import LiveHub, clean_stream_messages, stored_count, wait_for, wait_settled

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    with EmbeddedNatsCluster(Path(tmp_path_factory.mktemp("nats-cluster"))) as c:
        yield c


async def test_two_hub_nodes_on_a_three_node_cluster_survive_the_ingest_leaders_kill_9(
    settings: Settings, ref_pool: AsyncConnectionPool, cluster: EmbeddedNatsCluster
) -> None:
    node = dataclasses.replace(
        settings, nats_url=cluster.url, nats_replicas=3, writer_batch=50, ingest_partitions=8
    )
    total = 4000
    client = NATS()
    # The test's own client rides through the kill too: it knows every member.
    await client.connect(
        servers=cluster.urls, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    js = client.jetstream()
    try:
        async with LiveHub(node) as a, LiveHub(node) as b:
            for stream in (INGEST_STREAM, PATTERNS_STREAM):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3 and info.cluster is not None
                assert len(info.cluster.replicas or []) == 2, info.cluster
            async with Trickle(client, prefix="clwarm") as trickle:
                await _shared_out(client, 2, node.ingest_partitions)
            producer = asyncio.create_task(publish_chains(client, "cluster", total, tasks=2))
            await wait_for(
                lambda: _published(ref_pool, "cluster", total * 3 // 10), timeout=60, what="30 % stored"
            )
            # The harshest case: the ingest leader is the member both hub nodes are connected to.
            leader = await lead_on(client, INGEST_STREAM, cluster.members[0].server_name)
            progress = asyncio.create_task(
                growth_moments(lambda: stored_count(ref_pool, "cluster"), total, timeout_s=120)
            )
            killed = time.monotonic()
            cluster.member(leader or "").kill()
            await producer
            await wait_for(
                lambda: _published(ref_pool, "cluster", total), timeout=120, what="every event published"
            )
            moments = await progress
            paused = longest_pause(killed, moments)
            await wait_settled(js, timeout=60)
            new_leader = (await js.stream_info(INGEST_STREAM)).cluster.leader  # type: ignore[union-attr]
            batches = [a.hub.writer.batches, b.hub.writer.batches]
        msgs = await clean_stream_messages(js)
    finally:
        await client.close()
        for member in cluster.members:
            if not member.running:
                member.start()
    ids = [json.loads(m.data)["id"] for m in msgs]
    seen, bad = violations(msgs, "cluster")
    print(
        f"R3 cluster, 2 hub nodes (batches {batches}): ingest leader {leader} killed at 30 %, new leader "
        f"{new_leader}, longest ingest pause after it {paused:.1f} s; {seen} of {total} published, {bad} out of order, "
        f"{len(ids) - len(set(ids))} duplicated"
    )
    if bad:  # what an inversion looks like: the symbol's events around it, in clean-stream order
        per: dict[str, list[tuple[int, int]]] = {}
        for m in msgs:
            body = json.loads(m.data)
            if body["id"].startswith("cluster-"):
                per.setdefault(body["symbol"], []).append(
                    (int(body["id"].split("-")[1]), m.metadata.sequence.stream)
                )
        for symbol, seq in per.items():
            for k in range(1, len(seq)):
                if seq[k][0] < seq[k - 1][0]:
                    print("DEBUG inversion", symbol, seq[max(0, k - 4) : k + 4])
                    break
    assert new_leader != leader
    assert len(ids) == len(set(ids)) == total + trickle.published
    assert (seen, bad) == (total, 0)
    assert await stored_count(ref_pool, "cluster") == total
