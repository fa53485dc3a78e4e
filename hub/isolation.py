"""Fault isolation for one batch: insert it in one statement, and when the database refuses it for a
reason one event can cause, bisect down to the events at fault, each part in its own savepoint.

The common path stays one statement. A refused batch of n events with k bad ones costs about
2·k·log2(n) statements; a timed-out statement costs up to the statement timeout, so the number of
timeouts one batch may spend is bounded and what is left is handed back as ``unresolved``.

The events at fault alone are dead-lettered (``store_rejected``); their batch-mates are stored in the
same transaction, on the same delivery. Errors are classified by cause (:func:`hub.deadletters.is_transient`): a lost connection,
a pool or NATS timeout hands the whole batch back; a statement timeout is the event's, unless every
statement of the batch timed out and nothing was stored (then the database is slow: transient on the
first delivery, judged per event from the second). A unique violation is another writer storing an
event of the same pattern instance at the same moment (:func:`store.patterns.store_events`): the part
is run again, up to :data:`MAX_RACE_RETRIES` times, before it counts as refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from nats.aio.msg import Msg

from hub.deadletters import is_transient
from hub.model import PatternEvent
from hub.text import first_line
from store.patterns import StoredEvent, store_events

__all__ = ["MAX_RACE_RETRIES", "MAX_TIMEOUTS_PER_BATCH", "Outcome", "Pending", "insert_isolating"]

log = logging.getLogger("tickstock.writer")

# Timed-out statements one batch may spend isolating the events at fault (each costs up to the
# statement timeout). One bad event in 1,000 needs about 10; what is left after the budget is carried.
MAX_TIMEOUTS_PER_BATCH = 16
# Runs of one part that lost a race for a pattern instance's latest row. One is what a race costs (the
# run again sees the other writer's committed row); more means the violation is the events' own.
MAX_RACE_RETRIES = 3


@dataclass
class Pending:
    """One event id of a batch: the event, the messages that carried it, who produced it."""

    event: PatternEvent
    msgs: list[Msg]
    producer: str | None = None


@dataclass
class Outcome:
    stored: dict[str, StoredEvent] = field(default_factory=dict)
    failed: list[tuple[Pending, psycopg.Error]] = field(default_factory=list)
    unresolved: list[Pending] = field(default_factory=list)
    timeouts: int = 0
    races: int = 0


async def insert_isolating(
    conn: psycopg.AsyncConnection[Any],
    batch: list[Pending],
    *,
    heartbeat: Callable[[], Awaitable[None]],
    max_timeouts: int = MAX_TIMEOUTS_PER_BATCH,
) -> Outcome:
    """Insert ``batch`` in one statement inside a savepoint. When the database refuses it for a
    reason one event can cause (a constraint, a bad value, the statement timeout), bisect: each
    half in its own savepoint, down to the single events at fault, which are returned as
    ``failed``; everything else is stored in this transaction. A transient error is raised. At most
    ``max_timeouts`` timed-out statements are spent; what is left then is ``unresolved``."""
    outcome = Outcome()
    stack: list[tuple[list[Pending], int]] = [(batch, 0)]
    while stack:
        part, races = stack.pop()
        if outcome.timeouts >= max_timeouts:
            outcome.unresolved.extend(part)
            continue
        try:
            async with conn.transaction():
                outcome.stored.update(
                    await store_events(conn, [p.event for p in part], [p.producer for p in part])
                )
        except psycopg.Error as exc:
            if is_transient(exc):
                raise
            if isinstance(exc, psycopg.errors.UniqueViolation) and races < MAX_RACE_RETRIES:
                outcome.races += 1
                stack.append((part, races + 1))
                continue
            if isinstance(exc, psycopg.errors.QueryCanceled):
                outcome.timeouts += 1
            if len(part) == 1:
                outcome.failed.append((part[0], exc))
            else:
                if len(part) == len(batch):
                    log.warning(
                        "writer: batch of %d refused by the database (%s); isolating the event(s) at fault",
                        len(batch),
                        first_line(exc, limit=200),
                    )
                half = len(part) // 2
                stack += [(part[half:], 0), (part[:half], 0)]  # the first half next: the ingest order is kept
            await heartbeat()  # keeps JetStream from redelivering the batch meanwhile
    return outcome
