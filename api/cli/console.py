"""What the ``tickstock`` command says: one line per step on stderr, errors in one line."""

from __future__ import annotations

import sys

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "one_line", "say"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def say(message: str) -> None:
    """Print ``tickstock: <message>`` on stderr at once."""
    print(f"tickstock: {message}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none)."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]
