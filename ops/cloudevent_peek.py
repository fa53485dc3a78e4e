"""Read clean-stream messages with the CloudEvents Python SDK and print their attributes.

    python -m ops.cloudevent_peek                     # the last 3 messages of TICKSTOCK_PATTERNS ($TICKSTOCK_NATS_URL)
    python -m ops.cloudevent_peek --nats nats://127.0.0.1:4222 --last 10
    python -m ops.cloudevent_peek --demo              # a fresh embedded stack and hub: one event of each type

Every clean-stream message is a CloudEvent in binary content mode (CloudEvents NATS binding: each
attribute a percent-encoded ``ce-`` header, the body the event's JSON). The SDK has no NATS binding; its
HTTP binary-mode reader (``cloudevents.core.bindings.http.from_binary_event``) applies the same rules to
``ce-`` headers (``ce-datacontenttype`` included), so it reads the NATS headers as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event

from hub.broker import server_list
from hub.jetstream import PATTERNS_STREAM

DEFAULT_LAST = 3


@dataclass(frozen=True)
class Peeked:
    seq: int
    subject: str
    headers: dict[str, str]  # as they travel (percent-encoded)
    event: BaseCloudEvent


def to_cloudevent(headers: Mapping[str, str] | None, body: bytes) -> BaseCloudEvent:
    """A clean-stream message (its NATS headers and body) as the SDK's CloudEvent."""
    return from_binary_event(HTTPMessage(dict(headers or {}), body))


def attributes(event: BaseCloudEvent) -> dict[str, str]:
    """The event's context attributes as strings (``time`` in RFC 3339)."""
    out = {}
    for name, value in sorted(event.get_attributes().items()):
        out[name] = value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else str(value)
    return out


async def last_messages(js: Any, last: int = DEFAULT_LAST) -> list[Peeked]:
    """The ``last`` newest messages of the clean stream, oldest first, each read with the SDK."""
    state = (await js.stream_info(PATTERNS_STREAM)).state
    if not state.messages:
        return []
    out = []
    for seq in range(max(state.first_seq, state.last_seq - last + 1), state.last_seq + 1):
        msg = await js.get_msg(PATTERNS_STREAM, seq)
        headers = dict(msg.headers or {})
        out.append(Peeked(seq, msg.subject or "", headers, to_cloudevent(headers, msg.data or b"")))
    return out


def render(peeked: Peeked) -> str:
    lines = [f"seq {peeked.seq} on {peeked.subject}"]
    lines += [f"  {name}: {value}" for name, value in attributes(peeked.event).items()]
    lines.append(f"  data: {json.dumps(peeked.event.get_data(), sort_keys=True)}")
    return "\n".join(lines)


async def peek(url: str, last: int) -> list[Peeked]:
    nc = await nats.connect(server_list(url), connect_timeout=5, max_reconnect_attempts=0)
    try:
        return await last_messages(nc.jetstream(), last)
    finally:
        await nc.close()


DEMO_EVENTS = [
    {"id": "demo-1", "type": "pattern_detected", "symbol": "AAPL", "pattern": "Hammer", "timeframe": "daily"},
    {
        "id": "demo-2",
        "type": "pattern_updated",
        "symbol": "BRK.B",
        "pattern": "CDLENGULFING",
        "timeframe": "1min",
    },
    # '"' and '%' are legal in an id; the ce-id header carries them percent-encoded.
    {
        "id": 'demo-3-"50%"',
        "type": "pattern_expired",
        "symbol": "BTC/USD",
        "pattern": "doji",
        "timeframe": "hourly",
    },
]


def demo() -> list[Peeked]:
    """A fresh embedded stack and one hub; publish :data:`DEMO_EVENTS`, read them back."""
    from datetime import UTC, datetime

    from ops.harness import embedded_stack, start_hub, stop_hub

    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    events = [{**e, "confidence": 0.8, "detected_at": now, "source": "cloudevent_peek"} for e in DEMO_EVENTS]

    async def run(url: str) -> list[Peeked]:
        from hub.subjects import ingest_subject

        nc = await nats.connect(server_list(url), connect_timeout=5)
        try:
            js = nc.jetstream()
            for e in events:
                subject = ingest_subject(str(e["timeframe"]), str(e["symbol"]))
                await js.publish(subject, json.dumps(e).encode(), headers={"Nats-Msg-Id": str(e["id"])})
            async with asyncio.timeout(30):
                while (await js.stream_info(PATTERNS_STREAM)).state.messages < len(events):
                    await asyncio.sleep(0.1)
            return await last_messages(js, len(events))
        finally:
            await nc.close()

    with embedded_stack() as stack:
        proc, _ = start_hub(stack)
        try:
            return asyncio.run(run(stack.nats_url))
        finally:
            stop_hub(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.cloudevent_peek", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--nats", default=os.environ.get("TICKSTOCK_NATS_URL"), help="default: $TICKSTOCK_NATS_URL"
    )
    parser.add_argument("--last", type=int, default=DEFAULT_LAST, help="how many messages (newest)")
    parser.add_argument("--demo", action="store_true", help="run on a fresh embedded stack and hub")
    args = parser.parse_args(argv)
    if args.demo:
        peeked = demo()
    elif args.nats:
        peeked = asyncio.run(peek(args.nats, max(1, args.last)))
    else:
        parser.error("give --nats URL (or set TICKSTOCK_NATS_URL), or --demo")
    if not peeked:
        print("the clean stream is empty")
    for p in peeked:
        print(render(p))
        if any(
            value != attributes(p.event).get(name[3:])
            for name, value in p.headers.items()
            if name[:3] == "ce-"
        ):
            print("  (as sent: " + ", ".join(f"{k}: {v}" for k, v in p.headers.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
