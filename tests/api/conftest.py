"""Fixtures for the HTTP API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import httpx
import pytest

from api.auth import mint_token
from tests.conftest import JWT_SECRET
from tests.support import LiveHub

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
