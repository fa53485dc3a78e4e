from __future__ import annotations

import psycopg
import pytest

from store.pool import StoreError, open_pool, ping
from tests.support import database_url_for, free_port, within


async def test_pool_gives_dict_rows_and_applies_the_statement_timeout(database_url: str) -> None:
    async with open_pool(database_url, min_size=1, max_size=2, statement_timeout_ms=200) as pool:
        await ping(pool)
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT current_setting('statement_timeout') AS t, "
                    "current_setting('application_name') AS app"
                )
            ).fetchone()
            assert row == {"t": "200ms", "app": "tickstock-hub"}
            with pytest.raises(psycopg.errors.QueryCanceled):
                await conn.execute("SELECT pg_sleep(2)")
        assert pool.max_size == 2


async def test_unreachable_database_fails_fast_with_one_line() -> None:
    async with within(30, what="connecting to a closed port"):  # a deadline, not a measurement
        with pytest.raises(StoreError, match="cannot connect to PostgreSQL: ") as info:
            async with open_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout_s=2):
                pass
    assert "\n" not in str(info.value)
    assert isinstance(info.value, psycopg.OperationalError)  # callers' existing handlers still work


async def test_missing_database_names_it(database_url: str) -> None:
    with pytest.raises(StoreError, match='database "no_such_db" does not exist'):
        async with open_pool(database_url_for(database_url, "no_such_db")):
            pass
