"""``python -m api.cli``: the same as the ``tickstock`` command."""

from __future__ import annotations

import sys

from api.cli.parser import main

if __name__ == "__main__":  # not when a `--workers` process (multiprocessing spawn) imports it
    sys.exit(main())
