"""The clean stream publish of a batch, in segments, so that no event of a symbol overtakes an earlier one.

Publishing a whole batch pipelined is fast, but when a NATS server or the stream's leader is lost in the
middle of it, some publishes are lost while later ones (buffered by the client across its reconnect, or
taken by the new leader) are stored: an event of a symbol could land before an earlier one that is
published again only after the batch is handed back. So the batch goes out in segments, in batch order:
a segment is a run of events of distinct symbols, pipelined, and it starts only once every publish of
the one before it was acknowledged (a symbol's next event is always in a later segment). The batch's
order is kept as it is (one node without partitions keeps the ingest order). A failure stops the batch; what was not acknowledged is published again with the batch's
redelivery (``Nats-Msg-Id`` makes a repeat a duplicate that answers with the first one's sequence).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext
from nats.js.api import PubAck

from hub.model import PatternEvent
from hub.subjects import clean_subject

__all__ = ["PUBLISH_TIMEOUT_S", "publish_in_order", "segments"]

PUBLISH_TIMEOUT_S = 10.0  # for one segment's acknowledgements


def segments(events: Sequence[PatternEvent]) -> list[list[int]]:
    """Indexes of ``events`` cut into runs of distinct symbols, in batch order."""
    out: list[list[int]] = []
    symbols: set[str] = set()
    for index, event in enumerate(events):
        if not out or event.symbol in symbols:
            out.append([])
            symbols = set()
        out[-1].append(index)
        symbols.add(event.symbol)
    return out


async def publish_in_order(
    js: JetStreamContext,
    events: Sequence[PatternEvent],
    *,
    headers: Callable[[PatternEvent], dict[str, str]],
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> list[PubAck]:
    """Publish ``events`` to their clean subjects (``Nats-Msg-Id`` = id, plus ``headers(event)``)
    segment by segment; returns the acknowledgements in the order of ``events``. Raises the first failure (a NATS
    error, or TimeoutError when a segment is not acknowledged within ``timeout_s``)."""
    acks: list[PubAck | None] = [None] * len(events)
    for segment in segments(events):
        futures = [
            await js.publish_async(
                clean_subject(events[i].timeframe, events[i].symbol),
                events[i].to_json_bytes(),
                headers={"Nats-Msg-Id": events[i].id, **headers(events[i])},
            )
            for i in segment
        ]
        for i, ack in zip(
            segment, await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout_s), strict=True
        ):
            acks[i] = ack
    return [ack for ack in acks if ack is not None]
