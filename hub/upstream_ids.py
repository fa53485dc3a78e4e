"""The id of an upstream message, which never sends one: derived from what the detection is.

``ts-`` and the first 32 hex digits of the SHA-256 of the canonical JSON array ``[type, symbol, pattern
key, timeframe, whole epoch second of detected_at]`` (the pattern key is :func:`hub.catalog.match_key` of
the name as sent, so the id does not depend on the catalog's version); for ``pattern_updated`` the SHA-256
of the whole message's canonical JSON is appended. ``docs/upstream.md`` says what follows from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hub.catalog import match_key
from hub.model import EventError, canonical_json, canonical_symbol

__all__ = ["ID_PREFIX", "derived_id"]

ID_PREFIX = "ts-"
ID_HEX_DIGITS = 32


def derived_id(event: Mapping[str, Any], obj: Mapping[str, Any]) -> str:
    """``ts-`` and 32 hex digits of the SHA-256 over (type, symbol, pattern's match key, timeframe,
    whole epoch second of detection); for ``pattern_updated`` also over the message's canonical JSON.
    The same detection sent twice, by any layout or bridge, has one id; two different updates of one
    instance have two. Raises ``invalid_field`` for a message that is not finite JSON."""
    symbol, pattern = event.get("symbol"), event.get("pattern")
    with contextlib.suppress(EventError):  # the v1 check reports it
        symbol = canonical_symbol(symbol) if isinstance(symbol, str) else symbol
    detected: datetime = event["detected_at"]
    key: list[Any] = [
        event["type"],
        symbol if isinstance(symbol, str) else repr(symbol),
        match_key(pattern) if isinstance(pattern, str) else repr(pattern),
        event["timeframe"],
        math.floor(detected.timestamp()),
    ]
    try:
        if event["type"] == "pattern_updated":
            key.append(hashlib.sha256(canonical_json(dict(obj))).hexdigest())
        encoded = canonical_json(key)
    except UnicodeEncodeError:
        raise EventError("invalid_field", "the message holds text that is not valid Unicode") from None
    except (TypeError, ValueError, RecursionError):
        raise EventError("invalid_field", "the message holds values that are not finite JSON") from None
    return ID_PREFIX + hashlib.sha256(encoded).hexdigest()[:ID_HEX_DIGITS]
