"""``python -m api.cli``: the same as the ``tickstock`` command."""

from __future__ import annotations

import sys

from api.cli.parser import main

sys.exit(main())
