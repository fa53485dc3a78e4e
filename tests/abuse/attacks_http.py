"""HTTP attacks with a ``patterns:write`` token (and one with only ``patterns:read``): far dates, bad
bodies, odd events, absurd queries, oversized headers, forged cursors, hostile admin bodies.

Each attack asserts the answer the contract documents (CONTRACT-11.md, docs/nats-contract.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx

from tests.abuse.campaign import Attack, Ctx
from tests.abuse.harness import DOCUMENTED_REASONS, assert_problem, hostile_event, now_iso
from tests.conftest import JWT_SECRET

SERVER_ERRORS = range(500, 600)


def _verdicts(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
    return list(response.json()["results"])


async def far_dates_2000_and_2019(ctx: Ctx) -> None:
    """The issue's first request: 2000-01 and 2019-12 (240 partitions on main). 2000-01 is older than
    the 20-year window and refused synchronously; 2019-12 is inside it and stored (one partition)."""
    client = await ctx.client(ctx.token())
    old = hostile_event("y2000", detected_at="2000-01-15T10:00:00Z")
    inside = hostile_event("y2019", detected_at="2019-12-15T10:00:00Z")
    ctx.in_window_months.add("2019-12")
    first, second = _verdicts(await client.post("/api/patterns", json={"events": [old, inside]}))
    assert (first["status"], first.get("reason")) == ("rejected", "detected_at_out_of_range"), first
    assert second["status"] == "accepted", second
    await ctx.stored(str(inside["id"]))


async def far_dates_0001_and_9999_with_a_neighbour(ctx: Ctx) -> None:
    """0001-01 and 9999-12 (a statement timeout and 30 retries on main) beside a valid event: both
    refused synchronously, the neighbour stored at once."""
    client = await ctx.client(ctx.token())
    events = [
        hostile_event("y0001", detected_at="0001-01-01T00:00:00Z"),
        hostile_event("y9999", detected_at="9999-12-01T00:00:00Z"),
        hostile_event("neighbour"),
    ]
    low, high, neighbour = _verdicts(await client.post("/api/patterns", json=events))
    assert (low["status"], low.get("reason")) == ("rejected", "detected_at_out_of_range"), low
    assert (high["status"], high.get("reason")) == ("rejected", "detected_at_out_of_range"), high
    assert neighbour["status"] == "accepted", neighbour
    await ctx.stored(str(events[2]["id"]))


async def out_of_window_expiry_and_future(ctx: Ctx) -> None:
    client = await ctx.client(ctx.token())
    events = [
        hostile_event("exp9999", expires_at="9999-12-31T00:00:00Z"),
        hostile_event("ahead", detected_at=now_iso(3 * 86400)),
    ]
    expiry, ahead = _verdicts(await client.post("/api/patterns", json=events))
    assert (expiry["status"], expiry.get("reason")) == ("rejected", "expires_at_out_of_range"), expiry
    assert (ahead["status"], ahead.get("reason")) == ("rejected", "detected_at_out_of_range"), ahead


async def read_only_token_cannot_publish(ctx: Ctx) -> None:
    client = await ctx.client(ctx.token("reader-only", ("patterns:read",)))
    assert_problem(await client.post("/api/patterns", json=[hostile_event("ro")]), 403)


async def hostile_bodies(ctx: Ctx) -> None:
    """Bodies that are not a batch: each a 400 (or 413 for size), never a 500."""
    client = await ctx.client(ctx.token())
    good = json.dumps(hostile_event("body")).encode()
    cases: list[tuple[str, bytes, int]] = [
        ("non-UTF-8", b'{"events": [{"id": "\xff\xfe"}]}', 400),
        ("NaN", good.replace(b'"confidence": 0.5', b'"confidence": NaN'), 400),
        ("Infinity", b'[{"confidence": Infinity}]', 400),
        ("duplicate keys", good[:-1] + b', "id": "other"}', 400),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, 400),
        ("empty", b"", 400),
        ("null", b"null", 400),
        ("empty batch", b'{"events": []}', 400),
        ("events not a list", b'{"events": {"a": 1}}', 400),
        ("too many events", json.dumps([hostile_event("many")] * 1001).encode(), 413),
        ("over 4 MiB", b'{"events": ["' + b"x" * (5 << 20) + b'"]}', 413),
    ]
    for name, body, status in cases:
        response = await client.post(
            "/api/patterns", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:200]}"
        assert_problem(response, status)


async def odd_events_get_a_reason(ctx: Ctx) -> None:
    """Events a batch may carry: each is 'rejected' with a documented reason, the request is 200."""
    client = await ctx.client(ctx.token())
    events: list[object] = [
        hostile_event("levels", levels={f"l{i}": float(i) for i in range(10_000)}),
        hostile_event("levels-type", levels={"support": "low"}),
        hostile_event("indicators", indicators={f"i{i}": 1.0 for i in range(100_000)}),
        hostile_event("conf", confidence=1e308),
        hostile_event("sym", symbol="A" * 500),
        {**hostile_event("id"), "id": "é id with spaces\u0000"},
        {**hostile_event("id"), "id": "x" * 129},
        hostile_event("crlf", pattern="Ham\r\nmer 2026-01-01 00:00:00,000 ERROR   forged"),
        hostile_event("data", data={"blob": "x" * 20_000}),
        hostile_event("nested-data", data=json.loads("[" * 500 + "]" * 500)),
        hostile_event("ts", detected_at="2026-13-45T99:99:99Z"),
        hostile_event("type", type=["pattern_detected"]),
        [1, 2, 3],
        "a string",
        None,
        12,
    ]
    verdicts = _verdicts(await client.post("/api/patterns", json=events))
    assert len(verdicts) == len(events)
    for event, verdict in zip(events, verdicts, strict=True):
        label = str(event)[:80]
        assert verdict["status"] == "rejected", f"{label}: {verdict}"
        assert verdict["reason"] in DOCUMENTED_REASONS, f"{label}: {verdict}"


QUERIES = [
    "limit=100000000000000000000000",
    "limit=-1",
    "limit=1&limit=2",
    "confidence_min=nan",
    "confidence_min=inf",
    "confidence_max=-1e400",
    "detected_after=0001-01-01T00:00:00Z",
    "detected_before=99999-01-01",
    "detected_after=%00",
    "sort=;DROP TABLE pattern_events",
    "order=sideways",
    "symbol=%00",
    "symbol=" + "A" * 5000,
    "&".join(["symbol=AAPL"] * 2000),
    "universe=" + ":".join(["sp500"] * 500),
    "pattern=" + "%0d%0a" * 100,
    "timeframe=daily&timeframe=daily&timeframe=x",
    "page=99999999999999&per_page=500",
    "cursor=" + "A" * 5000,
    "cursor=%00%00",
    "unknown=1",
    "%ff%fe=%ff",
]


# The same on TickStock's compatibility scan, in upstream's names (api/routes/compat).
COMPAT_QUERIES = [
    "per_page=99999999999999999999&page=99999999999999999999",
    "per_page=-99999999999999999999&page=-1",
    "&".join(["pattern_types=hammer"] * 2000),
    "symbols=" + "A" * 5000,
    "rsi_range=" + ",".join(["1"] * 5000),
    "rsi_range=1e999,-1e999",
    "universe=" + ":".join(["sp500"] * 500),
    "sectors=%00",
    "sort_by=%0d%0a",
    "rs_min=1e999",
    "limit=5&per_page=5",
]


async def absurd_queries(ctx: Ctx) -> None:
    """Absurd, repeated and NUL-carrying query strings on the read routes: never a server error, and
    a NUL is always refused (400/404), never passed to PostgreSQL."""
    client = await ctx.client(ctx.token("query-attacker", ("patterns:read",)))
    for query in QUERIES:
        response = await client.get("/api/patterns/scan?" + query)
        assert response.status_code not in SERVER_ERRORS, (
            f"scan?{query[:80]}: {response.status_code} {response.text[:200]}"
        )
        if "%00" in query:
            assert response.status_code == 400, f"scan?{query[:80]}: {response.status_code}"
    for path in (
        "/api/symbols?q=%00",
        "/api/symbols?q=" + "Z" * 10_000,
        "/api/symbols?universe=%00",
        "/api/symbols?limit=1&limit=1",
        "/api/symbols/%00",
        "/api/symbols/" + "A" * 300,
        "/api/patterns/%00",
        "/api/patterns/" + "x" * 300,
        "/api/universes/%00",
        "/api/patterns/stats?days=999999999999",
        "/api/admin/dlq?before=%00",
    ):
        response = await client.get(path)
        assert response.status_code not in SERVER_ERRORS, (
            f"{path[:80]}: {response.status_code} {response.text[:200]}"
        )
        if "%00" in path:
            assert response.status_code in (400, 403, 404), f"{path[:80]}: {response.status_code}"


async def absurd_compat_queries(ctx: Ctx) -> None:
    """The same on TickStock's compatibility routes (api/routes/compat), in upstream's names: a 200
    (clamped) or a 400, never a server error; a NUL is always refused."""
    client = await ctx.client(ctx.token("query-attacker", ("patterns:read",)))
    for query in COMPAT_QUERIES:
        response = await client.get("/tickstock/api/patterns/scan?" + query)
        assert response.status_code in (200, 400), f"compat scan?{query[:80]}: {response.status_code}"
        if "%00" in query:
            assert response.status_code == 400, f"compat scan?{query[:80]}: {response.status_code}"
    for path in (
        "/tickstock/api/patterns/daily?symbols=%00",
        "/tickstock/api/patterns/daily?limit=" + "9" * 5000,
        "/tickstock/api/symbols?search=%00",
        "/tickstock/api/symbols/search?query=%00",
        "/tickstock/api/users/universe/%00",
    ):
        response = await client.get(path)
        assert response.status_code in (400, 404), f"{path[:80]}: {response.status_code}"


async def oversized_headers(ctx: Ctx) -> None:
    """A 100 KB header, 500 headers, a 64 KB token: refused (4xx or the connection closed), never 5xx."""
    attempts: list[dict[str, str]] = [
        {"X-Junk": "j" * 100_000},
        {f"X-H{i}": "v" for i in range(500)},
        {"Authorization": "Bearer " + "a" * 65_536},
    ]
    for headers in attempts:
        client = await ctx.client()
        try:
            response = await client.get("/api/patterns/scan", headers=headers)
        except httpx.HTTPError:
            continue  # the server closed the connection: refused
        assert response.status_code in range(400, 500), f"{list(headers)[:2]}: {response.status_code}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# The cursor format since #11 (store/cursor.py): ``v1.<b64url payload>.<b64url HMAC-SHA256>``, the MAC
# over ``DOMAIN + "v1" NUL kind NUL payload`` with a per-deployment key the attacker never sees.
CURSOR_DOMAIN = b"tickstock-cursor\x00"
WRONG_SCAN_VALUES: list[list[object]] = [
    [123, 456],
    ["2026-01-01T00:00:00+00:00", {"a": 1}],
    ["2026-01-01T00:00:00+00:00", [1, 2]],
    ["2026-01-01T00:00:00+00:00", 5],
    ["2026-01-01T00:00:00+00:00", "a\u0000b"],
    [None, None],
    ["9999-12-31T23:59:59+00:00", True],
    [[], {}],
]


def cursor_body(real: str) -> dict[str, Any]:
    """The JSON payload of a cursor the hub issued (``v1.<payload>.<mac>``)."""
    version, payload, _mac = real.split(".")
    assert version == "v1", real
    body: dict[str, Any] = json.loads(_unb64(payload))
    return body


def signed_cursors(real: str, kind: str, doc: dict[str, Any], key: bytes | None) -> list[str]:
    """``doc`` as a cursor of today's format: MAC'd with ``key`` the way the hub MACs (but a key that is
    not the deployment's), or, when ``key`` is None, with the real cursor's MAC, a made-up MAC and none."""
    payload = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    head = "v1." + _b64(payload)
    if key is not None:
        message = CURSOR_DOMAIN + b"v1\x00" + kind.encode() + b"\x00" + payload
        return [f"{head}.{_b64(hmac.new(key, message, hashlib.sha256).digest())}"]
    return [f"{head}.{real.rsplit('.', 1)[1]}", f"{head}.{_b64(bytes(32))}", head, head + "."]


def old_format_cursors(doc: dict[str, Any], key: bytes | None) -> list[str]:
    """``doc`` in the pre-#11 format (base64url of the JSON with ``m`` = the first 16 bytes of an
    HMAC-SHA256 over its sorted compact JSON, keyed with ``key``; a made-up ``m`` when None)."""
    message = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    mac = _b64(hmac.new(key, message, hashlib.sha256).digest()[:16]) if key else "AAAAAAAAAAAAAAAAAAAAAA"
    return [_b64(json.dumps({**doc, "m": mac}, separators=(",", ":")).encode())]


def forged_scan_cursors(real: str, key: bytes | None) -> list[str]:
    """Cursors with the real one's sort and filter fingerprint but wrong value types: in today's format
    (MAC'd with ``key``, or with a borrowed, made-up or absent MAC when ``key`` is None) and in the old
    format (MAC'd with ``key`` as the hub did before #11)."""
    body = cursor_body(real)
    forged = []
    for values in WRONG_SCAN_VALUES:
        doc = {"k": values, "s": body["s"], "f": body["f"]}
        forged += signed_cursors(real, "scan", doc, key) + old_format_cursors(doc, key)
    return forged


def _show(cursor: str) -> str:
    """A cursor for a failure message: each part decoded where it is base64url JSON."""
    try:
        return repr([_unb64(part)[:120] for part in cursor.split(".")])
    except ValueError:
        return repr(cursor[:120])


async def assert_cursors_refused(
    client: httpx.AsyncClient, cursors: list[str], *, what: str, path: str = "/api/patterns/scan"
) -> None:
    """Each a 400 problem naming the cursor: ``invalid cursor`` from the cursor reader, or, for a cursor
    holding a control character, the query reader's documented ``invalid query`` at ``query.cursor``."""
    for cursor in cursors:
        response = await client.get(path, params={"limit": "1", "cursor": cursor})
        assert response.status_code == 400, (
            f"{what} {_show(cursor)}: {response.status_code} {response.text[:200]}"
        )
        body = assert_problem(response, 400, mentions="cursor")
        detail = str(body.get("detail", ""))
        if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in cursor):
            assert detail.startswith(("invalid query", "invalid cursor")), (what, _show(cursor), body)
            assert "query.cursor" in json.dumps(body), (what, _show(cursor), body)
        else:
            assert detail.startswith("invalid cursor"), (what, _show(cursor), body)


async def forged_scan_cursor(ctx: Ctx) -> None:
    """Forged cursors with wrong value types: unsigned, with a borrowed or made-up MAC, and signed with
    the key the hub derived from its JWT secret before #11 (a cursor key must be separate and random
    now), in today's format and the old one; and the real cursor with a NUL or CR/LF in it. Each a 400
    naming the cursor."""
    client = await ctx.client(ctx.token("cursor-forger", ("patterns:read",)))
    page = await client.get("/api/patterns/scan", params={"limit": "1"})
    assert page.status_code == 200, page.text[:200]
    real = page.json()["next_cursor"]
    assert real, "the steady flow stored nothing to page through"
    old_key = hashlib.sha256(b"tickstock-scan-cursor\0" + JWT_SECRET.encode()).digest()
    await assert_cursors_refused(client, forged_scan_cursors(real, None), what="unsigned")
    await assert_cursors_refused(
        client, forged_scan_cursors(real, old_key), what="signed with the JWT-derived key"
    )
    await assert_cursors_refused(
        client, [real + "\u0000", "\u0000" + real, real[:10] + "\r\n" + real[10:]], what="a control character"
    )


async def symbols_cursor_with_nul(ctx: Ctx) -> None:
    """Symbol cursors whose ``after`` is a NUL-carrying string or the wrong type, with a borrowed,
    made-up or absent MAC and in the old format; a scan cursor offered as a symbols cursor; the real
    cursor with a NUL in it. Each a 400 naming the cursor."""
    client = await ctx.client(ctx.token("symbols-forger", ("patterns:read",)))
    page = await client.get("/api/symbols", params={"limit": "2"})
    assert page.status_code == 200, page.text[:200]
    real = page.json()["next_cursor"]
    assert real, "fewer than three symbols to page through"
    doc = cursor_body(real)
    forged: list[str] = []
    for after in ("A\u0000B", "\u0000", {"x": 1}, 5):
        forged += signed_cursors(real, "symbols", {**doc, "after": after}, None)
        forged += old_format_cursors({**doc, "after": after}, None)
        forged.append(_b64(json.dumps({**doc, "after": after}).encode()))  # the old format had no MAC
    scan = await client.get("/api/patterns/scan", params={"limit": "1"})
    if scan.status_code == 200 and scan.json()["next_cursor"]:
        forged.append(scan.json()["next_cursor"])  # a valid cursor of another kind
    forged += [real + "\u0000", real.replace(".", ".\u0000", 1)]
    await assert_cursors_refused(client, forged, what="a symbols cursor", path="/api/symbols")


async def admin_replay_bodies(ctx: Ctx) -> None:
    """A dead letter replayed with a deeply nested body (400) and with an oversized one (413)."""
    ack = await ctx.js.publish(
        "tickstock.ingest.daily.KO", json.dumps(hostile_event("replay", pattern="nope")).encode()
    )
    letter = await ctx.dead_letter_of(ack.seq)
    client = await ctx.client(ctx.token("abuse-admin", ("admin",)))
    url = f"/api/admin/dlq/{letter['id']}/replay"
    headers = {"Content-Type": "application/json"}
    assert_problem(await client.post(url, content=b"[" * 100_000 + b"]" * 100_000, headers=headers), 400)
    assert_problem(await client.post(url, content=b"[" * 40 + b"]" * 40, headers=headers), 400)
    assert_problem(
        await client.post(url, content=b'{"a": "' + b"x" * (2 << 20) + b'"}', headers=headers), 413
    )


ATTACKS: dict[str, Attack] = {
    f.__name__: f
    for f in (
        far_dates_2000_and_2019,
        far_dates_0001_and_9999_with_a_neighbour,
        out_of_window_expiry_and_future,
        read_only_token_cannot_publish,
        hostile_bodies,
        odd_events_get_a_reason,
        absurd_queries,
        absurd_compat_queries,
        oversized_headers,
        forged_scan_cursor,
        symbols_cursor_with_nul,
        admin_replay_bodies,
    )
}
