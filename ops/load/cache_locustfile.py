"""Locust scenario for the response cache: dashboard users polling a realistic mix of reads.

    locust -f ops/load/cache_locustfile.py --headless -u 100 -r 20 -t 60s --host http://127.0.0.1:8000

Most requests are the views a dashboard polls: popular universes (sometimes one timeframe), a few
saved custom filters (their time windows start at midnight UTC, as a "last 7 days" view does),
cursor paging, popular symbols, sectors, the caller's team universe (one of a few shared ones), and
symbol and universe pages. Reads are named by where the answer came from, as the hub's
``X-Cache`` header says (``scan [hit]``, ``scan [miss]``, ``scan [coalesced]``, ``scan [bypass]`` …).
With ``TICKSTOCK_LOAD_LOG`` set, every request is also appended there as JSON (wall time, name,
milliseconds, status) for per-phase figures. Think time: ``TICKSTOCK_LOAD_WAIT_MIN_S``..``_MAX_S``
(default 0.5..1.5 s).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser

from api.auth import mint_token

SECRET = os.environ.get("TICKSTOCK_JWT_SECRET", "ops-only-secret-not-for-production-0123456789")
WAIT_MIN_S = float(os.environ.get("TICKSTOCK_LOAD_WAIT_MIN_S", "0.5"))
WAIT_MAX_S = float(os.environ.get("TICKSTOCK_LOAD_WAIT_MAX_S", "1.5"))
LOG_PATH = os.environ.get("TICKSTOCK_LOAD_LOG")
POPULAR_UNIVERSES = ["sp500", "nasdaq100", "dow30", "sp500:nasdaq100"]
POPULAR_SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "V", "XOM"]
SECTORS = ["Information Technology", "Financials", "Health Care", "Energy", "Industrials"]
TEAM_UNIVERSES = [
    {"symbols": ["AAPL", "MSFT", "NVDA"], "universe_keys": ["dow30"]},
    {"symbols": ["TSLA", "AMZN"], "universe_keys": ["nasdaq100"]},
    {"symbols": ["XOM", "CVX", "KO", "PEP"], "universe_keys": []},
    {"symbols": [], "universe_keys": ["dow30", "nasdaq100"]},
]
_serial = itertools.count(1)
_log = open(LOG_PATH, "a", buffering=1 << 16) if LOG_PATH else None  # noqa: SIM115 - closed at quit


def _midnight(days: int) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def saved_filters() -> list[dict[str, Any]]:
    """The few custom filters the users share (saved filters, in a dashboard)."""
    return [
        {"pattern": "hammer", "timeframe": "daily", "confidence_min": "0.7"},
        {"pattern": "doji", "timeframe": ["hourly", "daily"], "detected_after": _midnight(7)},
        {"pattern": ["engulfing", "morning_star"], "confidence_min": "0.6", "universe": "sp500"},
        {"timeframe": "1min", "confidence_min": "0.8", "detected_after": _midnight(1)},
        {"universe": "nasdaq100", "type": "pattern_detected", "confidence_min": "0.75"},
        {"sector": "Information Technology", "timeframe": "daily", "detected_after": _midnight(30)},
        # A closed range in the past: may be cached for long.
        {"universe": "dow30", "detected_after": _midnight(30), "detected_before": _midnight(2)},
    ]


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: Any = None,
    **kwargs: Any,
) -> None:
    if _log is not None:
        response = kwargs.get("response")
        status = getattr(response, "status_code", 0) if response is not None else 0
        _log.write(
            json.dumps(
                {
                    "t": time.time(),
                    "name": name,
                    "ms": round(response_time, 2),
                    "status": status,
                    "failed": exception is not None,
                }
            )
            + "\n"
        )


@events.quitting.add_listener
def _close(**kwargs: Any) -> None:
    if _log is not None:
        _log.flush()


class CacheDashboardUser(FastHttpUser):
    wait_time = between(WAIT_MIN_S, WAIT_MAX_S)

    def on_start(self) -> None:
        self.subject = f"cache-load-{next(_serial)}"
        token = mint_token(
            SECRET, subject=self.subject, scopes=["patterns:read", "universe:write"], ttl_s=7200
        )
        self.headers = {"Authorization": f"Bearer {token}"}
        self.client.put(
            "/api/users/universe",
            json=random.choice(TEAM_UNIVERSES),
            headers=self.headers,
            name="user universe: save",
        )

    def _scan(self, params: dict[str, Any], *, parse: bool = False) -> dict[str, Any] | None:
        """One scan, named by ``X-Cache`` (the body's ``cache.hit`` says the same; parsing every body
        here would take CPU from the hub on a shared machine). Returns the body when ``parse``."""
        url = f"/api/patterns/scan?{urlencode(params, doseq=True)}"
        with self.client.get(url, headers=self.headers, name="scan", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return None
            r.request_meta["name"] = f"scan [{r.headers.get('x-cache', '?')}]"
            return r.json() if parse else None  # type: ignore[no-any-return]

    def _get(self, path: str, name: str) -> None:
        with self.client.get(path, headers=self.headers, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return
            r.request_meta["name"] = f"{name} [{r.headers.get('x-cache', '?')}]"

    @task(35)
    def scan_popular_universe(self) -> None:
        params: dict[str, Any] = {"universe": random.choice(POPULAR_UNIVERSES)}
        if random.random() < 0.3:
            params["timeframe"] = random.choice(["daily", "hourly"])
        self._scan(params)

    @task(15)
    def scan_saved_filter(self) -> None:
        self._scan(random.choice(saved_filters()))

    @task(10)
    def scan_and_page(self) -> None:
        params: dict[str, Any] = {"universe": random.choice(POPULAR_UNIVERSES), "limit": 50}
        body = self._scan(params, parse=True)
        for _ in range(2):
            if not body or not body.get("next_cursor"):
                return
            body = self._scan({**params, "cursor": body["next_cursor"]}, parse=True)

    @task(10)
    def scan_symbol(self) -> None:
        self._scan({"symbol": random.choice(POPULAR_SYMBOLS)})

    @task(5)
    def scan_sector(self) -> None:
        self._scan({"sector": random.choice(SECTORS), "confidence_min": "0.5"})

    @task(5)
    def scan_my_universe(self) -> None:
        self._scan({"universe": "my"})

    @task(8)
    def symbol_show(self) -> None:
        self._get(f"/api/symbols/{quote(random.choice(POPULAR_SYMBOLS))}", "symbol: show")

    @task(3)
    def universes(self) -> None:
        self._get("/api/universes", "universes: list")

    @task(3)
    def universe_members(self) -> None:
        self._get(f"/api/universes/{random.choice(['dow30', 'nasdaq100'])}", "universes: members")
