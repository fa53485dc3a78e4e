"""What a command runs on: embedded servers for the unset URLs, and a migrated database."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path

from api.app import ConfigurationError
from api.cli.console import say
from api.settings import Settings
from hub.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, EmbeddedServer
from hub.embedded.credentials import CREDENTIALS_FILE, NATS_USERS, Credentials, load_or_create
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
    settings with those URLs filled in; stop the servers in reverse order on exit.

    The servers are locked down (NATS users, a Redis password, a PostgreSQL password) with the
    credentials kept in the data folder: made and printed on first use, reused after."""
    data_dir = settings.data_dir.resolve()
    servers: list[tuple[str, EmbeddedServer]] = []
    wanted = [name for name in settings.embedded if name in only]
    if not wanted:
        yield settings
        return
    credentials, created = _credentials(data_dir)
    nats = EmbeddedNats(data_dir / "nats", credentials=credentials)
    if "nats" in wanted:
        servers.append(("nats_url", nats))
    if "postgres" in wanted:
        postgres = EmbeddedPostgres(data_dir / "postgres", durable=durable, password=credentials.postgres)
        servers.append(("database_url", postgres))
    if "redis" in wanted:
        servers.append(("redis_url", EmbeddedRedis(data_dir / "redis", password=credentials.redis)))
    urls: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        for field, server in servers:
            say(f"starting {server.name} (embedded, data in {server.data_dir}) ...")
            started = time.monotonic()
            await stack.enter_async_context(server)
            say(f"  {server.name} ready on {server.host}:{server.port} in {time.monotonic() - started:.2f} s")
            urls[field] = server.url
        if created:
            _announce(data_dir, credentials, nats if "nats" in wanted else None)

        def stopping() -> None:
            if servers:
                say("stopping embedded servers ...")

        stack.callback(stopping)
        yield dataclasses.replace(settings, **urls)  # type: ignore[arg-type]  # only the *_url fields
    if servers:
        say("embedded servers stopped")


def _credentials(data_dir: Path) -> tuple[Credentials, bool]:
    """The data folder's credentials; made (and said so) on first use. A folder made before the
    lock-down (servers' data, no credentials) is migrated: its servers get the new passwords."""
    existed = any((data_dir / name).exists() for name in ("nats", "postgres", "redis"))
    try:
        credentials, created = load_or_create(data_dir)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if created and existed:
        say(
            f"locking down the servers of {data_dir} (made before credentials were): NATS users, "
            "a Redis password and a PostgreSQL password from now on"
        )
    elif not created:
        say(f"credentials: {data_dir / CREDENTIALS_FILE} (NATS users hub/producer/reader, Redis, PostgreSQL)")
    return credentials, created


def _announce(data_dir: Path, credentials: Credentials, nats: EmbeddedNats | None) -> None:
    """Print the new credentials once (they stay in the data folder)."""
    lines = [f"nats user {user}:  {credentials.nats_password(user)}" for user in NATS_USERS]
    lines += [f"postgres user postgres:  {credentials.postgres}", f"redis:  {credentials.redis}"]
    if nats is not None:
        lines += ["", f"producers connect with  {nats.url_for('producer')}"]
        lines += [f"readers connect with    {nats.url_for('reader')}", "(the ports change between runs)"]
    shown = "\n    ".join(lines)
    say(
        f"new credentials, kept in {data_dir / CREDENTIALS_FILE} (mode 0600), shown only now:\n\n    {shown}\n"
    )


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
