"""Shared fixtures: real servers, started once per session, isolated per module.

By default the suite starts embedded NATS (JetStream), PostgreSQL and Redis under a temporary folder.
With ``TICKSTOCK_TEST_EXTERNAL=1`` it uses ``TICKSTOCK_DATABASE_URL`` / ``TICKSTOCK_NATS_URL`` /
``TICKSTOCK_REDIS_URL`` instead (defaulting to this machine's standard loopback services).

Isolation: each test module gets its own database cloned from a migrated template (with or without
reference data), its own Redis database number (flushed), and JetStream streams are deleted before
each test that asks for ``jetstream``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from api.settings import Settings
from hub.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis
from store.migrate import migrate
from store.pool import open_pool
from tests.support import LiveHub, admin_url_for, database_url_for

EXTERNAL = os.environ.get("TICKSTOCK_TEST_EXTERNAL") == "1"
# Names carry the pid, so that two test sessions on one external server do not collide.
TEMPLATE = f"tickstock_test_template_{os.getpid()}"
TEMPLATE_REF = f"tickstock_test_template_ref_{os.getpid()}"
_redis_db = itertools.cycle(range(1, 16))
JWT_SECRET = "tests-only-secret-0123456789abcdef0123456789"
_db_counter = itertools.count(1)


@dataclass(frozen=True)
class Servers:
    """Where the session's servers are. ``database_url`` points at the maintenance database."""

    database_url: str
    nats_url: str
    redis_url: str
    data_dir: Path


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    if EXTERNAL:
        yield Servers(
            database_url=os.environ.get(
                "TICKSTOCK_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
            ),
            nats_url=os.environ.get("TICKSTOCK_NATS_URL", "nats://127.0.0.1:4222"),
            redis_url=os.environ.get("TICKSTOCK_REDIS_URL", "redis://127.0.0.1:6379/0"),
            data_dir=root,
        )
        return
    nats = EmbeddedNats(root / "nats")
    postgres = EmbeddedPostgres(root / "postgres", durable=False, database="postgres")
    redis = EmbeddedRedis(root / "redis")
    with nats, postgres, redis:
        yield Servers(database_url=postgres.url, nats_url=nats.url, redis_url=redis.url, data_dir=root)


def _create_template(admin: str, name: str, *, reference: bool) -> None:
    import asyncio

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')

    async def build() -> None:
        async with open_pool(database_url_for(admin, name), min_size=1, max_size=2) as pool:
            async with pool.connection() as conn:
                await migrate(conn)
            if reference:
                from store.reference import load_reference_data

                await load_reference_data(pool)

    asyncio.run(build())


def _template(servers: Servers, name: str, *, reference: bool) -> Iterator[str]:
    admin = admin_url_for(servers.database_url)
    _create_template(admin, name, reference=reference)
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template(servers: Servers) -> Iterator[str]:
    """A migrated template database without reference data."""
    yield from _template(servers, TEMPLATE, reference=False)


@pytest.fixture(scope="session")
def template_ref(servers: Servers) -> Iterator[str]:
    """A migrated template database with the reference data loaded."""
    yield from _template(servers, TEMPLATE_REF, reference=True)


def _clone(servers: Servers, template: str, module: str) -> tuple[str, str]:
    slug = re.sub(r"[^a-z0-9]+", "_", module.lower())[-40:]
    name = f"t{os.getpid()}_{next(_db_counter)}_{slug}"
    admin = admin_url_for(servers.database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name, database_url_for(admin, name)


def _drop(servers: Servers, name: str) -> None:
    with psycopg.connect(admin_url_for(servers.database_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def database_url(servers: Servers, template: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database private to this test module, without reference data."""
    name, url = _clone(servers, template, request.module.__name__)
    yield url
    _drop(servers, name)


@pytest.fixture(scope="module")
def ref_database_url(servers: Servers, template_ref: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database private to this test module, with the reference data loaded."""
    name, url = _clone(servers, template_ref, request.module.__name__ + "_ref")
    yield url
    _drop(servers, name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with open_pool(database_url, min_size=1, max_size=4) as p:
        yield p


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ref_pool(ref_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with open_pool(ref_database_url, min_size=1, max_size=4) as p:
        yield p


@pytest.fixture(scope="module")
def redis_url(servers: Servers) -> str:
    """A Redis database number for this module, flushed before it starts."""
    base = servers.redis_url.rsplit("/", 1)[0]
    url = f"{base}/{next(_redis_db)}"
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def nats_client(servers: Servers) -> AsyncIterator[NATS]:
    client = NATS()
    await client.connect(servers.nats_url, name="tickstock-tests", connect_timeout=5)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def jetstream(nats_client: NATS) -> AsyncIterator[JetStreamContext]:
    """A JetStream context with every stream deleted before the test."""
    js = nats_client.jetstream()
    for name in await js.streams_info():
        await js.delete_stream(name.config.name)
    yield js


@pytest.fixture(scope="module")
def settings(
    servers: Servers, ref_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Hub settings on this module's database (with reference data), Redis db and the session NATS."""
    return Settings(
        database_url=ref_database_url,
        nats_url=servers.nats_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("hub"),
        maintenance_interval_s=3600,
        pool_min_size=1,
        pool_max_size=4,
        jwt_secret=JWT_SECRET,
        # Every test connects from 127.0.0.1: the per-address limit of failed authentications would
        # throttle the suites that test 401s. tests/api/test_hostile_auth.py turns it on.
        auth_failure_per_s=0,
        # Shedding on how long events waited is tested on its own (tests/api/test_ws_overload.py); a
        # loaded test machine hands events on late without any node being past its capacity.
        ws_shed_lag_s=30.0,
    )


async def delete_all_streams(url: str) -> None:
    client = NATS()
    await client.connect(url, connect_timeout=5)
    js = client.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)
    await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live_hub(settings: Settings) -> AsyncIterator[LiveHub]:
    """The whole hub served by uvicorn on a free loopback port, for this module, on fresh streams."""
    await delete_all_streams(settings.nats_url or "")
    async with LiveHub(settings) as hub:
        yield hub
