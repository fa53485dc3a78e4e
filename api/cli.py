"""The ``tickstock`` command: the outermost layer, which composes everything else.

Every subcommand has ``--help``. Errors the user can act on (a wrong URL, a busy port, a server that
would not start) end the command with one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from nats.errors import Error as NatsError
from redis.exceptions import RedisError

from api.app import ConfigurationError, create_app, open_hub
from api.settings import Settings, SettingsError
from hub.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, EmbeddedServer
from store.migrate import migrate
from store.reference import load_reference_data
from store.pool import open_pool

__all__ = ["main"]

log = logging.getLogger("tickstock")

EXIT_ERROR = 1
EXIT_USAGE = 2
SHUTDOWN_GRACE_S = 10

# Failures that mean "this configuration does not work": reported in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    SettingsError, ConfigurationError, EmbeddedError, psycopg.Error, NatsError, RedisError, OSError,
)


def _say(message: str) -> None:
    print(f"tickstock: {message}", file=sys.stderr, flush=True)


# -- embedded servers --------------------------------------------------------------------------------

@asynccontextmanager
async def embedded_servers(
    settings: Settings, *, only: tuple[str, ...] = ("nats", "postgres", "redis"), durable: bool = True,
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
            _say(f"starting {server.name} (embedded, data in {server.data_dir}) ...")
            started = time.monotonic()
            await stack.enter_async_context(server)
            _say(f"  {server.name} ready on {server.host}:{server.port} in {time.monotonic() - started:.2f} s")
            urls[field] = server.url

        def stopping() -> None:
            if servers:
                _say("stopping embedded servers ...")

        stack.callback(stopping)
        yield dataclasses.replace(settings, **urls)
    if servers:
        _say("embedded servers stopped")


async def prepare_database(settings: Settings, *, reference: bool = True) -> None:
    """Apply migrations and (optionally) load the reference data."""
    if not settings.database_url:
        raise ConfigurationError("no database URL")
    async with open_pool(settings.database_url, min_size=1, max_size=2,
                         connect_timeout_s=settings.connect_timeout_s) as pool:
        async with pool.connection() as conn:
            applied = await migrate(conn)
        _say(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
        if reference:
            started = time.monotonic()
            counts = await load_reference_data(pool)
            _say(
                f"reference data: {counts.symbols:,} symbols, {counts.universes} universes "
                f"({counts.sector_universes} sectors), {counts.patterns} pattern definitions "
                f"in {time.monotonic() - started:.2f} s"
            )


# -- serving -----------------------------------------------------------------------------------------

class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the captured signal after shutdown: the CLI still has resources to
    close in order (hub, then embedded servers) when ``serve()`` returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, *, ready: Callable[[], None] | None = None) -> None:
    """Open the hub's resources, then serve HTTP and websockets until SIGINT/SIGTERM."""
    sock = _bind(settings.host, settings.port)
    try:
        async with open_hub(settings) as hub:
            app = create_app(settings, hub=hub)
            config = uvicorn.Config(
                app, log_level=settings.log_level.lower(), access_log=False, lifespan="on",
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, ws_max_size=1 << 20, server_header=False,
            )
            server = _Server(config)
            _say(f"serving on http://{settings.host}:{settings.port}  (Ctrl-C to stop)")
            if ready is not None:
                ready()
            await server.serve(sockets=[sock])
            _say("http server stopped; closing the hub ...")
    finally:
        sock.close()


# -- subcommands -------------------------------------------------------------------------------------

async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    async with embedded_servers(settings) as full:
        await prepare_database(full, reference=not args.skip_reference_data)
        await serve(full)


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    if settings.embedded:
        names = {"nats": "TICKSTOCK_NATS_URL", "postgres": "TICKSTOCK_DATABASE_URL", "redis": "TICKSTOCK_REDIS_URL"}
        missing = ", ".join(names[n] for n in settings.embedded)
        raise ConfigurationError(f"`tickstock serve` uses external servers only; set {missing} (or use `tickstock run`)")
    await serve(settings)


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    async with _database_only(settings) as full:
        await prepare_database(full, reference=False)


async def cmd_load_reference_data(settings: Settings, args: argparse.Namespace) -> None:
    async with _database_only(settings) as full:
        await prepare_database(full, reference=True)


def _database_only(settings: Settings) -> contextlib.AbstractAsyncContextManager[Settings]:
    """No database URL: work on the embedded cluster in the data folder (the one `tickstock run` uses)."""
    return embedded_servers(settings, only=("postgres",))


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickstock",
        description="TickStock Hub: realtime pattern events over NATS JetStream, PostgreSQL, Redis and websockets.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_text: str, *, listen: bool = False, data_dir: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if listen:
            p.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1; TICKSTOCK_HOST)")
            p.add_argument("--port", type=int, default=None, help="TCP port (default 8000; TICKSTOCK_PORT)")
        if data_dir:
            p.add_argument("--data-dir", type=Path, default=None,
                           help="folder for the embedded servers' data (default ./.tickstock; TICKSTOCK_DATA_DIR)")
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "Start embedded NATS, PostgreSQL and Redis for every unset URL, migrate, load "
              "reference data and serve the hub until Ctrl-C; then stop everything it started.", listen=True)
    run.add_argument("--skip-reference-data", action="store_true", help="do not (re)load the reference data")
    add("serve", cmd_serve, "Serve the hub against external servers (TICKSTOCK_DATABASE_URL, TICKSTOCK_NATS_URL, "
        "TICKSTOCK_REDIS_URL must be set).", listen=True, data_dir=False)
    add("migrate", cmd_migrate, "Apply pending database migrations (re-running is a no-op).")
    add("load-reference-data", cmd_load_reference_data,
        "Apply migrations, then load symbols, universes and pattern definitions (idempotent).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {key: getattr(args, key, None) for key in ("host", "port", "data_dir", "log_level")}
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        asyncio.run(args.func(settings, args))
    except USER_ERRORS as exc:
        _say(f"error: {_one_line(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        _say("interrupted")
        return 130
    return 0


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
