"""What a command runs on: embedded servers for the unset URLs, and a migrated database."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from api.app import ConfigurationError
from api.cli.console import say
from api.settings import Settings
from hub.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, EmbeddedServer
from store.migrate import migrate
from store.pool import open_pool
from store.reference import load_reference_data

__all__ = ["database_only", "embedded_servers", "prepare_database"]


@asynccontextmanager
async def embedded_servers(
    settings: Settings,
    *,
    only: tuple[str, ...] = ("nats", "postgres", "redis"),
    durable: bool = True,
) -> AsyncIterator[Settings]:
    """Start an embedded server for each URL ``settings`` leaves unset (among ``only``); yield the
    settings with those URLs filled in; stop the servers in reverse order on exit."""
    data_dir = settings.data_dir.resolve()
    servers: list[tuple[str, EmbeddedServer]] = []
    wanted = [name for name in settings.embedded if name in only]
    if "nats" in wanted:
        servers.append(("nats_url", EmbeddedNats(data_dir / "nats")))
    if "postgres" in wanted:
        servers.append(("database_url", EmbeddedPostgres(data_dir / "postgres", durable=durable)))
    if "redis" in wanted:
        servers.append(("redis_url", EmbeddedRedis(data_dir / "redis")))
    urls: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        for field, server in servers:
            say(f"starting {server.name} (embedded, data in {server.data_dir}) ...")
            started = time.monotonic()
            await stack.enter_async_context(server)
            say(f"  {server.name} ready on {server.host}:{server.port} in {time.monotonic() - started:.2f} s")
            urls[field] = server.url

        def stopping() -> None:
            if servers:
                say("stopping embedded servers ...")

        stack.callback(stopping)
        yield dataclasses.replace(settings, **urls)  # type: ignore[arg-type]  # only the *_url fields
    if servers:
        say("embedded servers stopped")


async def prepare_database(settings: Settings, *, reference: bool = True) -> None:
    """Apply migrations and (optionally) load the reference data."""
    if not settings.database_url:
        raise ConfigurationError("no database URL")
    async with open_pool(
        settings.database_url, min_size=1, max_size=2, connect_timeout_s=settings.connect_timeout_s
    ) as pool:
        async with pool.connection() as conn:
            applied = await migrate(conn)
        say(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
        if reference:
            started = time.monotonic()
            counts = await load_reference_data(pool)
            say(
                f"reference data: {counts.symbols:,} symbols, {counts.universes} universes "
                f"({counts.sector_universes} sectors), {counts.patterns} pattern definitions "
                f"in {time.monotonic() - started:.2f} s"
            )


def database_only(settings: Settings) -> AbstractAsyncContextManager[Settings]:
    """No database URL: work on the embedded cluster in the data folder (the one `tickstock run` uses)."""
    return embedded_servers(settings, only=("postgres",))
