"""``POST /api/patterns`` on a live hub: verdicts per event, storage, limits, throttling and retries."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from api.app import create_app
from api.auth import mint_token
from api.settings import Settings
from hub.jetstream import INGEST_STREAM, Topology, ensure_topology
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, make_event, wait_for, wait_settled

MAX_EVENTS = 12
INFLIGHT = 20
MAX_BYTES = 32 * 1024
PATH = "/api/patterns"
PROBLEM = "application/problem+json"
LEGACY_TS = 1_793_629_800  # 2026-11-02T14:30:00Z


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        http_ingest_max_events=MAX_EVENTS,
        http_ingest_inflight=INFLIGHT,
        http_ingest_max_bytes=MAX_BYTES,
    )


@pytest.fixture
async def client(live_hub: LiveHub) -> AsyncIterator[httpx.AsyncClient]:
    writer = mint_token(JWT_SECRET, subject="producer", scopes=["patterns:write"])
    headers = {"Authorization": f"Bearer {writer}"}
    async with httpx.AsyncClient(base_url=live_hub.url, headers=headers, timeout=30) as c:
        yield c


def _legacy(**data: Any) -> dict[str, Any]:
    return {
        "event_type": "pattern_detected",
        "source": "tickstock",
        "timestamp": LEGACY_TS,
        "data": {"symbol": "AAPL", "pattern": "Hammer", "confidence": 0.8, "source": "daily", **data},
    }


async def _last_seq(js: JetStreamContext) -> int:
    return int((await js.stream_info(INGEST_STREAM)).state.last_seq)


async def _rows(pool: AsyncConnectionPool, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, type, symbol, pattern, timeframe, confidence, detected_at, price, volume, source,"
            " payload FROM pattern_events WHERE id = ANY(%s)",
            (ids,),
        )
        return {row["id"]: row for row in await cur.fetchall()}  # type: ignore[index,call-overload]


async def _stored(pool: AsyncConnectionPool, ids: list[str]) -> dict[str, dict[str, Any]]:
    async def all_there() -> dict[str, dict[str, Any]] | None:
        rows = await _rows(pool, ids)
        return rows if len(rows) == len(ids) else None

    rows: dict[str, dict[str, Any]] = await wait_for(all_there, timeout=20, what=f"{len(ids)} events stored")
    return rows


async def _metric(client: httpx.AsyncClient, outcome: str) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(rf'^tickstock_http_ingest_total\{{outcome="{outcome}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _assert_problem(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["status"], body["instance"]) == (status, PATH)
    assert detail in body["detail"], body


async def _restore(live_hub: LiveHub) -> None:
    s = live_hub.hub.settings
    topology = Topology(max_deliver=s.ingest_max_deliver, ack_wait_s=s.ingest_ack_wait_s)
    await ensure_topology(live_hub.hub.js, topology)


# -- accepted, duplicate, stored --------------------------------------------------------------------


async def test_a_batch_is_accepted_then_duplicate_and_stored(
    client: httpx.AsyncClient,
    live_hub: LiveHub,
    ref_pool: AsyncConnectionPool,
) -> None:
    events = [
        make_event(i, prefix="batch", symbol=s, pattern=p, timeframe=tf, confidence=0.5 + i / 10)
        for i, (s, p, tf) in enumerate(
            [("AAPL", "CDLHAMMER", "daily"), ("BRK.b", "Hammer", "1min"), ("MSFT", "hammer", "hourly")]
        )
    ]
    first = await client.post(PATH, json={"events": events})
    assert first.status_code == 200, first.text
    assert "retry-after" not in first.headers
    body = first.json()
    assert (body["accepted"], body["duplicate"], body["rejected"], body["retry"]) == (3, 0, 0, 0)
    assert [r["id"] for r in body["results"]] == ["batch-0", "batch-1", "batch-2"]
    assert all(r["status"] == "accepted" for r in body["results"])
    seqs = [r["seq"] for r in body["results"]]
    assert all(isinstance(s, int) and s > 0 for s in seqs) and len(set(seqs)) == 3
    assert max(seqs) <= await _last_seq(live_hub.hub.js)

    again = await client.post(PATH, json={"events": events})
    assert again.status_code == 200
    repeat = again.json()
    assert (repeat["accepted"], repeat["duplicate"]) == (0, 3)
    assert [(r["status"], r["id"], r["seq"]) for r in repeat["results"]] == [
        ("duplicate", r["id"], r["seq"]) for r in body["results"]
    ]

    rows = await _stored(ref_pool, ["batch-0", "batch-1", "batch-2"])
    assert {i: (r["symbol"], r["pattern"], r["timeframe"]) for i, r in rows.items()} == {
        "batch-0": ("AAPL", "hammer", "daily"),
        "batch-1": ("BRK.B", "hammer", "1min"),
        "batch-2": ("MSFT", "hammer", "hourly"),
    }
    first_row = rows["batch-0"]
    assert first_row["type"] == "pattern_detected"
    assert first_row["confidence"] == pytest.approx(0.5)
    assert first_row["detected_at"] == datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    assert (first_row["price"], first_row["volume"], first_row["source"]) == (100.0, 1000.0, "tests")
    assert first_row["payload"]["id"] == "batch-0"
    await wait_settled(live_hub.hub.js)
    assert len(await _rows(ref_pool, ["batch-0", "batch-1", "batch-2"])) == 3


@pytest.mark.parametrize("shape", ["wrapped", "bare array"])
async def test_both_body_shapes(client: httpx.AsyncClient, ref_pool: AsyncConnectionPool, shape: str) -> None:
    events = [make_event(i, prefix=f"shape-{shape.replace(' ', '-')}") for i in range(2)]
    response = await client.post(PATH, json={"events": events} if shape == "wrapped" else events)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
    await _stored(ref_pool, [str(e["id"]) for e in events])


async def test_a_legacy_envelope_is_accepted_with_a_derived_id(
    client: httpx.AsyncClient,
    ref_pool: AsyncConnectionPool,
) -> None:
    envelope = _legacy(price=187.5, note="from the old producer")
    response = await client.post(PATH, json=[envelope])
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["status"] == "accepted"
    assert re.fullmatch(r"ts-[0-9a-f]{32}", result["id"])  # hub.upstream.derived_id
    resent = (await client.post(PATH, json=[envelope])).json()["results"][0]
    assert (resent["status"], resent["id"], resent["seq"]) == ("duplicate", result["id"], result["seq"])
    row = (await _stored(ref_pool, [result["id"]]))[result["id"]]
    assert (row["symbol"], row["pattern"], row["timeframe"]) == ("AAPL", "hammer", "daily")
    assert row["source"] == "tickstock"
    assert row["confidence"] == pytest.approx(0.8)
    assert row["price"] == 187.5
    assert row["detected_at"] == datetime.fromtimestamp(LEGACY_TS, tz=UTC)
    assert row["payload"]["data"] == {
        "note": "from the old producer",
        "tier": "daily",
        "timeframe_from": "source:daily",
        "upstream_pattern": "Hammer",
    }


async def test_a_legacy_percentage_confidence_is_rejected(
    client: httpx.AsyncClient,
    live_hub: LiveHub,
) -> None:
    before = await _last_seq(live_hub.hub.js)
    response = await client.post(PATH, json={"events": [_legacy(confidence=85)]})
    assert response.status_code == 200
    body = response.json()
    [result] = body["results"]
    assert (result["status"], result["reason"]) == ("rejected", "confidence_out_of_range")
    assert result["id"] is None  # an envelope without id: nothing to echo
    assert [f["loc"] for f in result["fields"]] == ["confidence"]
    assert (body["accepted"], body["rejected"]) == (0, 1)
    assert await _last_seq(live_hub.hub.js) == before


async def test_a_mixed_batch_has_a_verdict_per_event_in_order(client: httpx.AsyncClient) -> None:
    seen = make_event(0, prefix="mixed")
    assert (await client.post(PATH, json=[seen])).json()["accepted"] == 1
    accepted_before = await _metric(client, "accepted")
    rejected_before = await _metric(client, "rejected")
    batch: list[Any] = [
        make_event(1, prefix="mixed"),
        seen,
        make_event(2, prefix="mixed", confidence=1.5),
        42,
        make_event(3, prefix="mixed", symbol="NOT A SYMBOL"),
        "a string is not an event",
        make_event(4, prefix="mixed", pattern="no_such_pattern"),
        [make_event(5, prefix="mixed")],
    ]
    response = await client.post(PATH, json={"events": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["status"], r["id"], r.get("reason")) for r in body["results"]] == [
        ("accepted", "mixed-1", None),
        ("duplicate", "mixed-0", None),
        ("rejected", "mixed-2", "confidence_out_of_range"),
        ("rejected", None, "not_object"),
        ("rejected", "mixed-3", "invalid_symbol"),
        ("rejected", None, "not_object"),
        ("rejected", "mixed-4", "unknown_pattern"),
        ("rejected", None, "not_object"),
    ]
    assert (body["accepted"], body["duplicate"], body["rejected"], body["retry"]) == (1, 1, 6, 0)
    assert body["results"][2]["detail"]
    assert await _metric(client, "accepted") == accepted_before + 1
    assert await _metric(client, "rejected") == rejected_before + 6


# -- malformed requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b'[{"id": "\xff"}]', "the body is not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "the body is not valid JSON"),
        (b'{"event": []}', 'the body must be {"events": [...]} or a JSON array of events'),
        (b'{"events": {"id": "x"}}', 'the body must be {"events": [...]} or a JSON array of events'),
        (b"42", 'the body must be {"events": [...]} or a JSON array of events'),
        (b'"events"', 'the body must be {"events": [...]} or a JSON array of events'),
        (b"[]", "no events in the batch"),
        (b'{"events": []}', "no events in the batch"),
    ],
    ids=[
        "not JSON",
        "not UTF-8",
        "nested too deep",
        "no events key",
        "events not a list",
        "number",
        "string",
        "empty array",
        "empty events",
    ],
)
async def test_a_body_that_is_not_a_batch_is_400(
    client: httpx.AsyncClient,
    live_hub: LiveHub,
    content: bytes,
    detail: str,
) -> None:
    before = await _last_seq(live_hub.hub.js)
    response = await client.post(PATH, content=content, headers={"Content-Type": "application/json"})
    _assert_problem(response, 400, detail)
    assert response.json()["title"] == "Bad Request"
    assert await _last_seq(live_hub.hub.js) == before


async def test_too_many_events_is_413(client: httpx.AsyncClient, live_hub: LiveHub) -> None:
    before = await _last_seq(live_hub.hub.js)
    response = await client.post(PATH, json=[make_event(i, prefix="many") for i in range(MAX_EVENTS + 1)])
    _assert_problem(response, 413, f"at most {MAX_EVENTS} events per request")
    assert await _last_seq(live_hub.hub.js) == before


def _padded(size: int, prefix: str) -> bytes:
    """A valid one-event batch padded with whitespace to exactly ``size`` bytes."""
    body = json.dumps([make_event(0, prefix=prefix)]).encode()
    return body + b" " * (size - len(body))


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_body_limit(client: httpx.AsyncClient, live_hub: LiveHub, chunked: bool) -> None:
    name = "chunked" if chunked else "sized"
    at_limit, over = _padded(MAX_BYTES, f"limit-{name}"), _padded(MAX_BYTES + 1, f"over-{name}")

    def send(data: bytes) -> Any:
        content = _chunks(data) if chunked else data
        return client.post(PATH, content=content, headers={"Content-Type": "application/json"})

    fits = await send(at_limit)
    assert fits.status_code == 200, fits.text
    assert fits.json()["accepted"] == 1
    before = await _last_seq(live_hub.hub.js)
    response = await send(over)
    assert ("content-length" in response.request.headers) is not chunked
    _assert_problem(response, 413, f"the body is larger than {MAX_BYTES} bytes")
    assert await _last_seq(live_hub.hub.js) == before


async def test_a_declared_oversize_body_is_refused_before_it_is_sent(live_hub: LiveHub) -> None:
    token = mint_token(JWT_SECRET, subject="producer", scopes=["patterns:write"])
    reader, writer = await asyncio.open_connection("127.0.0.1", live_hub.port)
    try:
        writer.write(
            (
                f"POST {PATH} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {MAX_BYTES * 100}\r\n\r\n["
            ).encode()
        )
        await writer.drain()
        # The rest of the body never comes: only the declared length can have decided.
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 413 "), status_line


# -- who may post -----------------------------------------------------------------------------------


async def test_a_token_with_write_scope_is_needed(live_hub: LiveHub) -> None:
    reader = mint_token(JWT_SECRET, subject="reader", scopes=["patterns:read"])
    batch = [make_event(0, prefix="auth")]
    before = await _last_seq(live_hub.hub.js)
    async with httpx.AsyncClient(base_url=live_hub.url) as anonymous:
        missing = await anonymous.post(PATH, json=batch)
        read_only = await anonymous.post(PATH, json=batch, headers={"Authorization": f"Bearer {reader}"})
    _assert_problem(missing, 401, "a bearer token is required")
    assert missing.headers["www-authenticate"] == 'Bearer realm="tickstock", error="invalid_token"'
    _assert_problem(read_only, 403, "patterns:write")
    assert read_only.headers["www-authenticate"] == (
        'Bearer realm="tickstock", error="insufficient_scope", scope="patterns:write"'
    )
    assert await _last_seq(live_hub.hub.js) == before


# -- back-pressure ----------------------------------------------------------------------------------


async def test_a_saturated_gate_is_429_and_nothing_is_published(
    client: httpx.AsyncClient,
    live_hub: LiveHub,
    ref_pool: AsyncConnectionPool,
) -> None:
    throttled_before = await _metric(client, "throttled")
    before = await _last_seq(live_hub.hub.js)
    gate = live_hub.app.state.ingest_gate  # type: ignore[union-attr]
    held = INFLIGHT - 3  # other requests in flight on this node
    assert gate.try_acquire(held)
    try:
        batch = [make_event(i, prefix="throttled") for i in range(4)]
        response = await client.post(PATH, json=batch)
    finally:
        gate.release(held)
    _assert_problem(response, 429, "ingest is saturated")
    assert response.headers["retry-after"] == "1"
    assert await _last_seq(live_hub.hub.js) == before
    assert await _metric(client, "throttled") == throttled_before + 4
    await wait_settled(live_hub.hub.js)
    assert await _rows(ref_pool, [str(e["id"]) for e in batch]) == {}
    # The gate was not left holding anything: the same batch now passes, twice over.
    for round_ in range(2):
        fits = await client.post(
            PATH, json=[make_event(i, prefix=f"fits{round_}") for i in range(MAX_EVENTS)]
        )
        assert fits.status_code == 200, fits.text
        assert fits.json()["accepted"] == MAX_EVENTS
    assert gate.inflight == 0


async def test_a_batch_larger_than_the_gate_is_413_not_429(live_hub: LiveHub, settings: Settings) -> None:
    small_gate = dataclasses.replace(settings, http_ingest_inflight=2)
    app = create_app(small_gate, hub=live_hub.hub)
    transport = httpx.ASGITransport(app=app)
    token = mint_token(JWT_SECRET, subject="producer", scopes=["patterns:write"])
    async with httpx.AsyncClient(
        transport=transport, base_url="http://hub", headers={"Authorization": f"Bearer {token}"}
    ) as small:
        response = await small.post(PATH, json=[make_event(i, prefix="gate") for i in range(3)])
    _assert_problem(response, 413, "at most 2 events per request")


async def test_events_the_stream_refuses_are_retry_or_too_large(
    client: httpx.AsyncClient,
    live_hub: LiveHub,
    ref_pool: AsyncConnectionPool,
) -> None:
    js = live_hub.hub.js
    seen = make_event(0, prefix="full")
    assert (await client.post(PATH, json=[seen])).json()["accepted"] == 1
    small = make_event(1, prefix="full")
    large = make_event(2, prefix="full", data={"blob": "x" * 2048})
    info = await js.stream_info(INGEST_STREAM)
    # A stream that refuses a message for its size: retrying cannot help, so it is rejected.
    await js.update_stream(dataclasses.replace(info.config, max_msg_size=1024))
    try:
        sized = await client.post(PATH, json=[small, seen, large, {"id": "bad"}])
    finally:
        await _restore(live_hub)
    assert sized.status_code == 200, sized.text
    body = sized.json()
    assert [(r["status"], r["id"]) for r in body["results"]] == [
        ("accepted", "full-1"),
        ("duplicate", "full-0"),
        ("rejected", "full-2"),
        ("rejected", "bad"),
    ]
    assert body["results"][2]["reason"] == "too_large"
    assert (body["accepted"], body["duplicate"], body["rejected"], body["retry"]) == (1, 1, 2, 0)
    # A full stream (discard new): the producer is told to retry.
    await wait_settled(js)
    await js.update_stream(dataclasses.replace(info.config, max_bytes=64))
    retry_before = await _metric(client, "retry")
    try:
        full = await client.post(PATH, json=[large])
    finally:
        await _restore(live_hub)
    assert full.status_code == 429, full.text
    assert full.headers["retry-after"] == "1"
    result = full.json()["results"][0]
    assert (result["status"], result["reason"]) == ("retry", "ingest_full") and result["detail"]
    assert "seq" not in result
    assert await _metric(client, "retry") == retry_before + 1
    # Retried as told, once the stream has room, it goes through.
    retried = await client.post(PATH, json=[large])
    assert retried.status_code == 200
    assert retried.json()["results"][0]["status"] == "accepted"
    await _stored(ref_pool, ["full-0", "full-1", "full-2"])


async def test_events_are_retry_while_the_ingest_stream_is_gone(
    client: httpx.AsyncClient,
    live_hub: LiveHub,
    ref_pool: AsyncConnectionPool,
) -> None:
    js = live_hub.hub.js
    events = [make_event(i, prefix="gone") for i in range(3)]
    await wait_settled(js)  # nothing of earlier tests is lost with the stream
    await js.delete_stream(INGEST_STREAM)
    try:
        response = await client.post(PATH, json={"events": events})
    finally:
        await _restore(live_hub)
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert [(r["status"], r["id"], r["reason"]) for r in body["results"]] == [
        ("retry", e["id"], "ingest_unavailable") for e in events
    ]
    assert (body["accepted"], body["duplicate"], body["rejected"], body["retry"]) == (0, 0, 0, 3)
    assert await _rows(ref_pool, [str(e["id"]) for e in events]) == {}
    again = await client.post(PATH, json={"events": events})
    assert again.status_code == 200
    assert again.json()["accepted"] == 3
    await _stored(ref_pool, [str(e["id"]) for e in events])
