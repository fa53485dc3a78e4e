"""The ``tickstock`` command: the outermost layer, which composes everything else.

Every subcommand has ``--help``. Errors the user can act on (a wrong URL, a busy port, a server that
would not start) end the command with one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import secrets
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
from api.auth import SCOPES, mint_token
from api.requestid import RequestIdLogFilter
from api.server import HubServer
from api.settings import Settings, SettingsError
from api.state import HubState
from hub.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, EmbeddedServer
from store.migrate import migrate
from store.pool import open_pool
from store.reference import load_reference_data

__all__ = ["main"]

log = logging.getLogger("tickstock")

EXIT_ERROR = 1
EXIT_USAGE = 2
SHUTDOWN_GRACE_S = 10
GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython default: 700)
DEMO_RATE = 2.0
DEV_TOKEN_TTL_S = 24 * 3600

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
        yield dataclasses.replace(settings, **urls)  # type: ignore[arg-type]  # only the *_url fields
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

class _Server(HubServer):
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
    sock.listen(2048)  # connections queue from now on, before uvicorn starts accepting
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, *, extras: Callable[[HubState], contextlib.AbstractAsyncContextManager[Any]] | None = None,
                ready: Callable[[], None] | None = None) -> None:
    """Open the hub's resources, then serve HTTP and websockets until SIGINT/SIGTERM. ``extras`` is
    entered with the open hub before serving and left after (the demo feed in ``run``)."""
    sock = _bind(settings.host, settings.port)
    try:
        async with open_hub(settings) as hub, (extras(hub) if extras else contextlib.nullcontext()):
            app = create_app(settings, hub=hub)
            config = uvicorn.Config(
                app, log_level=settings.log_level.lower(), access_log=False, lifespan="on",
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, ws_max_size=1 << 20, server_header=False,
            )
            server = _Server(config)
            _say(f"serving on http://{settings.host}:{settings.port}  (Ctrl-C to stop)")
            if ready is not None:
                ready()
            _tune_gc()
            await server.serve(sockets=[sock])
            _say("http server stopped; closing the hub ...")
    finally:
        sock.close()


def _tune_gc() -> None:
    """What start-up built lives as long as the process: move it out of the collector's sight, and
    collect the young generation less often. A full collection over every connection's objects
    otherwise pauses the event loop for tens of milliseconds, the websocket tail latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 50)


# -- subcommands -------------------------------------------------------------------------------------

def _dev_secret(settings: Settings) -> Settings:
    """``run`` without ``TICKSTOCK_JWT_SECRET``: a random development secret kept in the data folder
    (mode 0600), so tokens survive restarts and nothing secret lives in the repository."""
    if settings.jwt_secret or settings.jwks_url:
        return settings
    path = settings.data_dir.resolve() / "jwt-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return dataclasses.replace(settings, jwt_secret=path.read_text().strip())


