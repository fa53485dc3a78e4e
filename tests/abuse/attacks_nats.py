"""NATS attacks on ``tickstock.ingest.>``: far dates past the HTTP checks, hostile headers on the way to
the DLQ, CR/LF in a detail, an id squat, and payloads each dead-lettered with a documented reason."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.aio.msg import Msg
from nats.js.errors import BadRequestError, NotFoundError

from tests.abuse.campaign import Attack, Ctx, ingest_key_pattern
from tests.abuse.harness import DOCUMENTED_REASONS, hostile_event
from tests.support import wait_for

DLQ_DEADLINE_S = 8.0  # "within one back-off step": the writer's first back-off steps are 0.5 s, 1 s, 2 s …
FORGED_LOG_MARKER = "FORGED-LOG-LINE"  # text after a CR/LF: it must never start a line of the hub's log


def _subject(event: dict[str, object]) -> str:
    return f"tickstock.ingest.{event['timeframe']}.{str(event['symbol']).replace('.', '_')}"


async def _publish(ctx: Ctx, event: dict[str, object], **headers: str) -> int:
    ack = await ctx.js.publish(
        _subject(event), json.dumps(event).encode(), headers={"Nats-Msg-Id": str(event["id"]), **headers}
    )
    assert not ack.duplicate, f"{event['id']}: JetStream took it for a duplicate"
    return int(ack.seq)


async def far_dates_over_nats(ctx: Ctx) -> None:
    """Far dates that skip HTTP's checks: each dead-lettered ``detected_at_out_of_range`` /
    ``expires_at_out_of_range`` alone; the valid event published right after them is stored."""
    cases = {
        "detected_at_out_of_range": [
            hostile_event("n0001", detected_at="0001-01-01T00:00:00Z"),
            hostile_event("n9999", detected_at="9999-12-01T00:00:00Z"),
            hostile_event("n2000", detected_at="2000-01-15T00:00:00Z"),
        ],
        "expires_at_out_of_range": [hostile_event("nexp", expires_at="9999-12-31T00:00:00Z")],
    }
    seqs = [(reason, await _publish(ctx, e)) for reason, events in cases.items() for e in events]
    neighbour = hostile_event("n-neighbour")
    await _publish(ctx, neighbour)
    await ctx.stored(str(neighbour["id"]))
    for reason, seq in seqs:
        letter = await ctx.dead_letter_of(seq)
        assert letter["reason"] == reason, (seq, letter["reason"], letter["detail"])


async def hostile_headers_reach_the_dlq(ctx: Ctx) -> None:
    """Acceptance 4: ``Nats-Expected-Stream: TICKSTOCK_INGEST``, a ``Nats-Msg-Id`` that is not the
    event's id and a CR/LF in a header, on an invalid event: on the DLQ stream within one back-off step,
    with no producer ``Nats-*`` header travelling on and nothing raw in what is stored."""
    found: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
    event = hostile_event("dlq-headers", confidence=85)

    async def on_dlq(msg: Msg) -> None:
        if str(event["id"]).encode() in msg.data and not found.done():
            found.set_result(msg)

    sub = await ctx.js._nc.subscribe("tickstock.dlq.>", cb=on_dlq)
    try:
        ack = await ctx.js.publish(
            _subject(event),
            json.dumps(event).encode(),
            headers={
                "Nats-Msg-Id": "not-the-event-id-" + str(event["id"]),
                "Nats-Expected-Stream": "TICKSTOCK_INGEST",
                "X-Evil": f"a\r\nX-Injected: yes\r\n{FORGED_LOG_MARKER} ERROR injected",
            },
        )
        try:
            msg = await asyncio.wait_for(found, DLQ_DEADLINE_S)
        except TimeoutError:
            raise AssertionError(f"no DLQ message within {DLQ_DEADLINE_S} s for {event['id']}") from None
    finally:
        await sub.unsubscribe()
    assert msg.subject == "tickstock.dlq.confidence_out_of_range", msg.subject
    headers = msg.headers or {}
    assert "Nats-Expected-Stream" not in headers, headers
    assert headers.get("Nats-Msg-Id") != "not-the-event-id-" + str(event["id"]), headers
    assert not any("\r" in f"{k}{v}" or "\n" in f"{k}{v}" for k, v in headers.items()), headers
    letter = await ctx.dead_letter_of(ack.seq)
    assert letter["reason"] == "confidence_out_of_range", letter["reason"]
    for text in (letter["detail"], json.dumps(letter["headers"], ensure_ascii=False)):
        assert "\r" not in text and "\n" not in text, text[:300]


WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence check


async def valid_event_with_hostile_headers_is_stored(ctx: Ctx) -> None:
    """A valid event carrying the same headers is stored, and its clean-stream copy carries only the
    hub's own headers. ``Nats-Expected-Last-Sequence`` never reaches the hub: JetStream itself refuses
    the publish (400, error code 10071 'wrong last sequence') unless it holds, so that header is checked
    on its own, and the event then goes in with the headers that do reach the hub."""
    event = hostile_event("hdr-valid", symbol="XOM")
    with pytest.raises(BadRequestError) as refused:
        await ctx.js.publish(
            _subject(event),
            json.dumps(event).encode(),
            headers={
                "Nats-Msg-Id": "expect-seq-" + str(event["id"]),
                "Nats-Expected-Last-Sequence": "1",
                "X-Evil": "a\r\nX-Injected: yes",
            },
        )
    assert refused.value.err_code == WRONG_LAST_SEQUENCE, refused.value
    found: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_clean(msg: Msg) -> None:
        if str(event["id"]).encode() in msg.data and not found.done():
            found.set_result(msg)

    sub = await ctx.js._nc.subscribe("tickstock.patterns.daily.XOM", cb=on_clean)
    try:
        ack = await ctx.js.publish(
            _subject(event),
            json.dumps(event).encode(),
            headers={
                "Nats-Msg-Id": "mismatch-" + str(event["id"]),
                "Nats-Expected-Stream": "TICKSTOCK_INGEST",
                "X-Evil": "a\r\nX-Injected: yes",
            },
        )
        assert ack.stream == "TICKSTOCK_INGEST" and not ack.duplicate, ack
        msg = await asyncio.wait_for(found, 20)
    finally:
        await sub.unsubscribe()
    headers = msg.headers or {}
    assert headers.get("Nats-Msg-Id") == event["id"], headers
    assert not {"Nats-Expected-Stream", "Nats-Expected-Last-Sequence", "X-Evil", "X-Injected"} & set(
        headers
    ), headers
    await ctx.stored(str(event["id"]))


async def crlf_in_a_detail(ctx: Ctx) -> None:
    """CR/LF in a field that ends up in a dead letter's detail: stored escaped, never raw."""
    event = hostile_event(
        "crlf", pattern=f"Ham\r\nmer\r\n2026-01-01 00:00:00,000 ERROR   {FORGED_LOG_MARKER}\x1b[2J"
    )
    letter = await ctx.dead_letter_of(await _publish(ctx, event))
    assert letter["reason"] == "unknown_pattern", letter["reason"]
    assert not any(c in letter["detail"] for c in "\r\n\x1b"), repr(letter["detail"])


