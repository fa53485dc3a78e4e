"""Locust scenario: dashboard users on the REST API, each with its own bearer token.

    locust -f ops/load/locustfile.py --headless -u 100 -r 20 -t 60s --host http://127.0.0.1:8000

Every simulated user mints a token for its own subject (``load-<n>``) with the hub's development
secret (``TICKSTOCK_JWT_SECRET``, default: the ops stack's), saves a universe, then loops over a mix
of what a pattern dashboard does: scans of popular universes, custom filter scans, paging with
``next_cursor``, symbol lookups and searches, the universe list and members, its own universe and
scans of it. Think time between requests: ``TICKSTOCK_LOAD_WAIT_MIN_S``..``TICKSTOCK_LOAD_WAIT_MAX_S``
(default 0.5..1.5 s). Requests are grouped by what they do (``scan: universe`` …), not by URL.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

from api.auth import mint_token

SECRET = os.environ.get("TICKSTOCK_JWT_SECRET", "ops-only-secret-not-for-production-0123456789")
WAIT_MIN_S = float(os.environ.get("TICKSTOCK_LOAD_WAIT_MIN_S", "0.5"))
WAIT_MAX_S = float(os.environ.get("TICKSTOCK_LOAD_WAIT_MAX_S", "1.5"))
POPULAR_UNIVERSES = ["sp500", "nasdaq100", "dow30", "sp500:nasdaq100"]
POPULAR_SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AVGO", "JPM", "LLY", "V", "XOM"]
TIMEFRAMES = ["1min", "5min", "15min", "30min", "hourly", "daily", "weekly", "monthly"]
SEARCHES = ["A", "AM", "MS", "NV", "JP", "BR", "GO", "T", "Micro", "Bank"]
_serial = itertools.count(1)


class Reference:
    """What the tasks pick from, read once per locust process from the hub itself."""

    loaded: ClassVar[bool] = False
    symbols: ClassVar[list[str]] = POPULAR_SYMBOLS
    sectors: ClassVar[list[str]] = []
    patterns: ClassVar[list[str]] = ["hammer", "doji", "engulfing"]

    @classmethod
    def load(cls, client: Any, headers: dict[str, str]) -> None:
        if cls.loaded:
            return
        cls.loaded = True
        with client.get("/api/universes/sp500", headers=headers, name="setup", catch_response=True) as r:
            if r.status_code == 200:
                cls.symbols = [m["symbol"] for m in r.json()["members"]] or POPULAR_SYMBOLS
        with client.get(
            "/api/universes?kind=sector", headers=headers, name="setup", catch_response=True
        ) as r:
            if r.status_code == 200:
                # Sector universes are named "S&P 500 <GICS sector>"; the scan's sector filter takes the sector.
                cls.sectors = [u["name"].removeprefix("S&P 500 ") for u in r.json()["items"] if u.get("name")]
        with client.get("/api/patterns/definitions", headers=headers, name="setup", catch_response=True) as r:
            if r.status_code == 200:
                cls.patterns = [d["name"] for d in r.json()["items"]] or cls.patterns


def _since(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


class DashboardUser(FastHttpUser):
    wait_time = between(WAIT_MIN_S, WAIT_MAX_S)

    def on_start(self) -> None:
        self.subject = f"load-{next(_serial)}"
        token = mint_token(
            SECRET, subject=self.subject, scopes=["patterns:read", "universe:write"], ttl_s=7200
        )
        self.headers = {"Authorization": f"Bearer {token}"}
        Reference.load(self.client, self.headers)
        mine = random.sample(Reference.symbols, k=min(15, len(Reference.symbols)))
        self.client.put(
            "/api/users/universe",
            json={"symbols": mine, "universe_keys": ["dow30"]},
            headers=self.headers,
            name="user universe: save",
        )

    def _get(self, path: str, name: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{path}?{urlencode(params, doseq=True)}" if params else path
        return self.client.get(url, headers=self.headers, name=name)

    @task(30)
    def scan_popular_universe(self) -> None:
        self._get("/api/patterns/scan", "scan: universe", {"universe": random.choice(POPULAR_UNIVERSES)})

    @task(15)
    def scan_custom_filter(self) -> None:
        params: dict[str, Any] = {"pattern": random.choice(Reference.patterns)}
        if random.random() < 0.7:
            params["timeframe"] = random.choice(TIMEFRAMES)
        if random.random() < 0.5:
            params["confidence_min"] = random.choice(["0.6", "0.7", "0.8"])
        if random.random() < 0.5:
            params["detected_after"] = _since(random.choice([1, 7, 30]))
        if random.random() < 0.3:
            params["universe"] = random.choice(POPULAR_UNIVERSES)
        self._get("/api/patterns/scan", "scan: custom filter", params)

    @task(5)
    def scan_sector(self) -> None:
        if Reference.sectors:
            self._get(
                "/api/patterns/scan",
                "scan: sector",
                {"sector": random.choice(Reference.sectors), "confidence_min": "0.5"},
            )

    @task(8)
    def scan_and_page(self) -> None:
        params: dict[str, Any] = {"universe": random.choice(POPULAR_UNIVERSES), "limit": 50}
        response = self._get("/api/patterns/scan", "scan: universe", params)
        for _ in range(3):
            if response.status_code != 200 or not response.json().get("next_cursor"):
                return
            params["cursor"] = response.json()["next_cursor"]
            response = self._get("/api/patterns/scan", "scan: next page", params)

    @task(10)
    def scan_symbol(self) -> None:
        symbol = random.choice(POPULAR_SYMBOLS if random.random() < 0.7 else Reference.symbols)
        self._get("/api/patterns/scan", "scan: one symbol", {"symbol": symbol})

    @task(10)
    def symbol_lookup(self) -> None:
        symbol = random.choice(POPULAR_SYMBOLS if random.random() < 0.7 else Reference.symbols)
        self._get(f"/api/symbols/{quote(symbol)}", "symbol: show")

    @task(4)
    def symbol_search(self) -> None:
        self._get("/api/symbols", "symbol: search", {"q": random.choice(SEARCHES), "limit": 20})

    @task(3)
    def universes(self) -> None:
        self._get("/api/universes", "universes: list")

    @task(3)
    def universe_members(self) -> None:
        self._get(f"/api/universes/{random.choice(['dow30', 'nasdaq100', 'sp500'])}", "universes: members")

    @task(6)
    def my_universe(self) -> None:
        self._get("/api/users/universe", "user universe: read")

    @task(6)
    def scan_my_universe(self) -> None:
        self._get("/api/patterns/scan", "scan: universe=my", {"universe": "my"})
