"""Per-deployment secrets: random keys made once and shared by every hub node through PostgreSQL.

The first node that asks for a name creates it (``INSERT … ON CONFLICT DO NOTHING``, so two nodes
asking at once agree on one value); every later call returns the same bytes. Use it for keys that must
be the same on all nodes but need no operator: the scan-cursor MAC key, the producer-header MAC key.
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = ["SECRET_BYTES", "deployment_secret"]

SECRET_BYTES = 32


async def deployment_secret(pool: AsyncConnectionPool[Any], name: str) -> bytes:
    """The secret called ``name`` (``[a-z][a-z0-9_]*``), created with ``SECRET_BYTES`` random bytes on
    first use. Waits for a pooled connection (the pool's timeout); raises psycopg's errors."""
    async with pool.connection() as conn:
        return await _get_or_create(conn, name)


async def _get_or_create(conn: psycopg.AsyncConnection[Any], name: str) -> bytes:
    await conn.execute(
        "INSERT INTO hub_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (name, secrets.token_bytes(SECRET_BYTES)),
    )
    cur = await conn.execute("SELECT value FROM hub_secrets WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None:  # pragma: no cover - the row was inserted or already there
        raise LookupError(f"secret {name!r} vanished")
    value = row["value"] if isinstance(row, dict) else row[0]
    return bytes(value)
