"""One signed cursor format for every paged read (scans, the symbol directory).

A cursor is ``v1.<payload>.<mac>``: ``payload`` is base64url (unpadded) of a JSON object, ``mac`` is
base64url of HMAC-SHA256 over the version, the cursor's ``kind`` (``scan``, ``symbols``) and the
payload bytes, keyed with the deployment's cursor key (:func:`cursor_key`). It is URL-safe as it
stands. A cursor of one kind is never valid as another.

:meth:`CursorCodec.decode` refuses, with :class:`CursorError` (a ``ValueError`` whose message starts
with ``invalid cursor``), anything it did not issue: a value that is not text, longer than
:data:`MAX_CURSOR_CHARS`, with a character outside the base64url alphabet (NUL, control characters,
padding), not three parts, an unknown version, bad base64, a MAC that does not match, or a payload
that is not a JSON object of finite values. The typed readers (:func:`read_text`,
:func:`read_number`, :func:`read_time`) check each value after that; callers check every field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.secrets import deployment_secret

__all__ = [
    "CURSOR_VERSION",
    "MAX_CURSOR_CHARS",
    "CursorCodec",
    "CursorError",
    "cursor_key",
    "read_number",
    "read_text",
    "read_time",
]

CURSOR_VERSION = "v1"
MAX_CURSOR_CHARS = 1024  # our own cursors stay far below (a scan cursor is about 200)
MAX_TEXT_CHARS = 256  # one text value inside a cursor (a symbol, an event id, a fingerprint)
MIN_KEY_BYTES = 16
SECRET_NAME = "cursor"  # store.secrets name of the generated key
_DOMAIN = b"tickstock-cursor\x00"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,8}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAC_BYTES = hashlib.sha256().digest_size


class CursorError(ValueError):
    """A cursor this hub did not issue, or issued for another query; the message says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid cursor: {reason}")
        self.reason = reason


NOT_ISSUED = "not a cursor this hub issued"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CursorError(NOT_ISSUED) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(name)


async def cursor_key(pool: AsyncConnectionPool[Any], *, secret: str | None) -> bytes:
    """The deployment's cursor key: derived from ``secret`` (``TICKSTOCK_CURSOR_SECRET``) when one is
    set, else the random per-deployment secret :func:`store.secrets.deployment_secret` keeps in
    PostgreSQL (made once, shared by every node). Never derived from the JWT secret. Raises psycopg's
    errors when it must read PostgreSQL and cannot."""
    if secret:
        return hashlib.sha256(_DOMAIN + b"configured\x00" + secret.encode()).digest()
    return await deployment_secret(pool, SECRET_NAME)


class CursorCodec:
    """Encodes and verifies cursors with one key (at least :data:`MIN_KEY_BYTES` bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a cursor key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def _mac(self, kind: str, payload: bytes) -> bytes:
        message = _DOMAIN + CURSOR_VERSION.encode() + b"\x00" + kind.encode() + b"\x00" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def encode(self, kind: str, body: Mapping[str, object]) -> str:
        """``body`` (a JSON object of text, numbers, booleans, null and lists of them) as a cursor."""
        payload = json.dumps(dict(body), separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
        return f"{CURSOR_VERSION}.{_b64(payload)}.{_b64(self._mac(kind, payload))}"

    def decode(self, kind: str, token: object) -> dict[str, object]:
        """The JSON object in ``token``, after its MAC verified for ``kind``. Raises :class:`CursorError`."""
        if not isinstance(token, str):
            raise CursorError(NOT_ISSUED)
        if len(token) > MAX_CURSOR_CHARS:
            raise CursorError(f"longer than {MAX_CURSOR_CHARS} characters")
        if not _TOKEN.fullmatch(token):
            raise CursorError(NOT_ISSUED)
        version, payload_b64, mac_b64 = token.split(".")
        if version != CURSOR_VERSION:
            raise CursorError(f"unknown cursor version {version!r}")
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(kind, payload)):
            raise CursorError("it was altered, or issued by another deployment or for another list")
        try:
            body = json.loads(payload, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise CursorError(NOT_ISSUED) from None
        if not isinstance(body, dict):
            raise CursorError(NOT_ISSUED)
        return body


def read_text(value: object, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``value`` if it is text of 1..``max_chars`` characters without control characters (NUL included)."""
    if not isinstance(value, str) or not 0 < len(value) <= max_chars or _CONTROL.search(value):
        raise CursorError("a value has the wrong type")
    return value


def read_number(value: object) -> float:
    """``value`` if it is a finite JSON number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CursorError("a value has the wrong type")
    try:
        number = float(value)
    except OverflowError:
        raise CursorError("a value has the wrong type") from None
    if not math.isfinite(number):
        raise CursorError("a value has the wrong type")
    return number


def read_time(value: object) -> datetime:
    """``value`` if it is an ISO 8601 date-time with a time zone."""
    text = read_text(value, max_chars=64)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CursorError("a value has the wrong type") from None
    if when.tzinfo is None:
        raise CursorError("a value has the wrong type")
    return when
