"""The Redis connection: open a client, check Redis answers, and bound every later call.

The response cache (:mod:`store.cache`) and the rate limiter run on the client this opens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from store.pool import DEFAULT_CONNECT_TIMEOUT_S

__all__ = ["CacheError", "open_redis"]

DEFAULT_SOCKET_TIMEOUT_S = 0.25
DEFAULT_MAX_CONNECTIONS = 64


class CacheError(RedisError):
    """Redis could not be reached at start-up."""


@asynccontextmanager
async def open_redis(
    url: str,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncIterator[aioredis.Redis]:
    """Open a Redis client on ``url`` and check it answers within ``connect_timeout_s``.

    Raises :class:`CacheError` if it does not. Later calls time out after ``socket_timeout_s``, so a
    slow or dead Redis costs callers little; they treat any ``RedisError`` as a cache miss.
    """
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=connect_timeout_s,
        max_connections=max_connections,
        health_check_interval=30,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise CacheError(f"cannot connect to Redis at {url}: {str(exc) or type(exc).__name__}") from exc
    await client.aclose()
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=socket_timeout_s * 4,
        socket_timeout=socket_timeout_s,
        max_connections=max_connections,
        health_check_interval=30,
    )
    try:
        yield client
    finally:
        await client.aclose()
