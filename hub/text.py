"""Untrusted text made safe to put in a NATS header, a log line or a stored reason/detail.

Producers choose subjects, header values, ids and sources; an error message may quote them. None of
it may reach a header or a log line with a line break in it (a forged header, a forged log record).
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape", "escape_control", "first_line"]

DEFAULT_HEADER_LIMIT = 500  # characters; a DLQ detail header, a stored producer


def _escape_char(char: str) -> str:
    if char == "\r":
        return "\\r"
    if char == "\n":
        return "\\n"
    if char == "\t":
        return "\\t"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: object, *, limit: int | None = None) -> str:
    """``text`` (``str()`` of it) on one line: CR, LF and tab as ``\\r \\n \\t``, every other control
    character (C0, DEL, C1, Unicode line and paragraph separators) as ``\\xNN`` / ``\\uNNNN``, and
    lone surrogates as ``\\uNNNN``. Cut to ``limit`` characters (ending in ``...``) when given. Printable
    text, including non-ASCII letters and backslashes, is unchanged."""
    value = text if isinstance(text, str) else str(text)
    if not value.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        value = "".join(
            _escape_char(c)
            if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") or (c.isspace() and c != " ")
            else c
            for c in value
        )
    if limit is not None and len(value) > limit:
        value = value[: max(0, limit - 3)] + "..."
    return value


def first_line(exc: BaseException, *, limit: int = DEFAULT_HEADER_LIMIT) -> str:
    """The first non-empty line of ``str(exc)`` (or the exception's class name), escaped and cut: what a
    log line or a stored detail shows of a driver's error."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return escape_control(lines[0] if lines else type(exc).__name__, limit=limit)


def escape(text: object, limit: int = 200) -> str:
    """``text`` for a log line: at most ``limit`` characters, control and non-printable characters as
    ``\\r``, ``\\n``, ``\\xNN`` (what ``repr`` does), so untrusted text cannot forge log lines."""
    value = str(text)
    cut = value[:limit]
    return repr(cut)[1:-1] + ("…" if len(value) > limit else "")
