"""``tickstock dlq list|show|replay|purge``: dead letters from the command line.

``tickstock dlq replay --reason unknown_pattern`` replays every dead letter with that reason not yet
replayed (oldest first, at most ``--limit``) and prints one line per letter and a summary: how many
were replayed, how many would be rejected again and why (they stay dead letters), how many are left.
Run twice, the second run replays nothing twice.
"""

from __future__ import annotations

import argparse
import json

from api.app import ConfigurationError
from api.cli.console import say
from api.cli.resources import embedded_servers
from api.settings import Settings
from hub.catalog import CatalogCache
from hub.deadletters import MAX_REPLAY_BATCH, DeadLetterer
from hub.errors import HubError
from store.pool import open_pool

__all__ = ["MAX_REPLAY_BATCH", "REPLAY_BATCH", "cmd_dlq"]

REPLAY_BATCH = 1000  # dead letters per `replay --reason` run unless --limit says otherwise


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> None:
    from hub.broker import open_nats
    from hub.metrics import Metrics
    from store.deadletters import get_dead_letter, list_dead_letters, purge_dead_letters

    if args.action == "replay" and (args.id is None) == (args.reason is None):
        raise ConfigurationError("replay needs a dead-letter id or --reason, not both")
    if args.action == "replay" and args.reason is not None and args.payload is not None:
        raise ConfigurationError("--payload replays one dead letter: give its id, not --reason")
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
                if args.reason is not None:
                    await _replay_reason(letterer, catalog, args.reason, args.limit)
                    return
                try:
                    result = await letterer.replay(args.id, catalog=catalog, payload=payload)
                except HubError as exc:  # ReplayError included
                    raise ConfigurationError(str(exc)) from None
            say(
                f"replayed dead letter {result.dead_letter_id} as event {result.event_id} to {result.subject} "
                f"(ingest seq {result.seq}{', duplicate' if result.duplicate else ''})"
            )


async def _replay_reason(letterer: DeadLetterer, catalog: CatalogCache, reason: str, limit: int) -> None:
    try:
        done = await letterer.replay_reason(reason, catalog=catalog, limit=limit)
    except (ValueError, HubError) as exc:
        raise ConfigurationError(str(exc)) from None
    for r in done.replayed:
        print(f"replayed  {r.dead_letter_id:>8}  event {r.event_id} -> {r.subject} (ingest seq {r.seq})")
    for letter_id, why, detail in done.failed:
        print(f"rejected  {letter_id:>8}  {why}: {detail}")
    why = ", ".join(f"{n} {r}" for r, n in done.failed_by_reason().items())
    say(
        f"{reason}: {len(done.replayed)} replayed, {len(done.failed)} rejected again"
        + (f" ({why}; they stay dead letters)" if done.failed else "")
        + (f", {done.beyond} more left: run it again" if done.beyond else ", none left")
    )
