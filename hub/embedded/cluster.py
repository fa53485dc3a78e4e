"""A local NATS cluster with JetStream: three ``nats-server`` processes from the same wheel, for tests and
``ops/``. Each member has its own client port, route port and store (``data_dir/n1`` …), and routes to
every member; a stream with ``num_replicas=3`` (``TICKSTOCK_NATS_REPLICAS=3``) keeps a copy on each.

Entering starts the members and waits until JetStream answers on every one of them (a meta leader is
elected once two members see each other); leaving stops them in reverse order. :meth:`stop_member` and
:meth:`start_member` take one member down and up again (a node failure), on the same ports and store.

For drills (tests and ``ops/bench_partitions.py --kill-leader-at``): :func:`stream_leader` names the
member leading a stream, :func:`lead_on` moves that leadership to a chosen member first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from hub.embedded.process import EmbeddedError, bind_conflict, free_port
from hub.embedded.servers import EmbeddedNats

__all__ = ["EmbeddedNatsCluster", "lead_on", "stream_leader"]

log = logging.getLogger("tickstock.embedded")

DEFAULT_READY_TIMEOUT_S = 60.0
_PORT_ATTEMPTS = 3


def _healthy(host: str, port: int) -> bool:
    """The member's ``/healthz`` says ok: JetStream is up and in contact with a meta leader."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as reply:
            return bool(json.loads(reply.read()).get("status") == "ok")
    except (OSError, ValueError):
        return False


class EmbeddedNatsCluster:
    """Three (``size``) JetStream servers in one cluster on loopback. Use as a context manager."""

    def __init__(
        self, data_dir: Path, *, size: int = 3, name: str = "tickstock", host: str = "127.0.0.1"
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.members = [
            EmbeddedNats(data_dir / f"n{i + 1}", host=host, server_name=f"{name}-n{i + 1}", cluster_name=name)
            for i in range(size)
        ]
        self._choose_ports()

    def _choose_ports(self) -> None:
        """Give every member a client, route and monitor port; each member routes to all of them."""
        routes = tuple(free_port(self.host) for _ in self.members)
        for member, route in zip(self.members, routes, strict=True):
            member.port = free_port(self.host)
            member.cluster_port = route
            member.routes = routes
            member.monitor_port = free_port(self.host)

    @property
    def urls(self) -> list[str]:
        """Every member's client URL."""
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        """The first member's URL: a client learns the others from it (and reconnects to them)."""
        return self.members[0].url

    def wait_ready(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Wait until JetStream answers on every running member; raises :class:`EmbeddedError`."""
        deadline = time.monotonic() + timeout_s
        for member in self.members:
            if not member.running:
                continue
            while not _healthy(self.host, member.monitor_port):
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"nats cluster: JetStream not ready on {member.url} after {timeout_s:.0f} s"
                    )
                time.sleep(0.1)

    def member(self, server_name: str) -> EmbeddedNats:
        """The member called ``server_name`` (as JetStream names a stream's leader)."""
        return next(m for m in self.members if m.server_name == server_name)

    def stop_member(self, server_name: str) -> None:
        self.member(server_name).stop()

    def start_member(self, server_name: str) -> None:
        self.member(server_name).start()

    def __enter__(self) -> EmbeddedNatsCluster:
        for attempt in range(_PORT_ATTEMPTS):
            try:
                for member in self.members:
                    member.start()
                self.wait_ready()
                break
            except BaseException as exc:
                self.__exit__(None, None, None)
                # A port chosen up front was taken before its member listened: all new ports (every
                # member's configuration names every route port).
                if not bind_conflict(exc) or attempt == _PORT_ATTEMPTS - 1:
                    raise
                log.warning("nats cluster: a port was taken meanwhile; starting on new ones")
                self._choose_ports()
        log.info("nats cluster ready: %s", ", ".join(self.urls))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for member in reversed(self.members):
            member.stop()


async def stream_leader(nc: NATS, stream: str) -> str | None:
    """The server name of the member leading ``stream``; ``None`` on one server, and while the stream
    has no leader or does not answer (an election under way)."""
    try:
        info = await nc.jetstream().stream_info(stream)
    except (NatsError, TimeoutError) as exc:
        log.info("%s: no leader answers (%s)", stream, exc)
        return None
    return info.cluster.leader if info.cluster is not None else None


async def lead_on(nc: NATS, stream: str, member: str, *, timeout_s: float = 30.0) -> str:
    """Move ``stream``'s leadership to ``member`` (a step-down with a preferred placement, asked again
    every half second until it holds); returns ``member``. Raises :class:`EmbeddedError` after
    ``timeout_s``."""
    body = json.dumps({"placement": {"preferred": member}}).encode()
    deadline = time.monotonic() + timeout_s
    while True:
        if await stream_leader(nc, stream) == member:
            return member
        try:
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=5)
        except (NatsError, TimeoutError) as exc:  # an election under way: ask again
            log.info("moving %s's leadership to %s: %s", stream, member, exc)
        if time.monotonic() > deadline:
            raise EmbeddedError(f"{stream}: {member} not leading after {timeout_s:.0f} s")
        await asyncio.sleep(0.5)
