"""Fixtures for the HTTP API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from api.auth import mint_token
from hub.parsing import parse_event
from store.patterns import ensure_months, store_events
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, make_event

TokenClients = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def token_clients(live_hub: LiveHub) -> AsyncIterator[TokenClients]:
    """``make(subject="reader", scopes=("patterns:read",))``: an httpx client on the live hub with a
    token for that subject and scopes; all are closed after the test."""
    opened: list[httpx.AsyncClient] = []

    def make(subject: str = "reader", scopes: Iterable[str] = ("patterns:read",)) -> httpx.AsyncClient:
        token = mint_token(JWT_SECRET, subject=subject, scopes=list(scopes))
        c = httpx.AsyncClient(base_url=live_hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


SVC_SYMBOLS = ("AAPL", "MSFT", "BRK.B", "NVDA")
SVC_PATTERNS = ("hammer", "doji", "engulfing")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def svc_hub(live_hub: LiveHub) -> LiveHub:
    """The module's hub with 120 stored events over four symbols, three patterns and two timeframes."""
    catalog = live_hub.hub.catalog.current
    base = datetime.now(UTC) - timedelta(days=2)
    events = [
        make_event(
            i,
            prefix="svc",
            symbol=SVC_SYMBOLS[i % 4],
            pattern=SVC_PATTERNS[i % 3],
            timeframe=("daily", "hourly")[i % 2],
            detected_at=(base + timedelta(minutes=7 * i)).isoformat().replace("+00:00", "Z"),
        )
        for i in range(120)
    ]
    parsed = [parse_event(e, catalog=catalog) for e in events]
    async with live_hub.hub.pool.connection() as conn, conn.transaction():
        await ensure_months(conn, min(e.detected_at for e in parsed), max(e.detected_at for e in parsed))
        await store_events(conn, parsed)
    if live_hub.hub.cache is not None:
        await live_hub.hub.cache.events_stored(parsed)
    return live_hub


def scan_rows(body: dict[str, Any]) -> dict[str, Any]:
    """A scan page without its per-request figures (``query_ms``, ``cache``)."""
    return {"items": body["items"], "next_cursor": body["next_cursor"]}
