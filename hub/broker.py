"""The NATS connection: opened once per process, drained on the way out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import SlowConsumerError

from hub.errors import HubError
from store.pool import DEFAULT_CONNECT_TIMEOUT_S

__all__ = ["BrokerError", "SlowConsumers", "open_nats"]

log = logging.getLogger("tickstock.broker")

DEFAULT_DRAIN_TIMEOUT_S = 10
DEFAULT_PENDING_BYTES = 64 * 1024 * 1024


class BrokerError(HubError, NatsError):
    """NATS could not be reached or used; a :class:`HubError` and nats-py's base error, so callers'
    ``except nats.errors.Error`` clauses keep working."""


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
    """Connect to ``url``; drain (flush pending work, then close) on exit.

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

    async def on_disconnect() -> None:
        if closing:
            log.info("nats: disconnected from %s (closing)", url)
        else:
            log.warning("nats: disconnected from %s", url)

    async def on_reconnect() -> None:
        log.info("nats: reconnected to %s", url)

    client = NATS()
    try:
        await asyncio.wait_for(
            client.connect(
                url,
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
            ),
            timeout=connect_timeout_s,
        )
    except (TimeoutError, OSError, NatsError) as exc:
        await client.close()
        reason = str(exc) or type(exc).__name__
        raise BrokerError(f"cannot connect to NATS at {url}: {reason}") from exc
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
        except OSError as exc:  # nats-py flushes into a socket the peer may already have closed
            log.warning("nats: connection lost while closing (%s)", exc)
