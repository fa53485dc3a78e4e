"""store.cursor: one signed, versioned cursor format; every refusal is a CursorError, never a crash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from psycopg_pool import AsyncConnectionPool

from store.cursor import MAX_CURSOR_CHARS, CursorCodec, CursorError, cursor_key

CODEC = CursorCodec(b"a-test-key-of-32-bytes-0123456789")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip_is_url_safe_and_bound_to_its_kind() -> None:
    token = CODEC.encode("scan", {"k": ["AAPL", 0.5], "f": "x"})
    assert token.startswith("v1.") and all(c.isalnum() or c in "-_." for c in token)
    assert CODEC.decode("scan", token) == {"k": ["AAPL", 0.5], "f": "x"}
    with pytest.raises(CursorError, match="altered"):
        CODEC.decode("symbols", token)


def _signed(payload: bytes, *, version: str = "v1", kind: str = "scan") -> str:
    key = b"a-test-key-of-32-bytes-0123456789"
    message = b"tickstock-cursor\x00" + version.encode() + b"\x00" + kind.encode() + b"\x00" + payload
    return f"{version}.{_b64(payload)}.{_b64(hmac.new(key, message, hashlib.sha256).digest())}"


GOOD = CODEC.encode("scan", {"k": 1})
HOSTILE = {
    "not text": 5,
    "empty": "",
    "NUL": GOOD[:5] + "\x00" + GOOD[5:],
    "control character": GOOD[:5] + "\x1b" + GOOD[5:],
    "newline": GOOD + "\n",
    "padding": GOOD + "==",
    "non-ASCII": GOOD[:5] + "é" + GOOD[5:],
    "two parts": GOOD.rsplit(".", 1)[0],
    "four parts": GOOD + ".AAAA",
    "bad base64 length": "v1.A.AAAA",
    "bad MAC": GOOD[:-2] + ("AA" if not GOOD.endswith("AA") else "BB"),
    "short MAC": GOOD.rsplit(".", 1)[0] + ".AAAA",
    "unknown version": "v2." + GOOD.split(".", 1)[1],
    "oversize": "v1." + "A" * MAX_CURSOR_CHARS + ".AAAA",
    "signed, not an object": _signed(b"[1, 2]"),
    "signed, not JSON": _signed(b"\xff\xfe"),
    "signed, NaN": _signed(b'{"k": NaN}'),
    "signed, deep": _signed(b"[" * 100_000),
    "old format": _b64(b'{"k":[],"s":"x","f":"y","m":"z"}'),
}


@pytest.mark.parametrize("token", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_tokens_are_refused_with_one_error(token: object) -> None:
    with pytest.raises(CursorError, match=r"^invalid cursor: ") as raised:
        CODEC.decode("scan", token)
    assert raised.value.reason and isinstance(raised.value, ValueError)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        CursorCodec(b"short")


async def test_the_key_is_per_deployment_and_never_the_old_public_constant(pool: AsyncConnectionPool) -> None:
    generated = await cursor_key(pool, secret=None)
    assert generated == await cursor_key(pool, secret=None) and len(generated) == 32  # one key for every node
    configured = await cursor_key(pool, secret="operator-chosen-secret")
    assert configured == await cursor_key(pool, secret="operator-chosen-secret")
    assert len({generated, configured, await cursor_key(pool, secret="another")}) == 3
    old_constant = hashlib.sha256(b"tickstock-scan-cursor\0").digest()  # what a JWKS-only hub used
    assert old_constant not in {generated, configured}
    forged = CursorCodec(old_constant).encode("scan", {"k": 1})
    with pytest.raises(CursorError, match="altered"):
        CursorCodec(generated).decode("scan", forged)


def test_values_survive_json() -> None:
    body = {"after": "BRK.B", "f": "0" * 16}
    assert json.loads(json.dumps(CODEC.decode("symbols", CODEC.encode("symbols", body)))) == body
