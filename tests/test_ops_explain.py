"""ops/explain_scan.py: every typical scan shape uses its index and prunes partitions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scan_shapes_use_their_indexes_and_prune(database_url: str) -> None:
    env = {**os.environ, "TICKSTOCK_DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "explain_scan.py"), "--events", "40000", "--days", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert len(verdicts) == 10  # 7 scan shapes and the writer's 3 statements
    assert all(": OK — " in line for line in verdicts), "\n".join(verdicts)
    updated = re.search(r"\(([\d,]+) of them updated", result.stdout)
    assert updated is not None and 1500 < int(updated[1].replace(",", "")) < 2500, result.stdout  # 1 in 20
    assert f"pattern_events: {40_000 + int(updated[1].replace(',', '')):,} rows" in result.stdout


def test_the_compat_window_is_explained_with_its_total(database_url: str) -> None:
    env = {**os.environ, "TICKSTOCK_DATABASE_URL": database_url}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "ops" / "explain_compat.py"),
            "--events",
            "3000",
            "--days",
            "2",
            "--window",
            "1000",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert len(verdicts) == 4
    # The window stops at its size: the unfiltered shapes read exactly 1,000 of ~1,500 matching rows.
    assert "window read 1,000 rows, total 1,000" in verdicts[0], verdicts[0]
