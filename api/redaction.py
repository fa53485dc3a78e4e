"""Bearer tokens kept out of log lines.

Browsers cannot set headers on a websocket, so ``/ws`` also takes its token as ``?token=`` (see
``docs/websocket.md``). uvicorn logs every websocket it accepts or refuses with its path and query
string (``"WebSocket /ws?token=…" [accepted]``, on ``uvicorn.error`` at INFO, the level ``tickstock run``
logs at), so without this each connection would write a valid token into the log. :class:`TokenRedactor`
rewrites a record whose message carries a ``token`` query parameter before any handler sees it; the
server's configuration (:func:`api.cli.serving.server_config`) puts it on uvicorn's loggers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["REDACTED", "TokenRedactor", "redact_tokens", "redacted"]

REDACTED = "***"
# ``token=`` as a query parameter (after ``?``, ``&`` or ``;``), up to the next separator or quote.
_TOKEN = re.compile(r"([?&;]token=)[^&;#\s\"']*", re.IGNORECASE)


def redacted(text: str) -> str:
    """``text`` with the value of every ``token`` query parameter replaced by :data:`REDACTED`."""
    return _TOKEN.sub(r"\g<1>" + REDACTED, text) if "token=" in text.lower() else text


class TokenRedactor(logging.Filter):
    """Rewrites a record whose message names a ``token`` query parameter; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: logging's own handlers report it
            return True
        clean = redacted(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACTOR = TokenRedactor()


def redact_tokens(loggers: Iterable[str] = ("uvicorn.error", "uvicorn.access")) -> None:
    """Put the redactor on ``loggers`` (once each: adding it again changes nothing)."""
    for name in loggers:
        logging.getLogger(name).addFilter(_REDACTOR)
