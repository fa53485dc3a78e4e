"""promtool (Debian's ``prometheus`` package) for the tests of ``ops/prometheus``.

Without it those tests skip with the reason, unless ``TICKSTOCK_REQUIRE_PROMTOOL`` is set (to anything but
``0``): CI sets it after ``ops/install-promtool.sh``, so there a missing promtool fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["promtool"]

PROMTOOL_TIMEOUT_S = 120


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args...`` and return what it did (its output is printed for the test log)."""
    binary = shutil.which("promtool")
    if binary is None:
        reason = "promtool is not installed (bash ops/install-promtool.sh)"
        if os.environ.get("TICKSTOCK_REQUIRE_PROMTOOL", "") not in ("", "0"):
            pytest.fail(f"TICKSTOCK_REQUIRE_PROMTOOL is set, but {reason}")
        pytest.skip(reason)
    result = subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S
    )
    print(
        f"$ promtool {' '.join(map(str, args))}  (exit {result.returncode})\n{result.stdout}{result.stderr}"
    )
    return result
