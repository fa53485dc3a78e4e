"""What a partition fence (:mod:`hub.pull`) may let go: redelivered ingest messages whose events are
already published. The node that held them before their ack wait ran out finished them after all, and
its acknowledgements come late; the fence acknowledges them itself and counts them out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nats.aio.msg import Msg
from psycopg_pool import AsyncConnectionPool

from hub.model import EventError, PatternEvent
from store.patterns import published_ids

__all__ = ["published_elsewhere"]


async def published_elsewhere(
    pool: AsyncConnectionPool, parse: Callable[[Msg], PatternEvent], msgs: Sequence[Msg]
) -> set[int]:
    """The stream sequences of ``msgs`` whose event (as ``parse`` reads it) is stored with the same
    payload and published. A message that does not parse is never settled here: the writer
    dead-letters it."""
    events: dict[int, PatternEvent] = {}
    for msg in msgs:
        try:
            events[msg.metadata.sequence.stream] = parse(msg)
        except EventError:
            continue
    if not events:
        return set()
    async with pool.connection() as conn:
        done = await published_ids(conn, list({e.id: e for e in events.values()}.values()))
    return {seq for seq, event in events.items() if event.id in done}