async def id_squat(ctx: Ctx) -> None:
    """Acceptance 3: a squatter posts an event under the genuine producer's id (another symbol) over HTTP,
    then the genuine event arrives over NATS the way the contract says (``Nats-Msg-Id`` = id). The
    genuine one ends as an ``id_conflict`` dead letter whose both payloads ``tickstock dlq show`` shows;
    the stored row names the squatter (``http:<sub>``)."""
    squatter_sub = "squatter-abuse"
    genuine = hostile_event("squat", symbol="MSFT", source="genuine-producer", confidence=0.91)
    squat = {**genuine, "symbol": "KO", "source": "squatter-producer", "confidence": 0.11}
    client = await ctx.client(ctx.token(squatter_sub))
    response = await client.post("/api/patterns", json=[squat])
    assert response.status_code == 200 and response.json()["results"][0]["status"] == "accepted", (
        response.text[:300]
    )
    await ctx.stored(str(genuine["id"]))
    ack = await ctx.js.publish(
        _subject(genuine), json.dumps(genuine).encode(), headers={"Nats-Msg-Id": str(genuine["id"])}
    )
    assert not ack.duplicate, (
        "JetStream dropped the genuine event as a duplicate of the squatter's Nats-Msg-Id "
        "(HTTP ingest publishes with Nats-Msg-Id = the bare event id): the squat is silent"
    )
    letter = await ctx.dead_letter_of(ack.seq)
    assert letter["reason"] == "id_conflict", (letter["reason"], letter["detail"])
    status, out, err = await ctx.tickstock("dlq", "show", str(letter["id"]))
    assert status == 0 and "Traceback" not in err, err[-500:]
    assert "genuine-producer" in out and "squatter-producer" in out, out[:1000]
    [row] = await ctx.rows("SELECT symbol, producer FROM pattern_events WHERE id = %s", genuine["id"])
    assert (row["symbol"], row["producer"]) == ("KO", f"http:{squatter_sub}"), row
    shown = json.loads(out)
    ctx.notes.append(
        f"id_squat: dead letter {letter['id']} reason {shown['reason']}; payload {shown['payload_preview'][:90]}...; "
        f"conflict_payload {str(shown['conflict_payload'])[:90]}...; stored row symbol {row['symbol']}, "
        f"producer {row['producer']}"
    )


