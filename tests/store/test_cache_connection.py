from __future__ import annotations

import pytest

from store.cache_connection import CacheError, open_redis
from tests.support import free_port


async def test_open_redis_round_trip(redis_url: str) -> None:
    async with open_redis(redis_url) as client:
        await client.set("k", "v")
        assert await client.get("k") == b"v"


async def test_unreachable_redis_is_a_clear_error() -> None:
    with pytest.raises(CacheError, match=r"cannot connect to Redis at redis://127.0.0.1:\d+/0"):
        async with open_redis(f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=1):
            pass
