"""The PostgreSQL connection pool (psycopg3 ``AsyncConnectionPool``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from store.errors import StoreError, StoreUnavailable

__all__ = ["StoreError", "StoreUnavailable", "open_pool", "ping"]

DEFAULT_MIN_SIZE = 2
DEFAULT_MAX_SIZE = 10
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_IDLE_S = 300.0
DEFAULT_STATEMENT_TIMEOUT_MS = 5_000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
APPLICATION_NAME = "tickstock-hub"


@asynccontextmanager
async def open_pool(
    url: str,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_idle_s: float = DEFAULT_MAX_IDLE_S,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> AsyncIterator[AsyncConnectionPool]:
    """Open a pool on ``url`` and close it on exit.

    Waits up to ``connect_timeout_s`` for the first ``min_size`` connections and raises
    :class:`StoreUnavailable` (a :class:`StoreError` and psycopg's ``OperationalError``) with the
    server's reason if the database cannot be reached. Every connection gets ``statement_timeout`` and an application name; a connection is checked before it is lent.
    Rows come back as dicts.
    """
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, int(connect_timeout_s)),
        "application_name": APPLICATION_NAME,
        "options": f"-c statement_timeout={int(statement_timeout_ms)}",
        "row_factory": dict_row,
        "autocommit": True,
    }
    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout_s,
        max_idle=max_idle_s,
        kwargs=kwargs,
        check=AsyncConnectionPool.check_connection,
        name="tickstock",
        open=False,
    )
    try:
        # Fail fast with the real reason instead of a pool timeout on a wrong URL.
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=kwargs["connect_timeout"]):
            pass
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {_first_line(exc)}") from exc
    await pool.open(wait=True, timeout=connect_timeout_s)
    try:
        yield pool
    finally:
        await pool.close()


async def ping(pool: AsyncConnectionPool) -> None:
    """Run ``SELECT 1`` on a pooled connection (raises on failure)."""
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
