"""The NATS connection: opened once per process, drained on the way out."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import SlowConsumerError

from hub.errors import HubError
from hub.natsclient import HubClient
from store.pool import DEFAULT_CONNECT_TIMEOUT_S

__all__ = ["HUB_INBOX_PREFIX", "BrokerError", "SlowConsumers", "open_nats", "redact", "server_list"]

log = logging.getLogger("tickstock.broker")

DEFAULT_DRAIN_TIMEOUT_S = 10
DEFAULT_PENDING_BYTES = 64 * 1024 * 1024
# The hub's reply inboxes (JetStream API answers, pulled messages, publish acks) live under a prefix of
# their own: the producer and reader users of hub/embedded/nats-accounts.conf may subscribe to _INBOX.>
# for their own replies, and must not see the hub's.
HUB_INBOX_PREFIX = "_INBOX_HUB"


class BrokerError(HubError, NatsError):
    """NATS could not be reached or used; a :class:`HubError` and nats-py's base error, so callers'
    ``except nats.errors.Error`` clauses keep working."""


_PASSWORD = re.compile(r"(?<=://)([^:@/]*):[^@/]*@")


def server_list(url: str) -> list[str]:
    """The servers of ``url``: one URL or a comma-separated list (``TICKSTOCK_NATS_URL``)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def redact(url: str) -> str:
    """``url`` (one or a comma-separated list) with every password replaced by ``***``, for logs."""
    return _PASSWORD.sub(r"\1:***@", url)


class SlowConsumers:
    """Where nats-py's slow-consumer errors go. A subscription whose pending buffer is full loses the
    message (nats-py drops it and reports it); the subscription's owner is told (:meth:`watch`), so
    the loss is never silent."""

    def __init__(self) -> None:
        self._owners: dict[int, Callable[[], None]] = {}
        self.dropped = 0

    def watch(self, sub: Subscription, on_drop: Callable[[], None]) -> None:
        """Call ``on_drop()`` (from nats-py's reading task; it must not block) for each message the
        subscription drops."""
        self._owners[_identity(sub)] = on_drop

    def forget(self, sub: Subscription) -> None:
        self._owners.pop(_identity(sub), None)

    def report(self, exc: SlowConsumerError) -> None:
        self.dropped += 1
        owner = self._owners.get(id(exc.sub))
        if owner is not None:
            owner()
        if self.dropped & (self.dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th ...: no log flood
            log.warning("nats: %s (%d dropped so far)", exc, self.dropped)


def _identity(sub: Subscription) -> int:
    # A JetStream subscription wraps the core one that nats-py names in its errors (``_sub``, kept
    # across an ordered consumer's resets, while the sid changes).
    return id(getattr(sub, "_sub", sub))


@asynccontextmanager
async def open_nats(
    url: str,
    *,
    name: str = "tickstock-hub",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    drain_timeout_s: int = DEFAULT_DRAIN_TIMEOUT_S,
    slow_consumers: SlowConsumers | None = None,
) -> AsyncIterator[NATS]:
    """Connect to ``url`` (one server or a comma-separated list: nats-py gets every one and fails
    over between them, and learns the rest of a cluster from the server); drain (flush pending work,
    then close) on exit. Credentials ride in each URL (``nats://user:password@host:4222``).

    The first connection must succeed within ``connect_timeout_s`` or :class:`BrokerError` is raised
    with the reason. After that the client reconnects forever, logging each disconnect. Messages a
    subscription drops because its pending buffer is full go to ``slow_consumers``.
    """
    relay = slow_consumers or SlowConsumers()

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            relay.report(exc)
            return
        log.warning("nats: %s", exc)

    closing = False
    shown = redact(url)
    servers = server_list(url)
    # The servers a cluster announces come without credentials: when every given URL carries the same
    # user and password, they are the client's, so a reconnect to an announced server logs in too.
    users = {(parts.username, parts.password) for parts in map(urlsplit, servers)}
    user, password = next(iter(users)) if len(users) == 1 else (None, None)

    async def on_disconnect() -> None:
        if closing:
            log.info("nats: disconnected from %s (closing)", shown)
        else:
            log.warning("nats: disconnected from %s", shown)

    async def on_reconnect() -> None:
        log.info(
            "nats: reconnected to %s",
            redact(client.connected_url.geturl()) if client.connected_url else shown,
        )

    client = HubClient()
    try:
        await asyncio.wait_for(
            client.connect(
                servers,
                user=user if password else None,
                password=password if user else None,
                name=name,
                connect_timeout=max(1, int(connect_timeout_s)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                drain_timeout=drain_timeout_s,
                pending_size=DEFAULT_PENDING_BYTES,
                inbox_prefix=HUB_INBOX_PREFIX,
            ),
            timeout=connect_timeout_s,
        )
    except (TimeoutError, OSError, NatsError) as exc:
        await client.close()
        reason = str(exc) or type(exc).__name__
        raise BrokerError(f"cannot connect to NATS at {shown}: {redact(reason)}") from exc
    try:
        yield client
    finally:
        closing = True
        if client.is_connected:
            try:
                await client.drain()
            except (TimeoutError, NatsError) as exc:  # pragma: no cover - depends on server timing
                log.warning("nats: drain failed (%s); closing", exc)
        try:
            await client.close()
        except (OSError, RuntimeError) as exc:
            # nats-py flushes what is pending into a socket the peer may already have closed (uvloop
            # says so with a RuntimeError: the server went away and the client was reconnecting).
            log.warning("nats: connection lost while closing (%s)", exc)
