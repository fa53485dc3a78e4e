"""Paging cursors at the HTTP boundary: a cursor the hub refuses is one 400 problem, never a 500.

The format and its checks are :mod:`store.cursor`; the scan and symbol cursors' contents are
:mod:`store.scans` and :mod:`store.symbols`. :class:`InvalidCursor` is the problem: ``detail`` starts
with ``invalid cursor``, ``errors`` is ``[{"loc": "query.cursor", "msg": <the reason>}]``.
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from api.state import HubState
from store import scans, symbols
from store.cursor import CursorError
from store.scans import Sort

__all__ = ["InvalidCursor", "scan_after", "symbols_after"]


class InvalidCursor(ApiError):
    """A cursor the hub did not issue, or issued for another query (HTTP 400)."""

    def __init__(self, error: CursorError) -> None:
        super().__init__(str(error), errors=[{"loc": "query.cursor", "msg": error.reason}])


def scan_after(hub: HubState, token: str, *, sort: Sort, fingerprint: str) -> tuple[Any, ...]:
    """The keyset a scan cursor holds. Raises :class:`InvalidCursor`."""
    try:
        return scans.decode_cursor(token, sort=sort, fingerprint=fingerprint, codec=hub.cursors)
    except CursorError as exc:
        raise InvalidCursor(exc) from None


def symbols_after(hub: HubState, token: str, *, fingerprint: str) -> str:
    """The symbol a symbols cursor continues after. Raises :class:`InvalidCursor`."""
    try:
        return symbols.decode_cursor(token, fingerprint=fingerprint, codec=hub.cursors)
    except CursorError as exc:
        raise InvalidCursor(exc) from None
