"""The short leak check: ``ops/soak.py`` for about a minute and a half against a hub process.

The hub runs as ``tickstock serve`` in a subprocess (so its RSS and open files are its own) on this
module's database, Redis db and the session NATS, with 100 websockets on mixed filters, 25 events/s
into ingest and 5 short-lived connections a second. The fit covers the last 32 s: the hub's counters
keep every increment of the last minute for their per-second rates, a bounded growth during the first
minute that is not a leak. It fails on a clear leak only: RSS growing fast enough to double within an
hour (over the fit and over its last half) by at least 3 MB over the fit (below that, an allocator's step
on a loaded machine reads as a slope), or open files growing by more than one a second (a fifth
of the churn). A leak of a few KB per connection or per event is left to ``ops/soak.py``'s 20 minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from ops.soak import rss_doubles
from tests.conftest import delete_all_streams

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
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
            "--min-growth-mb",
            "3",
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


def _summary(first: float, last: float, per_hour: float, last_half: float) -> dict[str, Any]:
    return {
        "rss_mb": {"first": first, "last": last, "mean": (first + last) / 2},
        "rss_mb_per_hour": per_hour,
        "rss_mb_per_hour_last_half": last_half,
    }


@pytest.mark.parametrize(
    ("summary", "leak"),
    [
        (_summary(106.3, 107.2, 132.5, 215.0), False),  # the step seen on a loaded box: under the floor
        (_summary(100.0, 112.0, 1350.0, 1400.0), True),  # 12 MB in 32 s, all along
        (_summary(100.0, 112.0, 1350.0, 50.0), False),  # steep, then flat: a buffer that filled up
        (_summary(100.0, 104.0, 60.0, 70.0), False),  # grows, but would not double within an hour
    ],
)
def test_a_leak_is_a_steep_rise_all_along_above_the_fits_resolution(
    summary: dict[str, Any], leak: bool
) -> None:
    assert rss_doubles(summary, min_growth_mb=3.0) is leak
