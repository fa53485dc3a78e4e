"""JSON from untrusted text with a nesting bound, checked before the parser recurses.

``json.loads`` recurses once per ``[``/``{``: a frame of a few thousand brackets ends in
``RecursionError`` deep inside the parser (not a ``ValueError``), which callers do not expect. Here the
nesting is measured first by one regular-expression pass that skips string literals, so text nested
deeper than ``max_depth`` is refused without being parsed. ``NaN`` and ``Infinity`` (which Python
accepts but JSON does not have) are refused too, and so, on request (``unique_keys=True``), is an object
that names a key twice (parsers disagree on which value wins, so such text has no one meaning).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hub.parsing import loads_json, reject_constant

__all__ = ["MAX_DEPTH", "JsonTooDeep", "loads_bounded", "too_deep"]

MAX_DEPTH = 32  # levels of arrays/objects
_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


class JsonTooDeep(ValueError):
    """The text nests arrays and objects deeper than allowed."""


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when ``[``/``{`` outside string literals nest deeper than ``limit``. Malformed text gets an
    answer too (the parser judges it afterwards). Linear in ``len(text)``; text with no more brackets than
    ``limit`` is not scanned at all."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def loads_bounded(text: str | bytes, *, max_depth: int = MAX_DEPTH, unique_keys: bool = False) -> Any:
    """``json.loads`` that raises :class:`JsonTooDeep` (a ``ValueError``) for nesting deeper than
    ``max_depth`` and ``ValueError`` for anything else that is not JSON (with ``unique_keys``, an object
    naming a key twice as well). Never ``RecursionError``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if too_deep(text, max_depth):
        raise JsonTooDeep(f"nested deeper than {max_depth} levels")
    if unique_keys:
        return loads_json(text)  # the events' rules: no NaN or Infinity, no key twice
    return json.loads(text, parse_constant=reject_constant)