async def same_payload_twice_is_a_duplicate(ctx: Ctx) -> None:
    """The same payload under another ``Nats-Msg-Id`` (past JetStream's window) is an idempotent
    duplicate: no dead letter, one row."""
    event = hostile_event("idem", symbol="T")
    await _publish(ctx, event)
    await ctx.stored(str(event["id"]))
    again = await ctx.js.publish(
        _subject(event), json.dumps(event).encode(), headers={"Nats-Msg-Id": "again-" + str(event["id"])}
    )

    async def acknowledged() -> bool:  # a work queue: an acknowledged message leaves the stream
        try:
            await ctx.js.get_msg("TICKSTOCK_INGEST", again.seq)
        except NotFoundError:
            return True
        return False

    await wait_for(acknowledged, timeout=15, interval=0.1, what=f"ingest seq {again.seq} acknowledged")
    assert not await ctx.rows(
        "SELECT id FROM dead_letters WHERE source_key LIKE %s", ingest_key_pattern(again.seq)
    )
    [row] = await ctx.rows("SELECT count(*) AS n FROM pattern_events WHERE id = %s", event["id"])
    assert row["n"] == 1


PAYLOADS: list[tuple[str, str, bytes, set[str]]] = [
    ("non-UTF-8", "tickstock.ingest.daily.KO", b'{"id": "\xff\xfe\xfd"}', {"not_json"}),
    (
        "NaN",
        "tickstock.ingest.daily.KO",
        json.dumps(hostile_event("nan")).replace('"confidence": 0.5', '"confidence": NaN').encode(),
        {"not_json", "invalid_field"},
    ),
    (
        "duplicate keys",
        "tickstock.ingest.daily.KO",
        json.dumps(hostile_event("dup"))[:-1].encode() + b', "symbol": "AAPL"}',
        {"not_json", "invalid_field"},
    ),
    (
        "deep nesting",
        "tickstock.ingest.daily.KO",
        b"[" * 100_000 + b"]" * 100_000,
        {"not_json", "not_object", "too_large"},
    ),
    ("a bare array", "tickstock.ingest.daily.KO", b"[1, 2, 3]", {"not_object"}),
    (
        "huge levels",
        "tickstock.ingest.daily.KO",
        json.dumps(hostile_event("lvl", levels={f"l{i}": 1.0 for i in range(10_000)})).encode(),
        {"invalid_field", "too_large"},
    ),
    (
        "over 64 KiB",
        "tickstock.ingest.daily.KO",
        json.dumps(hostile_event("big", data={"x": "y" * 70_000})).encode(),
        {"too_large", "data_too_large"},
    ),
    (
        "subject mismatch",
        "tickstock.ingest.hourly.AAPL",
        json.dumps(hostile_event("mis")).encode(),
        {"subject_mismatch"},
    ),
    (
        "long subject token",
        "tickstock.ingest.daily." + "A" * 300,
        json.dumps(hostile_event("longsub")).encode(),
        {"invalid_subject", "invalid_symbol", "subject_mismatch"},
    ),
    (
        "NUL in a string",
        "tickstock.ingest.daily.KO",
        json.dumps(hostile_event("nul", source="a\u0000b")).encode(),
        {"invalid_field", "store_rejected"},
    ),
]


async def payloads_get_a_reason(ctx: Ctx) -> None:
    """Payloads that are not events: each dead-lettered with a documented reason (the expected one)."""
    seqs = []
    for name, subject, payload, _ in PAYLOADS:
        ack = await ctx.js.publish(
            subject, payload, headers={"Nats-Msg-Id": f"abuse-payload-{name}-{time.time_ns()}"}
        )
        seqs.append(ack.seq)
    for (name, _, _, expected), seq in zip(PAYLOADS, seqs, strict=True):
        letter = await ctx.dead_letter_of(seq)
        assert letter["reason"] in DOCUMENTED_REASONS and letter["reason"] in expected, (
            name,
            letter["reason"],
        )


ATTACKS: dict[str, Attack] = {
    f.__name__: f
    for f in (
        far_dates_over_nats,
        hostile_headers_reach_the_dlq,
        valid_event_with_hostile_headers_is_stored,
        crlf_in_a_detail,
        id_squat,
        same_payload_twice_is_a_duplicate,
        payloads_get_a_reason,
    )
}
