"""Websocket compression on purpose (``TICKSTOCK_WS_COMPRESSION``): off, or one compressed copy per frame.

``off`` (the default): the server declines permessage-deflate, so a client that offers it (every
browser) gets plain frames and costs what a plain client costs.

``shared``: permessage-deflate is negotiated with ``server_no_context_takeover`` (and
``client_no_context_takeover``), so every message is compressed on its own and the connection keeps
no compressor or decompressor between messages. A message's compressed bytes then depend only on its
payload and the negotiated window, and :class:`FrameMemo` computes them once per (payload, window)
for every connection of the process: a fan-out of one event to N deflate connections deflates it
once, not N times. Payloads under :data:`MIN_DEFLATE_BYTES` (pings, short replies) go uncompressed,
which RFC 7692 allows within a negotiated session.

Both apply to every websocket uvicorn serves: ``/ws`` and ``/socket.io/`` alike.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.typing import BytesLike, ExtensionParameter

from api.wsproto import LeanProtocol
from hub.metrics import CounterView, Registry

__all__ = [
    "MIN_DEFLATE_BYTES",
    "FrameMemo",
    "SharedDeflate",
    "SharedDeflateFactory",
    "register_metrics",
    "shared_deflate_protocol",
]

WINDOW_BITS = 12  # the largest window we use or let a client use (uvicorn's own choice)
MEM_LEVEL = 5  # zlib's memory level for the compressor (uvicorn's own choice)
MIN_DEFLATE_BYTES = 128  # smaller payloads go uncompressed: deflate would barely shrink them
MEMO_ENTRIES = 1024  # distinct compressed payloads kept
MEMO_BYTES = 4 << 20  # compressed bytes kept, at most
MEMO_MAX_PAYLOAD = 64 << 10  # a larger payload is compressed but not kept
_TAIL = b"\x00\x00\xff\xff"  # what a sync flush ends with; RFC 7692 strips it


class FrameMemo:
    """Compressed payloads by (payload, window bits), least recently used first out, bounded by
    :data:`MEMO_ENTRIES` entries and :data:`MEMO_BYTES` bytes. ``compressed`` counts the payloads
    deflated, ``reused`` the frames that took a copy from the memo."""

    def __init__(self, *, entries: int = MEMO_ENTRIES, max_bytes: int = MEMO_BYTES) -> None:
        self._entries = entries
        self._max_bytes = max_bytes
        self._memo: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._bytes = 0
        self.compressed = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._memo)

    def deflate(self, data: BytesLike, window_bits: int) -> bytes:
        """``data`` as one permessage-deflate message with a fresh compressor and a window of
        ``window_bits`` (RFC 7692 section 7.2.1: the trailing empty block removed)."""
        payload = bytes(data)
        key = (payload, window_bits)
        memo = self._memo
        found = memo.get(key)
        if found is not None:
            memo.move_to_end(key)
            self.reused += 1
            return found
        encoder = zlib.compressobj(wbits=-window_bits, memLevel=MEM_LEVEL)
        compressed = (encoder.compress(payload) + encoder.flush(zlib.Z_SYNC_FLUSH))[: -len(_TAIL)]
        self.compressed += 1
        if len(payload) <= MEMO_MAX_PAYLOAD:
            memo[key] = compressed
            self._bytes += len(compressed)
            while len(memo) > self._entries or self._bytes > self._max_bytes:
                _, dropped = memo.popitem(last=False)
                self._bytes -= len(dropped)
        return compressed


class SharedDeflate(PerMessageDeflate):
    """permessage-deflate without server context takeover whose whole messages come from a
    :class:`FrameMemo`; a fragmented message (uvicorn never sends one) is compressed as usual."""

    def __init__(self, memo: FrameMemo, negotiated: PerMessageDeflate) -> None:
        super().__init__(
            negotiated.remote_no_context_takeover,
            True,
            negotiated.remote_max_window_bits,
            negotiated.local_max_window_bits,
            negotiated.compress_settings,
        )
        self.memo = memo

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode in CTRL_OPCODES:
            return frame
        if frame.opcode is Opcode.CONT or not frame.fin:
            return super().encode(frame)
        if len(frame.data) < MIN_DEFLATE_BYTES:
            return frame
        data = self.memo.deflate(frame.data, self.local_max_window_bits)
        return Frame(frame.opcode, data, True, True, frame.rsv2, frame.rsv3)


class SharedDeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates permessage-deflate with no context takeover either way (whatever the client asked)
    and windows of at most :data:`WINDOW_BITS`; its connections share one :class:`FrameMemo`. An
    offer it cannot accept (bad, unknown or duplicated parameters, ``server_max_window_bits=8``) is
    skipped: the connection opens uncompressed."""

    def __init__(self, memo: FrameMemo) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=WINDOW_BITS,
            client_max_window_bits=WINDOW_BITS,
            compress_settings={"memLevel": MEM_LEVEL},
        )
        self.memo = memo

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        return response, SharedDeflate(self.memo, negotiated)


def shared_deflate_protocol(memo: FrameMemo) -> type[LeanProtocol]:
    """The hub's websocket protocol (:class:`~api.wsproto.LeanProtocol`, uvicorn's sans-I/O one)
    offering :class:`SharedDeflateFactory` over ``memo``; for ``uvicorn.Config(ws=...)``."""
    factory = SharedDeflateFactory(memo)

    class SharedDeflateProtocol(LeanProtocol):
        __slots__ = ()

        def extensions(self) -> list[Any]:
            return [factory]

    return SharedDeflateProtocol


def register_metrics(memo: FrameMemo, registry: Registry) -> None:
    """``tickstock_ws_deflate_*``: what the shared compressor did (read at scrape time)."""
    registry.add(
        CounterView(
            "tickstock_ws_deflate_compressed_total",
            "Distinct outgoing websocket messages compressed (TICKSTOCK_WS_COMPRESSION=shared).",
            lambda: memo.compressed,
        )
    )
    registry.add(
        CounterView(
            "tickstock_ws_deflate_reused_total",
            "Compressed websocket messages taken from the shared compressor's memo instead of compressed again.",
            lambda: memo.reused,
        )
    )
