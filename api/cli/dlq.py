"""``tickstock dlq list|show|replay|purge``: dead letters from the command line."""

from __future__ import annotations

import argparse
import json

from api.app import ConfigurationError
from api.cli.console import say
from api.cli.resources import embedded_servers
from api.settings import Settings
from store.pool import open_pool

__all__ = ["cmd_dlq"]


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> None:
    from hub.broker import open_nats
    from hub.catalog import CatalogCache
    from hub.deadletters import DeadLetterer, ReplayError
    from hub.metrics import Metrics
    from store.deadletters import get_dead_letter, list_dead_letters, purge_dead_letters

    need = ("postgres", "nats") if args.action == "replay" else ("postgres",)
    async with (
        embedded_servers(settings, only=need) as full,
        open_pool(
            full.database_url or "", min_size=1, max_size=2, connect_timeout_s=full.connect_timeout_s
        ) as pool,
    ):
        if args.action == "list":
            async with pool.connection() as conn:
                letters = await list_dead_letters(conn, reason=args.reason, limit=args.limit)
            for d in letters:
                print(
                    f"{d.id:>8}  {d.last_seen:%Y-%m-%d %H:%M:%S}  {d.reason:<24} {d.subject:<40} "
                    f"{'replayed' if d.replayed_at else ''} {d.detail[:80]}"
                )
            say(f"{len(letters)} dead letter(s)")
        elif args.action == "show":
            async with pool.connection() as conn:
                letter = await get_dead_letter(conn, args.id)
            if letter is None:
                raise ConfigurationError(f"no dead letter {args.id}")
            conflict = letter.conflict_payload  # id_conflict: the payload stored under the id
            print(
                json.dumps(
                    {
                        **letter.summary(preview=1 << 20),
                        "headers": letter.headers,
                        "conflict_payload": None if conflict is None else conflict.decode(errors="replace"),
                    },
                    indent=2,
                )
            )
        elif args.action == "purge":
            async with pool.connection() as conn:
                try:
                    n = await purge_dead_letters(
                        conn,
                        ids=args.id or None,
                        reason=args.reason,
                        replayed_only=args.replayed,
                        everything=args.all,
                    )
                except ValueError:  # its message names the Python arguments, not the flags
                    raise ConfigurationError("purge needs --id, --reason, --replayed or --all") from None
            say(f"purged {n} dead letter(s)")
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
            say(
                f"replayed dead letter {result.dead_letter_id} as event {result.event_id} to {result.subject} "
                f"(ingest seq {result.seq}{', duplicate' if result.duplicate else ''})"
            )
