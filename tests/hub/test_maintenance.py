from __future__ import annotations

from urllib.parse import urlsplit

from psycopg_pool import AsyncConnectionPool

from hub.maintenance import Maintenance
from store.pool import open_pool
from tests.support import TcpProxy, wait_for


async def _partitions(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'pattern_events'::regclass"
            )
        ).fetchone()
    return int(row["n"]) if row else 0


async def test_runs_on_entry_then_on_schedule_and_stops(pool: AsyncConnectionPool) -> None:
    before = await _partitions(pool)
    async with Maintenance(pool, interval_s=0.05, ahead_days=400) as maintenance:
        assert maintenance.rounds >= 1
        assert await _partitions(pool) >= before + 12  # about a year of monthly partitions ahead
        await wait_for(lambda: maintenance.rounds >= 3, timeout=30, interval=0.02, what="three rounds")
        task = maintenance._task
        assert task is not None
    rounds = maintenance.rounds
    assert task.done()  # cancelled and awaited on exit: no round can follow
    assert maintenance.rounds == rounds
    assert maintenance.failures == 0


async def test_a_failed_round_is_counted_and_the_next_one_recovers(database_url: str) -> None:
    parts = urlsplit(database_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        async with open_pool(url, min_size=1, max_size=2, timeout_s=0.3) as pool:
            async with Maintenance(pool, interval_s=0.1, ahead_days=1) as maintenance:
                await proxy.cut()
                await wait_for(
                    lambda: maintenance.failures > 0, timeout=30, interval=0.02, what="a failed round"
                )
                await proxy.restore()
                rounds = maintenance.rounds
                await wait_for(
                    lambda: maintenance.rounds > rounds,
                    timeout=30,
                    interval=0.02,
                    what="a round after the restore",
                )
