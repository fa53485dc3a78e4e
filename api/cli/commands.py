"""One function per ``tickstock`` subcommand (``dlq`` is in :mod:`api.cli.dlq`): each gets the settings and
its parsed arguments, and raises what :func:`api.cli.parser.main` reports in one line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import secrets
from typing import Any

from api.app import ConfigurationError
from api.auth import SCOPES, mint_token
from api.cli.console import say
from api.cli.resources import database_only, embedded_servers, prepare_database
from api.cli.serving import serve
from api.settings import Settings
from api.state import HubState

__all__ = [
    "DEMO_RATE",
    "cmd_bridge_redis",
    "cmd_demo_feed",
    "cmd_load_reference_data",
    "cmd_migrate",
    "cmd_run",
    "cmd_serve",
    "cmd_token",
]

DEMO_RATE = 2.0  # demo events per second
DEV_TOKEN_TTL_S = 24 * 3600


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
    ttl_s = min(DEV_TOKEN_TTL_S, settings.jwt_max_lifetime_s)  # the hub refuses longer-lived tokens
    token = mint_token(
        settings.jwt_secret,
        subject="demo-user",
        scopes=SCOPES,
        ttl_s=ttl_s,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    say(f"development token (sub demo-user, all scopes, {ttl_s / 3600:g} h):\n\n    {token}\n")
    say(f"dashboard:  http://{settings.host}:{settings.port}/#token={token}")
    say(f"try:  curl -H 'Authorization: Bearer <token>' http://{settings.host}:{settings.port}/health/ready")


@dataclasses.dataclass(frozen=True)
class DemoFeedExtras:
    """The demo feed beside the open hub (``run``): picklable, so a ``--workers`` primary can start it."""

    rate: float

    def __call__(self, hub: HubState) -> contextlib.AbstractAsyncContextManager[Any]:
        from hub.demo_feed import DemoFeed

        say(f"demo feed: replaying real OHLCV through TA-Lib, about {self.rate:g} events/s")
        return DemoFeed(hub.js, rate=self.rate)


async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    settings = _dev_secret(settings)
    async with embedded_servers(settings) as full:
        await prepare_database(full, reference=not args.skip_reference_data)
        extras = None if args.no_demo_feed else DemoFeedExtras(args.demo_rate)
        await serve(full, extras=extras, ready=lambda: _print_dev_token(full))


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    if settings.embedded:
        names = {
            "nats": "TICKSTOCK_NATS_URL",
            "postgres": "TICKSTOCK_DATABASE_URL",
            "redis": "TICKSTOCK_REDIS_URL",
        }
        missing = ", ".join(names[n] for n in settings.embedded)
        raise ConfigurationError(
            f"`tickstock serve` uses external servers only; set {missing} (or use `tickstock run`)"
        )
    await serve(settings)


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    async with database_only(settings) as full:
        await prepare_database(full, reference=False)


async def cmd_load_reference_data(settings: Settings, args: argparse.Namespace) -> None:
    async with database_only(settings) as full:
        await prepare_database(full, reference=True)


async def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    secret = settings.jwt_secret
    if not secret:
        path = settings.data_dir.resolve() / "jwt-secret"
        if not path.exists():
            raise ConfigurationError(
                "set TICKSTOCK_JWT_SECRET (or run `tickstock run` once, which creates a "
                "development secret in the data folder)"
            )
        secret = path.read_text().strip()
    scopes = args.scope or ["patterns:read"]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ConfigurationError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not 0 < args.ttl <= settings.jwt_max_lifetime_s:
        raise ConfigurationError(
            f"--ttl {args.ttl} is out of range: the hub accepts tokens living 1 to "
            f"{settings.jwt_max_lifetime_s} s (TICKSTOCK_JWT_MAX_LIFETIME_S)"
        )
    print(
        mint_token(
            secret,
            subject=args.sub,
            scopes=scopes,
            ttl_s=args.ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )


async def cmd_demo_feed(settings: Settings, args: argparse.Namespace) -> None:
    from hub.demo_feed import run as run_feed

    async with embedded_servers(settings, only=("nats",)) as full:
        try:
            published = await run_feed(
                full.nats_url or "", rate=args.rate, duration_s=args.duration, loop=not args.once
            )
        except ValueError as exc:  # a rate or duration the feed refuses: one line, not a traceback
            raise ConfigurationError(str(exc)) from None
    say(f"demo feed: {published} events published")


async def cmd_bridge_redis(settings: Settings, args: argparse.Namespace) -> None:
    """The bridge as its own process: Redis from ``TICKSTOCK_BRIDGE_REDIS_URL`` (else
    ``TICKSTOCK_REDIS_URL``, else embedded); pattern names checked against the database when
    ``TICKSTOCK_DATABASE_URL`` is set (reloaded every maintenance interval), else any name passes."""
    from hub.bridge import run as run_bridge

    if settings.bridge_redis_url:
        settings = dataclasses.replace(settings, redis_url=settings.bridge_redis_url)
    async with embedded_servers(settings, only=("nats", "redis")) as full:
        forwarded = await run_bridge(
            full.redis_url or "",
            full.nats_url or "",
            channels=settings.bridge_channel_list,
            channel=args.channel,
            database_url=settings.database_url,
            refresh_s=settings.maintenance_interval_s,
            rules=settings.upstream_rules(),
            duration_s=args.duration,
        )
    say(f"bridge: {forwarded} messages forwarded")
