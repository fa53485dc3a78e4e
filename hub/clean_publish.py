"""The clean stream publish of a batch, in waves, so that no event of a symbol overtakes an earlier one.

Publishing a whole batch pipelined is fast, but when a NATS server or the stream's leader is lost in the
middle of it, some publishes are lost while later ones (buffered by the client across its reconnect, or
taken by the new leader) are stored: an event of a symbol could land before an earlier one that is
published again only after the batch is handed back. So the batch goes out in waves: wave k holds each
symbol's k-th event, pipelined, and a wave starts only once every publish of the one before it was
acknowledged. A failure stops the batch; what was not acknowledged is published again with the batch's
redelivery (``Nats-Msg-Id`` makes a repeat a duplicate that answers with the first one's sequence).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext
from nats.js.api import PubAck

from hub.model import PatternEvent
from hub.subjects import clean_subject

__all__ = ["PUBLISH_TIMEOUT_S", "publish_in_order", "waves"]

PUBLISH_TIMEOUT_S = 10.0  # for one wave's acknowledgements


def waves(events: Sequence[PatternEvent]) -> list[list[int]]:
    """Indexes of ``events`` by wave: wave k holds each symbol's k-th event, in batch order."""
    out: list[list[int]] = []
    seen: Counter[str] = Counter()
    for index, event in enumerate(events):
        k = seen[event.symbol]
        seen[event.symbol] += 1
        if k == len(out):
            out.append([])
        out[k].append(index)
    return out


async def publish_in_order(
    js: JetStreamContext,
    events: Sequence[PatternEvent],
    *,
    headers: Callable[[PatternEvent], dict[str, str]],
    timeout_s: float = PUBLISH_TIMEOUT_S,
) -> list[PubAck]:
    """Publish ``events`` to their clean subjects (``Nats-Msg-Id`` = id, plus ``headers(event)``) wave by
    wave; returns the acknowledgements in the order of ``events``. Raises the first failure (a NATS
    error, or TimeoutError when a wave is not acknowledged within ``timeout_s``)."""
    acks: list[PubAck | None] = [None] * len(events)
    for wave in waves(events):
        futures = [
            await js.publish_async(
                clean_subject(events[i].timeframe, events[i].symbol),
                events[i].to_json_bytes(),
                headers={"Nats-Msg-Id": events[i].id, **headers(events[i])},
            )
            for i in wave
        ]
        for i, ack in zip(
            wave, await asyncio.wait_for(asyncio.gather(*futures), timeout=timeout_s), strict=True
        ):
            acks[i] = ack
    return [ack for ack in acks if ack is not None]