def _print_dev_token(settings: Settings) -> None:
    if not settings.jwt_secret:
        return
    token = mint_token(settings.jwt_secret, subject="demo-user", scopes=SCOPES, ttl_s=DEV_TOKEN_TTL_S,
                       issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    _say(f"development token (sub demo-user, all scopes, {DEV_TOKEN_TTL_S // 3600} h):\n\n    {token}\n")
    _say(f"dashboard:  http://{settings.host}:{settings.port}/#token={token}")
    _say(f"try:  curl -H 'Authorization: Bearer <token>' http://{settings.host}:{settings.port}/health/ready")


def _demo_feed(rate: float) -> Callable[[HubState], contextlib.AbstractAsyncContextManager[Any]]:
    from hub.demo_feed import DemoFeed

    def start(hub: HubState) -> contextlib.AbstractAsyncContextManager[Any]:
        _say(f"demo feed: replaying real OHLCV through TA-Lib, about {rate:g} events/s")
        return DemoFeed(hub.js, rate=rate)

    return start


async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    settings = _dev_secret(settings)
    async with embedded_servers(settings) as full:
        await prepare_database(full, reference=not args.skip_reference_data)
        extras = None if args.no_demo_feed else _demo_feed(args.demo_rate)
        await serve(full, extras=extras, ready=lambda: _print_dev_token(full))


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


async def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    secret = settings.jwt_secret
    if not secret:
        path = settings.data_dir.resolve() / "jwt-secret"
        if not path.exists():
            raise ConfigurationError("set TICKSTOCK_JWT_SECRET (or run `tickstock run` once, which creates a "
                                     "development secret in the data folder)")
        secret = path.read_text().strip()
    scopes = args.scope or ["patterns:read"]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ConfigurationError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    print(mint_token(secret, subject=args.sub, scopes=scopes, ttl_s=args.ttl, issuer=settings.jwt_issuer,
                     audience=settings.jwt_audience))


async def cmd_demo_feed(settings: Settings, args: argparse.Namespace) -> None:
    from hub.demo_feed import run as run_feed

    async with embedded_servers(settings, only=("nats",)) as full:
        try:
            published = await run_feed(full.nats_url or "", rate=args.rate, duration_s=args.duration,
                                       loop=not args.once)
        except ValueError as exc:  # a rate or duration the feed refuses: one line, not a traceback
            raise ConfigurationError(str(exc)) from None
    _say(f"demo feed: {published} events published")


async def cmd_bridge_redis(settings: Settings, args: argparse.Namespace) -> None:
    from hub.bridge import run as run_bridge

    async with embedded_servers(settings, only=("nats", "redis")) as full:
        forwarded = await run_bridge(full.redis_url or "", full.nats_url or "", channel=args.channel,
                                     duration_s=args.duration)
    _say(f"bridge: {forwarded} messages forwarded")


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> None:
    from hub.broker import open_nats
    from hub.catalog import CatalogCache
    from hub.deadletters import DeadLetterer, ReplayError
    from hub.metrics import Metrics
    from store.deadletters import get_dead_letter, list_dead_letters, purge_dead_letters

    need = ("postgres", "nats") if args.action == "replay" else ("postgres",)
    async with embedded_servers(settings, only=need) as full, open_pool(
            full.database_url or "", min_size=1, max_size=2, connect_timeout_s=full.connect_timeout_s) as pool:
        if args.action == "list":
            async with pool.connection() as conn:
                letters = await list_dead_letters(conn, reason=args.reason, limit=args.limit)
            for d in letters:
                print(f"{d.id:>8}  {d.last_seen:%Y-%m-%d %H:%M:%S}  {d.reason:<24} {d.subject:<40} "
                      f"{'replayed' if d.replayed_at else ''} {d.detail[:80]}")
            _say(f"{len(letters)} dead letter(s)")
        elif args.action == "show":
            async with pool.connection() as conn:
                letter = await get_dead_letter(conn, args.id)
            if letter is None:
                raise ConfigurationError(f"no dead letter {args.id}")
            conflict = letter.conflict_payload  # id_conflict: the payload stored under the id
            print(json.dumps({**letter.summary(preview=1 << 20), "headers": letter.headers, "conflict_payload":
                              None if conflict is None else conflict.decode(errors="replace")}, indent=2))
        elif args.action == "purge":
            async with pool.connection() as conn:
                try:
                    n = await purge_dead_letters(conn, ids=args.id or None, reason=args.reason,
                                                 replayed_only=args.replayed, everything=args.all)
                except ValueError:  # its message names the Python arguments, not the flags
                    raise ConfigurationError("purge needs --id, --reason, --replayed or --all") from None
            _say(f"purged {n} dead letter(s)")
        else:
            payload = args.payload.read_bytes() if args.payload else None
            async with open_nats(full.nats_url or "", name="tickstock-dlq") as nc:
                catalog = CatalogCache()
                await catalog.refresh(pool)
                letterer = DeadLetterer(pool=pool, js=nc.jetstream(), metrics=Metrics())
                try:
                    result = await letterer.replay(args.id, catalog=catalog, payload=payload)
                except ReplayError as exc:
                    raise ConfigurationError(str(exc)) from None
            _say(f"replayed dead letter {result.dead_letter_id} as event {result.event_id} to {result.subject} "
                 f"(ingest seq {result.seq}{', duplicate' if result.duplicate else ''})")


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
              "reference data, start the demo feed and serve the hub until Ctrl-C; then stop everything it "
              "started.", listen=True)
    run.add_argument("--skip-reference-data", action="store_true", help="do not (re)load the reference data")
    run.add_argument("--no-demo-feed", action="store_true", help="do not start the demo feed")
    run.add_argument("--demo-rate", type=float, default=DEMO_RATE, help="demo events per second (default 2)")
    add("serve", cmd_serve, "Serve the hub against external servers (TICKSTOCK_DATABASE_URL, TICKSTOCK_NATS_URL, "
        "TICKSTOCK_REDIS_URL must be set).", listen=True, data_dir=False)
    add("migrate", cmd_migrate, "Apply pending database migrations (re-running is a no-op).")
    add("load-reference-data", cmd_load_reference_data,
        "Apply migrations, then load symbols, universes and pattern definitions (idempotent).")
    token = add("token", cmd_token, "Mint a development token (HS256 with TICKSTOCK_JWT_SECRET, or the "
                "secret `tickstock run` keeps in the data folder).")
    token.add_argument("--sub", default="demo-user", help="token subject (the user)")
    token.add_argument("--scope", action="append", help=f"repeatable; one of {', '.join(SCOPES)}")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    feed = add("demo-feed", cmd_demo_feed, "Replay real OHLCV files through TA-Lib's candlestick recognisers "
               "and publish what they detect to ingest.")
    feed.add_argument("--rate", type=float, default=DEMO_RATE, help="events per second (default 2)")
    feed.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    feed.add_argument("--once", action="store_true", help="replay each file once, then stop")
    bridge = add("bridge-redis", cmd_bridge_redis, "Forward TickStock's Redis pub/sub channel into ingest.")
    bridge.add_argument("--channel", default="tickstock.events.patterns", help="Redis channel")
    bridge.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    dlq = add("dlq", cmd_dlq, "Inspect, replay and purge dead letters.")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="newest first", description="List dead letters, newest first.")
    dlq_list.add_argument("--reason", default=None)
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_show = dlq_sub.add_parser("show", help="one dead letter with payload and headers",
                                  description="Show one dead letter with its payload and headers.")
    dlq_show.add_argument("id", type=int)
    dlq_replay = dlq_sub.add_parser("replay", help="publish it to ingest again",
                                    description="Publish a dead letter (or a corrected payload) to ingest again.")
    dlq_replay.add_argument("id", type=int)
    dlq_replay.add_argument("--payload", type=Path, default=None, help="a file with the corrected event JSON")
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters",
                                   description="Delete dead letters by id, reason, replayed, or all.")
    dlq_purge.add_argument("--id", type=int, action="append")
    dlq_purge.add_argument("--reason", default=None)
    dlq_purge.add_argument("--replayed", action="store_true", help="only those already replayed")
    dlq_purge.add_argument("--all", action="store_true", help="every dead letter")
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
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s]: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_until_terminated(args.func(settings, args)))
    except USER_ERRORS as exc:
        _say(f"error: {_one_line(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        _say("interrupted")
        return 130
    return 0


async def _until_terminated(command: Coroutine[Any, Any, None]) -> None:
    """Run ``command``; SIGTERM (and Ctrl-C, through the runner) cancels it, so its context managers close what they opened (``run``
    and ``serve`` install uvicorn's own handlers while they serve)."""
    task = asyncio.ensure_future(command)
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        handled = True
    except (ValueError, RuntimeError):  # not the main thread (tests calling main() from a thread)
        handled = False
    try:
        await task
    except asyncio.CancelledError:
        _say("stopped")
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with uvicorn[standard]): a faster event loop for the hub."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with the project
        return None
    return uvloop.new_event_loop


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
