"""RFC 6455 framing of the fan-out's text messages, done once per distinct frame.

A server's frames are not masked, so the bytes of one text message are the same on every connection
that negotiated no extension. The fan-out encodes an event's frame once (:func:`text_frame`) and
hands the bytes to each connection whose server lets it write them as they are (see
:mod:`api.wsraw`); the others get the text through the server's own send.
"""

from __future__ import annotations

import struct

__all__ = ["header_size", "text_frame"]

_FIN_TEXT = 0x81  # FIN set, opcode 1 (text)
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked text frame carrying ``text`` (UTF-8)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 1 << 16:
        return _LEN16.pack(_FIN_TEXT, 126, size) + payload
    return _LEN64.pack(_FIN_TEXT, 127, size) + payload


def header_size(frame: bytes) -> int:
    """The length of :func:`text_frame`'s header in ``frame`` (what precedes the payload)."""
    marker = frame[1]
    return 2 if marker < 126 else 4 if marker == 126 else 10
