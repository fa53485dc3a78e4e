"""Publishing to ingest the way every producer should: subject from the event, ``Nats-Msg-Id`` = id."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from nats.js import JetStreamContext

from hub.model import PatternEvent
from hub.subjects import ingest_subject
from hub.text import escape_control

__all__ = [
    "PRODUCER_HEADER",
    "PRODUCER_SIG_HEADER",
    "Published",
    "producer_of",
    "publish_to_ingest",
    "sign_producer",
]

# Who produced an event, as HTTP ingest vouches for it (contract of issue #11): the producer
# ("http:<token sub>") and a hex HMAC-SHA256 over the producer and the event's canonical encoding, with
# the deployment secret "producer". The writer believes the first only when the second verifies, so a
# copied pair of headers vouches for nothing but the very event it was made for.
PRODUCER_HEADER = "TickStock-Producer"
PRODUCER_SIG_HEADER = "TickStock-Producer-Sig"
MAX_PRODUCER_LENGTH = 300  # characters stored in pattern_events.producer

DEFAULT_PUBLISH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Published:
    seq: int
    duplicate: bool


def sign_producer(secret: bytes, event: PatternEvent, producer: str) -> str:
    """The ``TickStock-Producer-Sig`` value for ``producer`` of ``event`` (its canonical encoding)."""
    mac = hmac.new(secret, producer.encode("utf-8", "surrogatepass") + b"\n", hashlib.sha256)
    mac.update(event.to_json_bytes())
    return mac.hexdigest()


def producer_of(event: PatternEvent, headers: Mapping[str, str] | None, secret: bytes | None) -> str:
    """Who produced ``event``: the signed ``TickStock-Producer`` header when its signature verifies with
    ``secret``, otherwise ``nats:<event source>``. Escaped (no control characters) and bounded."""
    claimed = (headers or {}).get(PRODUCER_HEADER)
    sig = (headers or {}).get(PRODUCER_SIG_HEADER)
    if (
        secret is not None
        and claimed is not None
        and sig is not None
        and hmac.compare_digest(sign_producer(secret, event, claimed), sig.strip().lower())
    ):
        return escape_control(claimed, limit=MAX_PRODUCER_LENGTH)
    return escape_control(f"nats:{event.source}", limit=MAX_PRODUCER_LENGTH)


async def publish_to_ingest(
    js: JetStreamContext,
    event: PatternEvent,
    *,
    msg_id: str | None = None,
    timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> Published:
    """Publish ``event`` to ``tickstock.ingest.<timeframe>.<symbol token>`` and wait for the stream's
    acknowledgement. ``Nats-Msg-Id`` is the event id unless ``msg_id`` is given (a replay must not be
    mistaken for the rejected original inside the duplicate window). ``duplicate`` is true when
    JetStream already had that id within its window. ``headers`` are added (the hub's own, e.g. the
    signed producer; never a producer's ``Nats-*``). Raises nats-py's errors (timeout, no responders,
    stream full)."""
    ack = await js.publish(
        ingest_subject(event.timeframe, event.symbol),
        event.to_json_bytes(),
        timeout=timeout_s,
        headers={**(headers or {}), "Nats-Msg-Id": msg_id or event.id},
    )
    return Published(seq=ack.seq, duplicate=bool(ack.duplicate))
