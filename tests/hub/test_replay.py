"""Replaying dead letters when NATS is gone: a HubError (a 503, a one-line CLI error), nothing marked
replayed; and the bulk replay's bounds."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from hub.deadletters import MAX_REPLAY_BATCH, DeadLetterer
from hub.errors import HubError, ReplayError
from hub.metrics import Metrics
from store.deadletters import get_dead_letter, record_dead_letter
from tests.conftest import Servers
from tests.support import make_event


async def test_a_replay_without_nats_is_a_hub_error_and_nothing_is_marked(
    pool: AsyncConnectionPool, servers: Servers
) -> None:
    async with pool.connection() as conn:
        letter_id = await record_dead_letter(
            conn,
            source_key="replay-no-nats",
            subject="tickstock.ingest.daily.AAPL",
            payload=json.dumps(make_event(1, prefix="no-nats")).encode(),
            headers={},
            reason="unknown_pattern",
        )
    nc = NATS()
    await nc.connect(servers.nats_url)
    js = nc.jetstream()
    await nc.close()
    letterer = DeadLetterer(pool=pool, js=js, metrics=Metrics())
    catalog = CatalogCache()  # permissive: every name passes, so the publish is what fails
    with pytest.raises(HubError, match="replay of dead letter") as one:
        await letterer.replay(letter_id, catalog=catalog)
    assert not isinstance(one.value, ReplayError)
    with pytest.raises(HubError, match="replay of unknown_pattern dead letters stopped"):
        await letterer.replay_reason("unknown_pattern", catalog=catalog, limit=10)
    async with pool.connection() as conn:
        letter = await get_dead_letter(conn, letter_id)
    assert letter is not None and letter.replayed_at is None and letter.replay_count == 0
    for limit in (0, MAX_REPLAY_BATCH + 1):
        with pytest.raises(ValueError, match="limit must be between"):
            await letterer.replay_reason("unknown_pattern", catalog=catalog, limit=limit)
