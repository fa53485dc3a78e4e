"""The ``tickstock`` arguments and :func:`main`: settings, logging, the event loop, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from api.auth import SCOPES
from api.cli.commands import (
    DEMO_RATE,
    cmd_bridge_redis,
    cmd_demo_feed,
    cmd_load_reference_data,
    cmd_migrate,
    cmd_run,
    cmd_serve,
    cmd_token,
)
from api.cli.console import EXIT_ERROR, EXIT_USAGE, one_line, say
from api.cli.dlq import MAX_REPLAY_BATCH, REPLAY_BATCH, cmd_dlq
from api.cli.patterns import cmd_patterns
from api.cli.runtime import USER_ERRORS, configure_logging, loop_factory
from api.settings import Settings, SettingsError
from hub.bridge import DEFAULT_CHANNEL

__all__ = ["build_parser", "main"]

log = logging.getLogger("tickstock")

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickstock",
        description="TickStock Hub: realtime pattern events over NATS JetStream, PostgreSQL, Redis and websockets.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Command, help_text: str, *, listen: bool = False, data_dir: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if listen:
            p.add_argument(
                "--host", default=None, help="interface to listen on (default 127.0.0.1; TICKSTOCK_HOST)"
            )
            p.add_argument("--port", type=int, default=None, help="TCP port (default 8000; TICKSTOCK_PORT)")
            p.add_argument(
                "--workers",
                type=int,
                default=None,
                help="hub processes serving the port (default: the number of cores; TICKSTOCK_WORKERS); "
                "SIGHUP restarts them one at a time",
            )
        if data_dir:
            p.add_argument(
                "--data-dir",
                type=Path,
                default=None,
                help="folder for the embedded servers' data (default ./.tickstock; TICKSTOCK_DATA_DIR)",
            )
        p.set_defaults(func=func)
        return p

    run = add(
        "run",
        cmd_run,
        "Start embedded NATS, PostgreSQL and Redis for every unset URL, migrate, load "
        "reference data, start the demo feed and serve the hub until Ctrl-C; then stop everything it "
        "started.",
        listen=True,
    )
    run.add_argument("--skip-reference-data", action="store_true", help="do not (re)load the reference data")
    run.add_argument("--no-demo-feed", action="store_true", help="do not start the demo feed")
    run.add_argument("--demo-rate", type=float, default=DEMO_RATE, help="demo events per second (default 2)")
    add(
        "serve",
        cmd_serve,
        "Serve the hub against external servers (TICKSTOCK_DATABASE_URL, TICKSTOCK_NATS_URL, "
        "TICKSTOCK_REDIS_URL must be set).",
        listen=True,
        data_dir=False,
    )
    add("migrate", cmd_migrate, "Apply pending database migrations (re-running is a no-op).")
    add(
        "load-reference-data",
        cmd_load_reference_data,
        "Apply migrations, then load symbols, universes and pattern definitions (idempotent).",
    )
    token = add(
        "token",
        cmd_token,
        "Mint a development token (HS256 with TICKSTOCK_JWT_SECRET, or the "
        "secret `tickstock run` keeps in the data folder).",
    )
    token.add_argument("--sub", default="demo-user", help="token subject (the user)")
    token.add_argument("--scope", action="append", help=f"repeatable; one of {', '.join(SCOPES)}")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    feed = add(
        "demo-feed",
        cmd_demo_feed,
        "Replay real OHLCV files through TA-Lib's candlestick recognisers "
        "and publish what they detect to ingest.",
    )
    feed.add_argument("--rate", type=float, default=DEMO_RATE, help="events per second (default 2)")
    feed.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    feed.add_argument("--once", action="store_true", help="replay each file once, then stop")
    bridge = add(
        "bridge-redis",
        cmd_bridge_redis,
        "Forward TickStock's Redis pub/sub channels into ingest (TICKSTOCK_BRIDGE_CHANNELS; "
        "docs/upstream.md).",
    )
    bridge.add_argument(
        "--channel",
        default=None,
        help=f"read this one Redis channel only (default: TICKSTOCK_BRIDGE_CHANNELS, {DEFAULT_CHANNEL} and "
        "the two streaming channels)",
    )
    bridge.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    dlq = add("dlq", cmd_dlq, "Inspect, replay and purge dead letters.")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlq_list = dlq_sub.add_parser("list", help="newest first", description="List dead letters, newest first.")
    dlq_list.add_argument("--reason", default=None)
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_show = dlq_sub.add_parser(
        "show",
        help="one dead letter with payload and headers",
        description="Show one dead letter with its payload and headers.",
    )
    dlq_show.add_argument("id", type=int)
    dlq_replay = dlq_sub.add_parser(
        "replay",
        help="publish one (by id) or every one with a reason to ingest again",
        description="Publish a dead letter (or a corrected payload) to ingest again; with --reason, every "
        "dead letter with that reason not yet replayed, oldest first (at most --limit per run).",
    )
    dlq_replay.add_argument("id", type=int, nargs="?", default=None)
    dlq_replay.add_argument("--payload", type=Path, default=None, help="a file with the corrected event JSON")
    dlq_replay.add_argument("--reason", default=None, help="e.g. unknown_pattern: replay all with it")
    dlq_replay.add_argument(
        "--limit",
        type=int,
        default=REPLAY_BATCH,
        help=f"with --reason: at most this many per run (default {REPLAY_BATCH}, at most {MAX_REPLAY_BATCH})",
    )
    dlq_purge = dlq_sub.add_parser(
        "purge",
        help="delete dead letters",
        description="Delete dead letters by id, reason, replayed, or all.",
    )
    dlq_purge.add_argument("--id", type=int, action="append")
    dlq_purge.add_argument("--reason", default=None)
    dlq_purge.add_argument("--replayed", action="store_true", help="only those already replayed")
    dlq_purge.add_argument("--all", action="store_true", help="every dead letter")
    patterns = add("patterns", cmd_patterns, "Pattern definitions: create or change one at run time.")
    patterns_sub = patterns.add_subparsers(dest="action", required=True, metavar="ACTION")
    define = patterns_sub.add_parser(
        "define",
        help="create or change a definition",
        description="Create or change a pattern definition (as PUT /api/patterns/definitions/NAME does); "
        "an option left out keeps the stored value (or the default for a new definition, which needs "
        "--category). Every running hub node reloads its catalog at once.",
    )
    define.add_argument("name", help="the canonical name: 1-64 of a-z 0-9 _")
    define.add_argument("--alias", action="append", help="repeatable; replaces the stored aliases")
    define.add_argument("--category", help="candlestick, chart or indicator")
    define.add_argument("--direction", help="bullish, bearish or neutral (default neutral)")
    define.add_argument("--description")
    define.add_argument("--timeframe", action="append", help="repeatable (default: all eight)")
    define.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {
        key: getattr(args, key, None) for key in ("host", "port", "workers", "data_dir", "log_level")
    }
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        say(f"error: {exc}")
        return EXIT_USAGE
    configure_logging(settings.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            # run and serve hand both signals to uvicorn while they serve; every other command takes
            # Ctrl-C through the event loop, like SIGTERM.
            serving = args.func in (cmd_run, cmd_serve)
            runner.run(_until_terminated(args.func(settings, args), sigint=not serving))
    except USER_ERRORS as exc:
        say(f"error: {one_line(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        say("interrupted")
        return 130
    return 0


async def _until_terminated(command: Coroutine[Any, Any, None], *, sigint: bool = False) -> None:
    """Run ``command``; SIGTERM (and Ctrl-C, through the runner) cancels it, so its context managers close what they opened (``run``
    and ``serve`` install uvicorn's own handlers while they serve)."""
    task = asyncio.ensure_future(command)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    interrupts = 0

    def interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:  # a second signal while stopping: leave at once (main says "interrupted")
            raise KeyboardInterrupt
        task.cancel()

    # Through the event loop's own handlers (uvloop's too): a Python-level handler (the runner's for
    # Ctrl-C) runs only once the loop wakes, and an idle bridge once sat out a SIGINT for 20 s.
    try:
        for signum in signals:
            loop.add_signal_handler(signum, interrupt)
        handled = True
    except (ValueError, RuntimeError):  # not the main thread (tests calling main() from a thread)
        handled = False
    try:
        await task
    except asyncio.CancelledError:
        say("stopped")
    finally:
        if handled:
            for signum in signals:
                loop.remove_signal_handler(signum)
