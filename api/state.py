"""The typed state the lifespan builds and every route reads (``request.state.hub``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext
    from psycopg_pool import AsyncConnectionPool

    from api.cache import HubCache
    from api.settings import Settings
    from hub.catalog import CatalogCache
    from hub.deadletters import DeadLetterer
    from hub.fanout import FanOut
    from hub.maintenance import Maintenance
    from hub.metrics import Metrics
    from hub.metrics_files import MetricFiles
    from hub.partitions import Partitions
    from hub.upstream import UpstreamRules
    from store.cursor import CursorCodec

__all__ = ["HubState"]


@dataclass
class HubState:
    settings: Settings
    pool: AsyncConnectionPool
    nats: NATS
    js: JetStreamContext
    redis: aioredis.Redis
    maintenance: Maintenance
    metrics: Metrics
    catalog: CatalogCache
    dead_letters: DeadLetterer
    writer: Partitions | None  # None: a secondary worker, which leaves ingest to the primary
    cursors: CursorCodec  # signs and verifies paging cursors with the deployment's cursor key
    fanout: FanOut | None = None
    started_at: float = field(default_factory=time.time)
    cache: HubCache | None = None  # None: every read goes to PostgreSQL
    upstream: UpstreamRules | None = None  # None: the default rules (hub.upstream.DEFAULT_RULES)
    metric_files: MetricFiles | None = None  # set: /metrics answers for every worker of the node
    worker: int | None = None  # this process's index among `--workers` (0: the primary); None: the only one
