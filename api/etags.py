"""Entity tags and conditional GETs for the cacheable reads (RFC 9110 §8.8.3 and §13.1.2).

Every cacheable GET (scans, symbols, universes, pattern definitions) answers with an ``ETag`` made of a
digest of its body, and ``Cache-Control: private, no-cache`` (a browser keeps the answer and asks again
with ``If-None-Match``; shared caches keep nothing). A request whose ``If-None-Match`` matches gets
``304 Not Modified`` with the same headers and no body.

Matching is the weak comparison RFC 9110 prescribes for ``If-None-Match``: ``*`` matches any answer,
otherwise one tag of the comma-separated list must have the same opaque value, ``W/`` or not. A header
that does not parse as a list of entity tags matches nothing (the full answer is sent). A scan's body
carries per-request figures (``query_ms``, ``cache.age_ms``) beside the cached rows, so its tag is weak
(``W/"…"``): equal tags mean the same rows and cursor, not the same bytes.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from store.cache_entries import Served
from store.cache_local import body_tag

__all__ = ["CACHE_CONTROL", "cached_response", "entity_tag", "none_match"]

CACHE_CONTROL = "private, no-cache"
MAX_HEADER_CHARS = 8192  # a longer If-None-Match is not parsed (it matches nothing)
# One entity tag and the separator after it: OWS, (W/)"etagc*", OWS, then a comma or the end.
_TAG = re.compile(r'[ \t]*(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*(?:,|$)')


def entity_tag(tag: str, *, weak: bool = False) -> str:
    return f'W/"{tag}"' if weak else f'"{tag}"'


def none_match(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match: header`` matches the answer tagged ``etag`` (weak comparison)."""
    if not header or len(header) > MAX_HEADER_CHARS:
        return False
    if header.strip(" \t") == "*":
        return True
    opaque = etag[2:] if etag.startswith("W/") else etag
    position, end = 0, len(header)
    while position < end:
        if header[position] in " \t,":  # empty list elements are allowed (RFC 9110 §5.6.1)
            position += 1
            continue
        found = _TAG.match(header, position)
        if found is None:
            return False
        if f'"{found.group(1)}"' == opaque:
            return True
        position = found.end()
    return False


def cached_response(
    request: Request,
    served: Served,
    *,
    content: bytes | None = None,
    weak: bool = False,
    media_type: str = "application/json",
) -> Response:
    """``content`` (the served body by default) with ``ETag`` (of the served body), ``Cache-Control`` and
    ``X-Cache``; or 304 without a body when the request's ``If-None-Match`` matches."""
    etag = entity_tag(served.tag or body_tag(served.body), weak=weak)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Cache": served.outcome}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(served.body if content is None else content, media_type=media_type, headers=headers)
