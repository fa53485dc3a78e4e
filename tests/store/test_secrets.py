from __future__ import annotations

import asyncio

import psycopg
import pytest

from store.secrets import SECRET_BYTES, deployment_secret


async def test_a_secret_is_random_created_once_and_shared(pool) -> None:
    first = await asyncio.gather(*(deployment_secret(pool, "cursor") for _ in range(5)))
    assert len(set(first)) == 1
    assert len(first[0]) == SECRET_BYTES
    assert await deployment_secret(pool, "cursor") == first[0]
    assert await deployment_secret(pool, "producer") != first[0]


async def test_a_bad_name_is_refused_by_the_database(pool) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        await deployment_secret(pool, "Bad Name")
