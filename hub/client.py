"""A Python client for the hub's websocket (``docs/websocket.md``).

``async for delivery in HubClient(urls, token=…, subscriptions=[…])`` yields every matching event
once, in order per subscription. When the connection drops — a network blip, a slow-consumer close, a
node going away or killed — it reconnects with jittered exponential back-off, to the next URL in turn,
and resubscribes each subscription with ``since`` = the last ``seq`` it delivered for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from hub.errors import HubError
from hub.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    ERROR_INVALID,
    ERROR_INVALID_FILTER,
    ERROR_TOO_MANY_SUBSCRIPTIONS,
)

__all__ = ["Delivery", "HubClient", "HubClientError", "Subscription"]

log = logging.getLogger("tickstock.client")

#: Close codes after which reconnecting cannot help.
FATAL_CLOSES = {
    CLOSE_UNAUTHORIZED: "the token was refused or expired",
    CLOSE_FORBIDDEN: "the token lacks patterns:read",
}


class HubClientError(HubError, RuntimeError):
    """The hub refused this client for good (a bad token, a bad filter)."""


@dataclass(frozen=True)
class Subscription:
    id: str
    filter: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    seq: int
    subs: tuple[str, ...]
    event: dict[str, Any]


class HubClient:
    """Connects on ``async with``; iterate it for :class:`Delivery` items.

    ``token`` may be a callable, called before each connection (so a refreshed token is used after a
    reconnect). ``since`` resumes every subscription from one ``seq``. ``state`` is ``connecting``,
    ``connected`` or ``reconnecting``; ``connects`` counts successful connections and ``recovered``
    holds the last ``recovered`` flag of each subscription.

    Reconnecting waits a random time up to ``backoff_s``: ``backoff_initial_s`` doubled after each
    failed attempt, at most ``backoff_max_s``, and back to ``backoff_initial_s`` once a connection got
    its welcome (a drop after a good session is not a failure streak).
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        token: str | Callable[[], str],
        subscriptions: Sequence[Subscription],
        since: int | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        buffer: int = 10_000,
        open_timeout_s: float = 5.0,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one hub URL")
        self._token = token
        self.subscriptions = list(subscriptions)
        self.last_seq: dict[str, int] = {s.id: since for s in self.subscriptions if since is not None}
        self.recovered: dict[str, bool] = {}
        self.state = "connecting"
        self.connects = 0
        self.node: str | None = None
        self._backoff = (backoff_initial_s, backoff_max_s)
        self.backoff_s = backoff_initial_s  # the ceiling of the last (jittered) wait before reconnecting
        self._open_timeout_s = open_timeout_s
        self._queue: asyncio.Queue[Delivery | BaseException] = asyncio.Queue(buffer)
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._url_index = 0

    async def __aenter__(self) -> HubClient:
        self._task = asyncio.create_task(self._run(), name="hub-client")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def drop(self) -> None:
        """Close the current connection abruptly (as a network failure would); the client reconnects."""
        if self._ws is not None:
            self._ws.transport.abort()

    # -- the connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            url = self.urls[self._url_index % len(self.urls)]
            try:
                await self._session(url)  # returns only by raising: every session ends in an exception
            except HubClientError as exc:
                await self._queue.put(exc)
                return
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
                log.info("hub connection to %s ended: %s", url, exc)
                if self.state == "connected":
                    attempt = 0  # a good session ended: start the back-off again from its first step
                else:
                    self._url_index += 1  # this one did not answer: try the next node
                    attempt += 1
            self.state = "reconnecting"
            base, cap = self._backoff
            self.backoff_s = min(cap, base * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(0, self.backoff_s))

    async def _session(self, url: str) -> None:
        token = self._token() if callable(self._token) else self._token
        self.state = "connecting" if self.connects == 0 else "reconnecting"
        async with websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=self._open_timeout_s,
            max_size=None,
            ping_interval=None,
        ) as ws:
            self._ws = ws
            try:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), self._open_timeout_s))
                if welcome.get("op") != "welcome":
                    raise websockets.exceptions.InvalidMessage(f"expected a welcome, got {welcome!r}")
                self.node = welcome.get("node")
                for sub in self.subscriptions:
                    frame: dict[str, Any] = {"op": "subscribe", "id": sub.id, "filter": sub.filter}
                    if sub.id in self.last_seq:
                        frame["since"] = self.last_seq[sub.id]
                    await ws.send(json.dumps(frame))
                self.state = "connected"
                self.connects += 1
                async for raw in ws:
                    await self._on_frame(ws, json.loads(raw))
            except websockets.exceptions.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in FATAL_CLOSES:
                    code = exc.rcvd.code
                    raise HubClientError(
                        f"closed with {code}: {FATAL_CLOSES[code]} ({exc.rcvd.reason})"
                    ) from None
                raise
            finally:
                self._ws = None
        raise websockets.exceptions.ConnectionClosedOK(None, None)

    async def _on_frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "event":
            seq = frame["seq"]
            fresh = tuple(s for s in frame["subs"] if seq > self.last_seq.get(s, -1))
            if not fresh:
                return  # already delivered (a resume overlapping what arrived before)
            for sub in fresh:
                self.last_seq[sub] = seq
            await self._queue.put(Delivery(seq, fresh, frame["event"]))
        elif op == "ping":
            await ws.send('{"op":"pong"}')
        elif op == "subscribed":
            self.recovered[frame["id"]] = frame["recovered"]
            self.last_seq.setdefault(frame["id"], frame["head"])
        elif op == "error":
            if frame.get("code") in (ERROR_INVALID_FILTER, ERROR_INVALID, ERROR_TOO_MANY_SUBSCRIPTIONS):
                raise HubClientError(f"{frame['code']}: {frame.get('message')}")
            log.warning("hub error: %s", frame)
