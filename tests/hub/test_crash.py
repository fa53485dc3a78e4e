"""``kill -9`` of a hub process in the middle of ingest loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import (
    clean_stream_messages,
    free_port,
    make_event,
    publish_events,
    wait_for,
    wait_for_sync,
    wait_settled,
)

SYMBOLS = ["AAPL", "MSFT", "IBM", "KO", "XOM", "BRK.B"]


def _start(settings: Settings) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
    env.update(
        TICKSTOCK_DATABASE_URL=settings.database_url or "",
        TICKSTOCK_NATS_URL=settings.nats_url or "",
        TICKSTOCK_REDIS_URL=settings.redis_url or "",
        TICKSTOCK_JWT_SECRET=JWT_SECRET,
        TICKSTOCK_INGEST_ACK_WAIT_S="2",
        TICKSTOCK_WRITER_BATCH="200",
        TICKSTOCK_LOG_LEVEL="WARNING",
        TICKSTOCK_WORKERS="1",  # kill -9 ends the whole node, no supervisor to restart it
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for_sync(ready, timeout=60, interval=0.1, what="the hub to start")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    return proc, port


async def _count(pool: AsyncConnectionPool, sql: str) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(sql)).fetchone()
    return int(next(iter(row.values()))) if row else 0


@pytest.mark.slow
async def test_kill_9_mid_ingest_then_restart_loses_and_duplicates_nothing(
    settings: Settings, ref_pool, nats_client
) -> None:  # type: ignore[no-untyped-def]
    await delete_all_streams(settings.nats_url or "")
    first, _ = _start(settings)
    js = nats_client.jetstream()
    total = 8000
    events = [make_event(i, prefix="crash", symbol=SYMBOLS[i % len(SYMBOLS)]) for i in range(total)]

    async def produce() -> None:
        for start in range(0, total, 500):
            await publish_events(js, events[start : start + 500])
            await asyncio.sleep(0.05)

    producer = asyncio.create_task(produce())
    stored = "SELECT count(*) FROM pattern_events WHERE id LIKE 'crash-%%'"
    await wait_for(lambda: _at_least(ref_pool, stored, 1500), timeout=60, what="some events stored")
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = await _count(ref_pool, stored)
    await producer
    second, _ = _start(settings)
    try:
        await wait_for(
            lambda: _at_least(
                ref_pool,
                "SELECT count(*) FROM pattern_events WHERE id LIKE 'crash-%%' AND stream_seq IS NOT NULL",
                total,
            ),
            timeout=90,
            what="everything stored after the restart",
        )
        await wait_settled(js)
        msgs = await clean_stream_messages(js)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert at_kill < total  # the kill really happened mid-ingest
    assert await _count(ref_pool, stored) == total
    assert (
        await _count(ref_pool, "SELECT count(DISTINCT id) FROM pattern_events WHERE id LIKE 'crash-%%'")
        == total
    )
    ids = [json.loads(m.data)["id"] for m in msgs if json.loads(m.data)["id"].startswith("crash-")]
    assert len(ids) == len(set(ids)) == total
    assert await _count(ref_pool, "SELECT count(*) FROM dead_letters") == 0


async def _at_least(pool: AsyncConnectionPool, sql: str, n: int) -> bool:
    return await _count(pool, sql) >= n
