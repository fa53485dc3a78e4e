"""The ``tickstock`` command: the outermost layer, which composes everything else.

Every subcommand has ``--help``. Errors the user can act on (a wrong URL, a busy port, a server that
would not start) end the command with one line on stderr and exit status 1, never a traceback.

The package: :mod:`~api.cli.parser` (arguments, ``main``), :mod:`~api.cli.commands` (one function per
subcommand), :mod:`~api.cli.dlq` (``tickstock dlq``), :mod:`~api.cli.resources` (embedded servers and
database set-up a command runs on), :mod:`~api.cli.serving` (uvicorn over the open hub) and
:mod:`~api.cli.console` (what the command says on stderr).
"""

from __future__ import annotations

from api.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
