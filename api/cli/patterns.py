"""``tickstock patterns define``: create or change a pattern definition from the command line.

It does what ``PUT /api/patterns/definitions/{name}`` does, checked by the same model, straight
against the database; every running hub node hears of it from PostgreSQL and reloads its catalog.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from api.app import ConfigurationError
from api.cli.console import say
from api.cli.resources import database_only
from api.errors import ApiError
from api.routes.definitions import DefinitionChange, check_name
from api.settings import Settings
from api.validation import field_errors
from store.definitions import DefinitionConflict, DefinitionError, put_definition
from store.pool import open_pool

__all__ = ["cmd_patterns", "definition_fields"]


def definition_fields(args: argparse.Namespace) -> dict[str, object]:
    """The definition the arguments give (only the options given), checked as the PUT body is; raises
    :class:`ConfigurationError` naming what is wrong."""
    given: dict[str, object] = {}
    for option, field in (
        ("alias", "aliases"),
        ("category", "category"),
        ("direction", "direction"),
        ("description", "description"),
        ("timeframe", "timeframes"),
        ("enabled", "enabled"),
    ):
        value = getattr(args, option)
        if value is not None:
            given[field] = value
    try:
        check_name(args.name)
        return DefinitionChange.model_validate(given).fields()
    except ApiError as exc:
        raise ConfigurationError(f"{args.name!r}: {exc.detail}") from None
    except ValidationError as exc:
        listed = "; ".join(f"{e['loc'].removeprefix('body.')}: {e['msg']}" for e in field_errors(exc, "body"))
        raise ConfigurationError(f"pattern {args.name}: {listed}") from None


async def cmd_patterns(settings: Settings, args: argparse.Namespace) -> None:
    fields = definition_fields(args)
    async with (
        database_only(settings) as full,
        open_pool(
            full.database_url or "", min_size=1, max_size=1, connect_timeout_s=full.connect_timeout_s
        ) as pool,
        pool.connection() as conn,
    ):
        try:
            stored, created, changed = await put_definition(conn, args.name, fields)
        except (DefinitionConflict, DefinitionError) as exc:
            raise ConfigurationError(str(exc)) from None
    state = "created" if created else "changed" if changed else "unchanged"
    print(
        f"{stored['name']}: {state}; category {stored['category']}, direction {stored['direction']}, "
        f"aliases {', '.join(stored['aliases']) or '(none)'}, timeframes {' '.join(stored['timeframes'])}, "
        f"{'enabled' if stored['enabled'] else 'disabled'}"
    )
    if changed:
        say(
            "every running hub node reloads its pattern catalog now; replay what was dead-lettered meanwhile "
            "with: tickstock dlq replay --reason unknown_pattern"
        )
