"""Publishing to ingest the way every producer should: subject from the event, ``Nats-Msg-Id`` = id."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext

from hub.model import PatternEvent
from hub.subjects import ingest_subject

__all__ = ["Published", "publish_to_ingest"]

DEFAULT_PUBLISH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Published:
    seq: int
    duplicate: bool


async def publish_to_ingest(js: JetStreamContext, event: PatternEvent, *, msg_id: str | None = None,
                            timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S) -> Published:
    """Publish ``event`` to ``tickstock.ingest.<timeframe>.<symbol token>`` and wait for the stream's
    acknowledgement. ``Nats-Msg-Id`` is the event id unless ``msg_id`` is given (a replay must not be
    mistaken for the rejected original inside the duplicate window). ``duplicate`` is true when
    JetStream already had that id within its window. Raises nats-py's errors (timeout, no
    responders, stream full)."""
    ack = await js.publish(ingest_subject(event.timeframe, event.symbol), event.to_json_bytes(),
                           timeout=timeout_s, headers={"Nats-Msg-Id": msg_id or event.id})
    return Published(seq=ack.seq, duplicate=bool(ack.duplicate))
