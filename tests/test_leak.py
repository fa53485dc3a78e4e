"""The short leak check: ``ops/soak.py`` for about a minute and a half against a hub process.

The hub runs as ``tickstock serve`` in a subprocess (so its RSS and open files are its own) on this
module's database, Redis db and the session NATS, with 100 websockets on mixed filters, 25 events/s
into ingest and 5 short-lived connections a second. The fit covers the last 32 s: the hub's counters
keep every increment of the last minute for their per-second rates, a bounded growth during the first
minute that is not a leak. It fails on a clear leak only: RSS growing fast enough to double within an
hour (over the fit and over its last half), or open files growing by more than one a second (a fifth
of the churn). A leak of a few KB per connection or per event is left to ``ops/soak.py``'s 20 minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.settings import Settings
from tests.conftest import delete_all_streams

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.timeout(170)
def test_hub_memory_and_open_files_do_not_grow_under_load(settings: Settings) -> None:
    asyncio.run(delete_all_streams(settings.nats_url or ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
    env.update(
        {
            "TICKSTOCK_DATABASE_URL": settings.database_url or "",
            "TICKSTOCK_NATS_URL": settings.nats_url or "",
            "TICKSTOCK_REDIS_URL": settings.redis_url or "",
        }
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "ops" / "soak.py"),
            "--seconds",
            "95",
            "--warmup",
            "63",
            "--interval",
            "1",
            "--connections",
            "100",
            "--rate",
            "25",
            "--churn",
            "5",
            "--ring-size",
            "200",
            "--fd-slack",
            "3600",
            "--maintenance-interval-s",
            "3600",
            "--json",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=160,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    hub = report["processes"][0]
    assert hub["process"] == "hub"
    assert report["ready"] == 100, report
    assert report["delivered"] > 0 and report["churn_opened"] > 100, report
    assert not report["leak"], report["verdict"] + "\n" + json.dumps(hub, indent=2)
