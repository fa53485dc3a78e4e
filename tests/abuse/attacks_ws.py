"""Websocket attacks: deep and ill-typed frames, binary frames, tokens whose content must never be
echoed in a close reason, and unauthenticated opens beyond the per-address bucket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hub.protocol import CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED
from tests.abuse.campaign import Attack, Ctx

MAX_REASON_BYTES = 123
SILENT_S = 3.0  # how long to wait for an answer frame or a close


async def open_ws(
    ctx: Ctx, token: str | None = None, *, source: str | None = None, url: str | None = None
) -> ClientConnection:
    """A websocket to the HS256 hub from a fresh loopback address (``?token=`` when given)."""
    uri = (url or ctx.hub.ws_url) + (f"?token={token}" if token is not None else "")
    return await websockets.connect(
        uri, local_addr=(source or ctx.loopback.take(), 0), max_size=None, open_timeout=10, ping_interval=None
    )


async def next_reply(
    ws: ClientConnection, *, ops: tuple[str, ...] = ("error", "pong", "welcome")
) -> dict[str, Any]:
    """The next frame whose ``op`` is in ``ops`` (events and server pings are skipped); TimeoutError
    when none came within :data:`SILENT_S` in all (a flood of other frames cannot hide a missing one)."""
    async with asyncio.timeout(SILENT_S):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("op") in ops:
                return frame


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    """(code, reason) of the close frame the server sends; 1006 when the TCP connection dropped without one."""
    try:
        async with asyncio.timeout(SILENT_S):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return 1006, ""
        return exc.rcvd.code, exc.rcvd.reason
    except TimeoutError:
        await ws.close()
        return 0, "not closed"


async def still_open(ws: ClientConnection, what: str) -> None:
    await ws.send(json.dumps({"op": "ping", "ts": what}))
    reply = await next_reply(ws, ops=("pong",))
    assert reply["ts"] == what, reply


async def deep_and_ill_typed_frames(ctx: Ctx) -> None:
    """Each answered with a documented error frame; the connection stays open (never 1011)."""
    ws = await open_ws(ctx, ctx.token("ws-attacker", ("patterns:read",)))
    try:
        assert (await next_reply(ws))["op"] == "welcome"
        frames: list[tuple[str, str | bytes, set[str]]] = [
            ("32,000 [ … ] (under 64 KiB)", "[" * 32_000 + "]" * 32_000, {"bad_frame", "invalid"}),
            (
                "40 levels in an op",
                json.dumps({"op": "ping", "ts": json.loads("[" * 40 + "]" * 40)}),
                {"bad_frame", "invalid"},
            ),
            (
                "40 levels in a filter",
                json.dumps(
                    {"op": "subscribe", "id": "d", "filter": json.loads('{"a":' * 40 + "1" + "}" * 40)}
                ),
                {"bad_frame", "invalid", "invalid_filter"},
            ),
            ("binary", b"\x00\x01\x02\xff", {"bad_frame"}),
            ("op is a number", '{"op": 5}', {"bad_frame"}),
            ("op is a list", '{"op": ["subscribe"]}', {"bad_frame"}),
            ("id is an object", '{"op": "subscribe", "id": {"x": 1}}', {"invalid"}),
            (
                "symbols is a string",
                '{"op": "subscribe", "id": "s", "filter": {"symbols": "AAPL"}}',
                {"invalid", "invalid_filter"},
            ),
            (
                "confidence is text",
                '{"op": "subscribe", "id": "s", "filter": {"confidence_min": "high"}}',
                {"invalid", "invalid_filter"},
            ),
            ("since 2**70", '{"op": "subscribe", "id": "s", "since": 1180591620717411303424}', {"invalid"}),
            ("since NaN", '{"op": "subscribe", "id": "s", "since": NaN}', {"bad_frame", "invalid"}),
            ("duplicate keys", '{"op": "ping", "op": "subscribe", "id": "s"}', {"bad_frame", "invalid"}),
            ("lone surrogate", '{"op": "subscribe", "id": "\\ud800"}', {"bad_frame", "invalid"}),
            (
                "NUL in a symbol",
                '{"op": "subscribe", "id": "s", "filter": {"symbols": ["A\\u0000B"]}}',
                {"invalid", "invalid_filter"},
            ),
            ("unknown op with CR/LF", '{"op": "x\\r\\nERROR forged"}', {"unknown_op"}),
        ]
        for name, frame, codes in frames:
            await ws.send(frame)
            try:
                reply = await next_reply(ws, ops=("error",))
            except ConnectionClosed as exc:
                raise AssertionError(f"{name}: the connection closed ({exc.rcvd})") from None
            except TimeoutError:
                raise AssertionError(f"{name}: no error frame within {SILENT_S} s") from None
            assert reply["code"] in codes, (name, reply)
            assert "\r" not in reply["message"] and "\n" not in reply["message"], (name, reply)
        await still_open(ws, "after the frames")
    finally:
        await ws.close()


async def oversized_nesting_frame(ctx: Ctx) -> None:
    """100,000 ``[`` (over the 64 KiB frame limit): an error frame, or close 1009; never 1011/1006."""
    ws = await open_ws(ctx, ctx.token("ws-attacker-2", ("patterns:read",)))
    try:
        await next_reply(ws)
        await ws.send("[" * 100_000)
        try:
            reply = await next_reply(ws, ops=("error",))
            assert reply["code"] in ("bad_frame", "invalid"), reply
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1009, exc.rcvd
    finally:
        await ws.close()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    import base64

    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.c2lnbmF0dXJl"


def hostile_tokens(ctx: Ctx) -> dict[str, tuple[str, str]]:
    """name → (token, text of it that must never be echoed)."""
    return {
        "alg 100 é": (_unsigned({"alg": "é" * 100, "typ": "JWT"}, {"sub": "x"}), "é"),
        "kid of 300 é": (_unsigned({"alg": "RS256", "kid": "é" * 300}, {"sub": "x"}), "é"),
        "sub of 300": (ctx.token("S" * 300, ("patterns:read",)), "S" * 40),
        "sub with NUL": (ctx.token("nul\u0000sub", ("patterns:read",)), "nul"),
        "sub with CR/LF": (ctx.token("crlf\r\nsub", ("patterns:read",)), "crlf"),
    }


async def tokens_never_echoed_in_close_reasons(ctx: Ctx) -> None:
    """Each bad token (as ``?token=``, as an ``auth`` frame): close 4401 with a reason of at most 123
    UTF-8 bytes that holds none of the token's text."""
    source = ctx.loopback.take()  # ten failures: within the per-address burst of 20
    for name, (token, secret) in hostile_tokens(ctx).items():
        for how in ("query", "frame"):
            ws = await open_ws(ctx, token if how == "query" else None, source=source)
            if how == "frame":
                await ws.send(json.dumps({"op": "auth", "token": token}))
            code, reason = await close_of(ws)
            assert code == 4401, (name, how, code, reason)
            assert len(reason.encode()) <= MAX_REASON_BYTES, (name, how, reason)
            assert secret not in reason, (name, how, reason)


BURST = 20  # TICKSTOCK_AUTH_FAILURE_BURST's default
REFILL_PER_S = 1.0  # TICKSTOCK_AUTH_FAILURE_PER_S's default
MAX_UNAUTHENTICATED_OPENS = 400  # a bucket that never refuses fails here, however slow the machine


async def unauthenticated_opens_beyond_the_bucket(ctx: Ctx) -> None:
    """Sockets from one address that never authenticate, opened one after another: each open costs as a
    failed authentication does, so once the burst is spent they are closed with 4429. The bucket holds
    ``BURST`` and refills ``REFILL_PER_S`` a second (as documented), so the oracle is the bucket itself:
    of the opens done ``t`` seconds after the first, at most ``BURST + REFILL_PER_S * t + 1`` may be let
    in (on a loaded machine an open can take half a second, and the refills count)."""
    loop = asyncio.get_running_loop()
    source = ctx.loopback.take()
    started = loop.time()
    sockets: list[ClientConnection] = []
    opened_at: list[float] = []
    try:
        while len(sockets) < MAX_UNAUTHENTICATED_OPENS:  # hygiene: ok - one open a turn until refused
            sockets.append(await open_ws(ctx, source=source))
            opened_at.append(loop.time())
            await asyncio.sleep(0)  # a refused socket's close frame comes right after its handshake
            if any(ws.close_code == CLOSE_TOO_MANY for ws in sockets):
                break
        # Let in: closed 4401 when the authentication timeout ends, or still open (0); refused: 4429.
        codes = [code for code, _ in await asyncio.gather(*(close_of(ws) for ws in sockets))]
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    assert CLOSE_TOO_MANY in codes, f"no 4429 after {len(codes)} unauthenticated opens: {codes}"
    assert set(codes) <= {CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED, 0}, codes
    let_in = 0
    for code, at in zip(codes, opened_at, strict=True):
        let_in += code != CLOSE_TOO_MANY
        allowed = BURST + REFILL_PER_S * (at - started) + 1
        # The clock only loosens this bound (refills): it is never a deadline.
        assert let_in <= allowed, (allowed, codes)  # hygiene: ok - refills, not a deadline


ATTACKS: dict[str, Attack] = {
    f.__name__: f
    for f in (
        deep_and_ill_typed_frames,
        oversized_nesting_frame,
        tokens_never_echoed_in_close_reasons,
        unauthenticated_opens_beyond_the_bucket,
    )
}
