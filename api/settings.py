"""Settings: the only place that reads the environment.

Every setting has a ``TICKSTOCK_`` variable. An unset server URL means "start the embedded server"
(``tickstock run``); ``tickstock serve`` requires all three URLs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["Settings", "SettingsError"]

PREFIX = "TICKSTOCK_"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_DATA_DIR = ".tickstock"
DEFAULT_POOL_MIN_SIZE = 2
DEFAULT_POOL_MAX_SIZE = 10
DEFAULT_POOL_TIMEOUT_S = 5.0
DEFAULT_POOL_MAX_IDLE_S = 300.0
DEFAULT_STATEMENT_TIMEOUT_MS = 5_000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_PARTITIONS_AHEAD_DAYS = 7
DEFAULT_MAINTENANCE_INTERVAL_S = 60.0
DEFAULT_WRITER_BATCH = 1000
DEFAULT_INGEST_MAX_DELIVER = 30
DEFAULT_INGEST_ACK_WAIT_S = 15.0
DEFAULT_HTTP_INGEST_MAX_EVENTS = 1_000
DEFAULT_EVENT_MAX_AGE_DAYS = 7_305  # 20 years back
DEFAULT_EVENT_MAX_AHEAD_S = 86_400  # 1 day ahead
DEFAULT_EVENT_MAX_EXPIRY_DAYS = 400
DEFAULT_PARTITIONS_PER_BATCH = 4
DEFAULT_HTTP_INGEST_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_HTTP_INGEST_INFLIGHT = 5_000
DEFAULT_RATE_LIMIT_PER_S = 500.0
DEFAULT_RATE_LIMIT_BURST = 1_000
DEFAULT_RATE_LIMIT_TIMEOUT_MS = 50
DEFAULT_CACHE_STALENESS_MS = 1_000
DEFAULT_CACHE_TTL_S = 60.0
DEFAULT_CACHE_CLOSED_TTL_S = 3_600.0
DEFAULT_CACHE_TIMEOUT_MS = 150
DEFAULT_CACHE_BREAKER_FAILURES = 5
DEFAULT_CACHE_BREAKER_RESET_MS = 1_000


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Frozen hub settings. Build with :meth:`from_env`; tests pass keyword arguments."""

    database_url: str | None = None
    nats_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    pool_min_size: int = DEFAULT_POOL_MIN_SIZE
    pool_max_size: int = DEFAULT_POOL_MAX_SIZE
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S
    pool_max_idle_s: float = DEFAULT_POOL_MAX_IDLE_S
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    partitions_ahead_days: int = DEFAULT_PARTITIONS_AHEAD_DAYS
    maintenance_interval_s: float = DEFAULT_MAINTENANCE_INTERVAL_S
    writer_batch: int = DEFAULT_WRITER_BATCH
    ingest_max_deliver: int = DEFAULT_INGEST_MAX_DELIVER
    ingest_ack_wait_s: float = DEFAULT_INGEST_ACK_WAIT_S
    http_ingest_max_events: int = DEFAULT_HTTP_INGEST_MAX_EVENTS
    http_ingest_max_bytes: int = DEFAULT_HTTP_INGEST_MAX_BYTES
    http_ingest_inflight: int = DEFAULT_HTTP_INGEST_INFLIGHT
    event_max_age_days: int = DEFAULT_EVENT_MAX_AGE_DAYS  # detected_at at most this far back
    event_max_ahead_s: int = DEFAULT_EVENT_MAX_AHEAD_S  # detected_at at most this far ahead
    event_max_expiry_days: int = DEFAULT_EVENT_MAX_EXPIRY_DAYS  # expires_at at most this far ahead
    partitions_per_batch: int = DEFAULT_PARTITIONS_PER_BATCH  # new monthly partitions per writer batch
    rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S  # per token subject; 0 turns limiting off
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST
    rate_limit_admin_per_s: float | None = None  # None: the same as everyone
    rate_limit_admin_burst: int | None = None
    rate_limit_timeout_ms: int = DEFAULT_RATE_LIMIT_TIMEOUT_MS
    cache_enabled: bool = True  # false: every read goes to PostgreSQL
    cache_staleness_ms: int = DEFAULT_CACHE_STALENESS_MS  # a scan this long after a commit includes it
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S  # entries over open time ranges
    cache_closed_ttl_s: float = DEFAULT_CACHE_CLOSED_TTL_S  # entries over a closed range in the past
    cache_timeout_ms: int = DEFAULT_CACHE_TIMEOUT_MS  # per Redis call; slower counts as a failure
    cache_breaker_failures: int = DEFAULT_CACHE_BREAKER_FAILURES  # consecutive failures that open it
    cache_breaker_reset_ms: int = DEFAULT_CACHE_BREAKER_RESET_MS  # open this long before one probe
    ws_max_connections: int = 20_000  # per node; more are closed with 4429
    ws_max_subscriptions: int = 100  # per connection
    ws_queue_messages: int = 1_000  # outbox bound per connection; full closes it with 4409
    ws_queue_bytes: int = 1 << 20
    ws_queue_age_s: float = 10.0  # a frame waiting longer closes the connection with 4409
    ws_ping_interval_s: float = 20.0
    ws_idle_timeout_s: float = 60.0
    ws_auth_timeout_s: float = 5.0
    ws_resume_max: int = 100_000  # stream messages a resume may replay
    ws_ring_size: int = 10_000  # recent events held in memory for resumes (older ones come from JetStream)
    ws_drain_s: float = 1.0  # on shutdown, time given to outboxes before closing with 1001
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str = "tickstock-hub"
    jwt_audience: str = "tickstock"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.pool_min_size < 0 or self.pool_max_size < max(1, self.pool_min_size):
            raise SettingsError(
                f"{PREFIX}POOL_MAX_SIZE ({self.pool_max_size}) must be >= 1 and >= "
                f"{PREFIX}POOL_MIN_SIZE ({self.pool_min_size})"
            )
        for name in ("pool_timeout_s", "connect_timeout_s", "maintenance_interval_s", "ingest_ack_wait_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be positive")
        for name in ("writer_batch", "ingest_max_deliver", "http_ingest_max_events", "http_ingest_max_bytes", "http_ingest_inflight",
                     "event_max_age_days", "partitions_per_batch", "event_max_expiry_days"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        for name in ("rate_limit_per_s", "rate_limit_admin_per_s"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < float("inf")):
                raise SettingsError(f"{PREFIX}{name.upper()} must be a finite number >= 0 (0 turns limiting off)")
        for name in ("rate_limit_burst", "rate_limit_admin_burst", "rate_limit_timeout_ms"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        if self.cache_staleness_ms < 0:
            raise SettingsError(f"{PREFIX}CACHE_STALENESS_MS must be >= 0")
        for name in ("cache_ttl_s", "cache_closed_ttl_s", "cache_timeout_ms", "cache_breaker_failures",
                     "cache_breaker_reset_ms"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be positive")
        for name in ("ws_max_connections", "ws_max_subscriptions", "ws_queue_messages", "ws_queue_bytes",
                     "ws_resume_max", "ws_ring_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        for name in ("ws_ping_interval_s", "ws_idle_timeout_s", "ws_auth_timeout_s", "ws_drain_s", "ws_queue_age_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise SettingsError(f"{PREFIX}{name.upper()} must be a positive number of seconds")
        if self.event_max_ahead_s < 0:
            raise SettingsError(f"{PREFIX}EVENT_MAX_AHEAD_S must be >= 0")
        if self.statement_timeout_ms < 0:
            raise SettingsError(f"{PREFIX}STATEMENT_TIMEOUT_MS must be >= 0")
        if not 0 < self.port < 65536:
            raise SettingsError(f"{PREFIX}PORT must be a TCP port, not {self.port}")

    @property
    def embedded(self) -> tuple[str, ...]:
        """Which servers have no URL and must be started by the hub."""
        return tuple(
            name for name, url in
            (("nats", self.nats_url), ("postgres", self.database_url), ("redis", self.redis_url))
            if not url
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``TICKSTOCK_*`` variables; ``overrides`` (e.g. from command-line flags) win.

        Raises :class:`SettingsError` naming the variable when a value does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name == "Path":
            return Path(raw)
        if type_name == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {type_name}") from None
    return raw
