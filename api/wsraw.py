"""Prepared frame bytes written straight to uvicorn's socket, when that is what its send would write.

uvicorn's websocket send (:class:`~uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`)
encodes each message, builds its frame with ``websockets`` and writes it to the transport: per message
and per connection. For a connection in the ``OPEN`` state, with no extension negotiated (compression
off), not closing and not paused by flow control, those bytes are exactly :func:`hub.wsframe.text_frame`
of the text, the same for every connection: the fan-out builds them once per event and
:func:`raw_writer`'s function writes them, skipping the per-connection encoding. In every other case it
answers False and the fan-out sends through uvicorn as before (which also waits for flow control).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

__all__ = ["RawWrite", "raw_writer"]

RawWrite = Callable[[bytes], bool]


def raw_writer(send: Any) -> RawWrite | None:
    """For ``send``, uvicorn's own websocket send (the bound method of its protocol), a function that
    writes one prepared frame and returns True, or returns False when it must not (then nothing is
    written). None when ``send`` is not a server send it knows."""
    proto = getattr(send, "__self__", None)
    if not isinstance(proto, WebSocketsSansIOProtocol):
        return None
    conn = proto.conn
    writable = proto.writable

    def write(frame: bytes) -> bool:
        if (
            conn.state is not State.OPEN
            or conn.extensions
            or proto.close_sent
            or proto.disconnected
            or not writable.is_set()
        ):
            return False
        transport = proto.transport
        if transport.is_closing():
            return False
        transport.write(frame)
        return True

    return write
