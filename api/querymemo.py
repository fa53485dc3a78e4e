"""Validated queries remembered by their raw text, so that a polled URL is parsed and normalised once.

A route keeps what it derived from a query string (the validated parameters, the filter, the cache
key) under the exact bytes of that string, together with the version of whatever else the derivation
read (the pattern catalog, for a scan): an entry is used only while that version is the current one
(compared by identity). Only queries that validated are kept, at most ``max_entries`` (least recently
used first out) and none longer than ``max_query_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["DEFAULT_MAX_ENTRIES", "MAX_QUERY_BYTES", "QueryMemo"]

V = TypeVar("V")
DEFAULT_MAX_ENTRIES = 1_024
MAX_QUERY_BYTES = 2_048


class QueryMemo(Generic[V]):
    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_query_bytes: int = MAX_QUERY_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_query_bytes = max_query_bytes
        self._entries: OrderedDict[bytes, tuple[object, V]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: bytes, version: object) -> V | None:
        found = self._entries.get(query)
        if found is None:
            return None
        if found[0] is not version:
            del self._entries[query]
            return None
        self._entries.move_to_end(query)
        self.hits += 1
        return found[1]

    def put(self, query: bytes, version: object, value: V) -> None:
        if len(query) > self.max_query_bytes or self.max_entries < 1:
            return
        self._entries[query] = (version, value)
        self._entries.move_to_end(query)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
