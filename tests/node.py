"""Node.js tools the tests drive (the AsyncAPI parser, a Socket.IO client, a NATS client), each in a
folder of its own with a ``package-lock.json``: installed with ``npm ci`` once per lock file."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["NPM_TIMEOUT_S", "npm_installed"]

NPM_TIMEOUT_S = 300


def npm_installed(folder: Path, *, what: str) -> Path:
    """``folder`` with its ``node_modules`` installed from its lock file. Without node or npm the test
    skips (``what`` says what needs them), or fails when ``TICKSTOCK_REQUIRE_NODE`` is set (CI sets it);
    a failing ``npm ci`` fails the test with npm's error."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not on PATH ({what} runs on Node.js)"
        if os.environ.get("TICKSTOCK_REQUIRE_NODE", "") not in ("", "0"):
            pytest.fail(f"TICKSTOCK_REQUIRE_NODE is set, but {reason}")
        pytest.skip(reason)
    stamp = folder / "node_modules" / ".tickstock-lock-sha256"
    digest = hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        # --ignore-scripts: a dependency's install script (telemetry) has nothing to do here.
        installed = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if installed.returncode != 0:
            pytest.fail(
                f"npm ci in {folder} failed (is the npm registry reachable?):\n{installed.stderr[-2000:]}"
            )
        stamp.write_text(digest)
    return folder
