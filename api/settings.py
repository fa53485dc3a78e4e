"""Settings: the only place that reads the environment.

Every setting has a ``TICKSTOCK_`` variable (``TICKSTOCK_POOL_MAX_SIZE`` sets ``pool_max_size``). An unset
server URL means "start the embedded server" (``tickstock run``); ``tickstock serve`` requires all three URLs.

:class:`Settings` is a frozen pydantic dataclass (so ``dataclasses.replace`` works and validates);
pydantic-settings' environment source reads the variables (:meth:`Settings.from_env`), pydantic parses
them, and one check (``__post_init__``) bounds the values. Building ``Settings(...)`` directly never looks
at the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.dataclasses import dataclass
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from api import securityheaders
from api import settings_checks as checks
from api.settings_checks import PREFIX, SettingsError, check_jwks_url
from hub import fanout_limits as ws
from hub import jetstream, writer
from hub.bridge import DEFAULT_CHANNELS
from hub.cloudevent import DEFAULT_SOURCE as DEFAULT_CLOUDEVENTS_SOURCE
from hub.cloudevent import check_source
from hub.model import TIMEFRAMES
from hub.tiers import TimeframeTable, parse_table
from hub.upstream import UpstreamRules
from hub.window import DEFAULT_EVENT_MAX_AGE_DAYS, DEFAULT_EVENT_MAX_AHEAD_S, DEFAULT_EVENT_MAX_EXPIRY_DAYS
from hub.writer import DEFAULT_PARTITIONS_PER_BATCH
from store import breaker, cache, pool

__all__ = ["Settings", "SettingsError", "check_jwks_url"]


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_DATA_DIR = ".tickstock"
DEFAULT_POOL_MIN_SIZE = pool.DEFAULT_MIN_SIZE
DEFAULT_POOL_MAX_SIZE = pool.DEFAULT_MAX_SIZE
DEFAULT_POOL_TIMEOUT_S = pool.DEFAULT_TIMEOUT_S
DEFAULT_POOL_MAX_IDLE_S = pool.DEFAULT_MAX_IDLE_S
DEFAULT_STATEMENT_TIMEOUT_MS = pool.DEFAULT_STATEMENT_TIMEOUT_MS
DEFAULT_CONNECT_TIMEOUT_S = pool.DEFAULT_CONNECT_TIMEOUT_S
DEFAULT_PARTITIONS_AHEAD_DAYS = 7
DEFAULT_MAINTENANCE_INTERVAL_S = 60.0
DEFAULT_WRITER_BATCH = writer.DEFAULT_BATCH
DEFAULT_INGEST_MAX_DELIVER = 30
DEFAULT_INGEST_ACK_WAIT_S = 15.0
DEFAULT_INGEST_PARTITIONS = jetstream.DEFAULT_PARTITIONS
DEFAULT_INGEST_PIN_TIMEOUT_S = jetstream.DEFAULT_PIN_TIMEOUT_S
DEFAULT_INGEST_PARTITION_ACK_WAIT_S = jetstream.DEFAULT_PARTITION_ACK_WAIT_S
DEFAULT_HTTP_INGEST_MAX_EVENTS = 1_000
DEFAULT_HTTP_INGEST_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_HTTP_INGEST_INFLIGHT = 5_000
DEFAULT_RATE_LIMIT_PER_S = 500.0
DEFAULT_RATE_LIMIT_BURST = 1_000
DEFAULT_RATE_LIMIT_TIMEOUT_MS = 50
DEFAULT_RATE_LIMIT_SYNC_MS = 100
DEFAULT_AUTH_CACHE_SIZE = 10_000
DEFAULT_CACHE_LOCAL_ENTRIES = 2_000
DEFAULT_CACHE_LOCAL_MAX_AGE_MS = 1_000
DEFAULT_CACHE_STALENESS_MS = round(cache.DEFAULT_STALENESS_S * 1000)
DEFAULT_CACHE_TTL_S = 60.0
DEFAULT_CACHE_CLOSED_TTL_S = 3_600.0
DEFAULT_CACHE_TIMEOUT_MS = round(cache.DEFAULT_TIMEOUT_S * 1000)
DEFAULT_CACHE_BREAKER_FAILURES = breaker.DEFAULT_FAILURES
DEFAULT_CACHE_BREAKER_RESET_MS = round(breaker.DEFAULT_RESET_S * 1000)
DEFAULT_JWT_MAX_LIFETIME_S = 86_400.0
DEFAULT_AUTH_FAILURE_PER_S = 1.0
DEFAULT_AUTH_FAILURE_BURST = 20
DEFAULT_ADMIN_MAX_BODY_BYTES = 1 << 20
DEFAULT_JWKS_MAX_BYTES = 1 << 20
DEFAULT_HSTS_MAX_AGE_S = securityheaders.DEFAULT_HSTS_MAX_AGE_S
DEFAULT_SOCKETIO_TRANSPORTS = "polling,websocket"  # Socket.IO clients' default: polling, then upgrade
DEFAULT_SOCKETIO_PING_INTERVAL_S = 25.0  # Engine.IO's own defaults
DEFAULT_SOCKETIO_PING_TIMEOUT_S = 20.0
DEFAULT_SOCKETIO_MAX_PACKET_BYTES = 64 * 1024  # a larger message or polling POST closes the session
DEFAULT_SOCKETIO_QUEUE_PACKETS = 64  # Engine.IO's per-session queue; behind it the fan-out's outbox
DEFAULT_COMPAT_PREFIX = "/tickstock"
DEFAULT_WS_COMPRESSION = "off"
MAX_WORKERS = 64  # hub processes on one port (`--workers`); more would only contend for the cores


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Frozen hub settings. Build with :meth:`from_env`; tests pass keyword arguments.

    A bad value raises pydantic's ``ValidationError`` (a ``ValueError``) when built directly, and
    :class:`SettingsError` naming the variable from :meth:`from_env`.
    """

    database_url: str | None = None
    nats_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # Hub processes serving the port (`tickstock serve --workers`); 1: one process, no supervisor.
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
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
    ingest_partitions: int = DEFAULT_INGEST_PARTITIONS  # 0: one shared consumer, order per node only
    ingest_pin_timeout_s: float = DEFAULT_INGEST_PIN_TIMEOUT_S
    ingest_partition_ack_wait_s: float = DEFAULT_INGEST_PARTITION_ACK_WAIT_S
    nats_replicas: int = 1  # of every JetStream stream: 3 on a 3-node NATS cluster
    http_ingest_max_events: int = DEFAULT_HTTP_INGEST_MAX_EVENTS
    http_ingest_max_bytes: int = DEFAULT_HTTP_INGEST_MAX_BYTES
    http_ingest_inflight: int = DEFAULT_HTTP_INGEST_INFLIGHT
    rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S  # per token subject; 0 turns limiting off
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST
    rate_limit_admin_per_s: float | None = None  # None: the same as everyone
    rate_limit_admin_burst: int | None = None
    rate_limit_timeout_ms: int = DEFAULT_RATE_LIMIT_TIMEOUT_MS
    rate_limit_sync_ms: int = (
        DEFAULT_RATE_LIMIT_SYNC_MS  # tokens drawn from Redis live this long; 0: per request
    )
    cache_enabled: bool = True  # false: every read goes to PostgreSQL
    cache_staleness_ms: int = DEFAULT_CACHE_STALENESS_MS  # a scan this long after a commit includes it
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S  # entries over open time ranges
    cache_closed_ttl_s: float = DEFAULT_CACHE_CLOSED_TTL_S  # entries over a closed range in the past
    cache_timeout_ms: int = DEFAULT_CACHE_TIMEOUT_MS  # per Redis call; slower counts as a failure
    cache_breaker_failures: int = DEFAULT_CACHE_BREAKER_FAILURES  # consecutive failures that open it
    cache_breaker_reset_ms: int = DEFAULT_CACHE_BREAKER_RESET_MS  # open this long before one probe
    cache_local_entries: int = DEFAULT_CACHE_LOCAL_ENTRIES  # answers kept in process before Redis; 0: none
    cache_local_max_age_ms: int = DEFAULT_CACHE_LOCAL_MAX_AGE_MS  # longest an in-process copy goes unchecked
    ws_max_connections: int = ws.DEFAULT_MAX_CONNECTIONS  # the websocket bounds: see hub.fanout_limits
    ws_max_subscriptions: int = ws.DEFAULT_MAX_SUBSCRIPTIONS
    ws_queue_messages: int = ws.DEFAULT_QUEUE_MESSAGES
    ws_queue_bytes: int = ws.DEFAULT_QUEUE_BYTES
    ws_queue_age_s: float = ws.DEFAULT_QUEUE_AGE_S
    ws_ping_interval_s: float = ws.DEFAULT_PING_INTERVAL_S
    ws_idle_timeout_s: float = ws.DEFAULT_IDLE_TIMEOUT_S
    ws_auth_timeout_s: float = ws.DEFAULT_AUTH_TIMEOUT_S
    ws_resume_max: int = ws.DEFAULT_RESUME_MAX
    ws_ring_size: int = ws.DEFAULT_RING_SIZE
    ws_drain_s: float = ws.DEFAULT_DRAIN_S
    ws_live_pending_messages: int = ws.DEFAULT_LIVE_PENDING_MESSAGES
    ws_live_pending_bytes: int = ws.DEFAULT_LIVE_PENDING_BYTES
    ws_shed_after_s: float = ws.DEFAULT_SHED_AFTER_S
    ws_shed_lag_s: float = ws.DEFAULT_SHED_LAG_S
    # permessage-deflate (api/wsdeflate.py): "off" declines it; "shared" compresses each frame once.
    ws_compression: str = DEFAULT_WS_COMPRESSION
    # Socket.IO at /socket.io/ (docs/socketio.md), on the same fan-out and bounds as /ws.
    socketio_enabled: bool = True
    socketio_transports: str = DEFAULT_SOCKETIO_TRANSPORTS  # comma-separated; "websocket": no polling
    socketio_cors_origins: str = ""  # comma-separated origins; "": same origin only; "*": any
    socketio_ping_interval_s: float = DEFAULT_SOCKETIO_PING_INTERVAL_S
    socketio_ping_timeout_s: float = DEFAULT_SOCKETIO_PING_TIMEOUT_S
    socketio_max_packet_bytes: int = DEFAULT_SOCKETIO_MAX_PACKET_BYTES
    socketio_queue_packets: int = DEFAULT_SOCKETIO_QUEUE_PACKETS
    # Event time window (issue #11): older, further ahead or longer-lived events are dead letters.
    event_max_age_days: int = DEFAULT_EVENT_MAX_AGE_DAYS  # detected_at at most this far back
    event_max_ahead_s: float = DEFAULT_EVENT_MAX_AHEAD_S  # detected_at at most this far ahead of now
    event_max_expiry_days: int = DEFAULT_EVENT_MAX_EXPIRY_DAYS  # expires_at at most this far after now
    partitions_per_batch: int = DEFAULT_PARTITIONS_PER_BATCH  # new monthly partitions per writer batch
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    jwks_url: str | None = None
    jwt_issuer: str = "tickstock-hub"
    jwt_audience: str = "tickstock"
    jwt_max_lifetime_s: float = DEFAULT_JWT_MAX_LIFETIME_S  # exp - iat cap; a token without iat is refused
    jwks_max_bytes: int = DEFAULT_JWKS_MAX_BYTES  # a larger key set document is refused
    auth_cache_size: int = DEFAULT_AUTH_CACHE_SIZE  # verified tokens remembered until their exp; 0: none
    # Failed authentications and token-less websocket opens per client address; 0 turns it off.
    auth_failure_per_s: float = DEFAULT_AUTH_FAILURE_PER_S
    auth_failure_burst: int = DEFAULT_AUTH_FAILURE_BURST
    admin_max_body_bytes: int = DEFAULT_ADMIN_MAX_BODY_BYTES
    cursor_secret: str | None = dataclasses.field(default=None, repr=False)  # None: a per-deployment key
    cloudevents_source: str = DEFAULT_CLOUDEVENTS_SOURCE  # ce-source of clean-stream messages
    log_level: str = "INFO"
    # Security headers on every HTTP response (api/securityheaders.py); false: none (a proxy adds them).
    security_headers: bool = True
    csp_html: str = securityheaders.DEFAULT_HTML_CSP  # HTML pages (a page's own CSP is kept)
    csp_other: str = securityheaders.DEFAULT_OTHER_CSP  # every other response
    referrer_policy: str = securityheaders.DEFAULT_REFERRER_POLICY
    hsts_max_age_s: int = DEFAULT_HSTS_MAX_AGE_S  # only on requests that came over TLS; 0: never
    # Proxies whose X-Forwarded-Proto/-For uvicorn believes (IPs, networks, "*"); None: uvicorn's
    # default (its FORWARDED_ALLOW_IPS variable, else 127.0.0.1 and ::1).
    forwarded_allow_ips: str | None = None
    # TickStock's REST clients (api/routes/compat): served under compat_prefix unless compat is false.
    compat: bool = True
    compat_prefix: str = DEFAULT_COMPAT_PREFIX
    # TickStock's upstream messages and the Redis bridge (docs/upstream.md).
    upstream_timeframes: str | None = None  # JSON object or "spelling=timeframe,…" over the default table
    upstream_default_timeframe: str | None = (
        None  # for a message without timeframe or tier; unset: dead letter
    )
    upstream_naive_timezone: str = "UTC"  # the zone a naive ISO timestamp is read in
    bridge_redis_url: str | None = None  # set: `tickstock run` and `serve` run the Redis bridge inside
    bridge_channels: str = ",".join(DEFAULT_CHANNELS)  # comma-separated Redis channels the bridge reads
    nats_service: bool = True  # the NATS service `tickstock` (tickstock.svc.*) on every node; false: none

    def upstream_rules(self) -> UpstreamRules:
        """The rules for upstream messages these settings describe; raises :class:`SettingsError`."""
        default = self.upstream_default_timeframe
        if default is not None and default not in TIMEFRAMES:
            raise SettingsError(
                f"{PREFIX}UPSTREAM_DEFAULT_TIMEFRAME: {default!r} is not one of {' '.join(TIMEFRAMES)}"
            )
        try:
            table = TimeframeTable().with_overrides(
                parse_table(self.upstream_timeframes or ""), default=default
            )
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}UPSTREAM_TIMEFRAMES: {exc}") from None
        try:
            zone = zoneinfo.ZoneInfo(self.upstream_naive_timezone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise SettingsError(
                f"{PREFIX}UPSTREAM_NAIVE_TIMEZONE: no time zone {self.upstream_naive_timezone!r}"
            ) from None
        return UpstreamRules(timeframes=table, naive_zone=zone)

    @property
    def nats_servers(self) -> tuple[str, ...]:
        """Every server of ``TICKSTOCK_NATS_URL`` (comma-separated); empty when NATS is embedded."""
        return checks.check_nats_urls(self.nats_url) if self.nats_url else ()

    @property
    def bridge_channel_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.bridge_channels.split(",") if c.strip())

    def __post_init__(self) -> None:
        if self.pool_min_size < 0 or self.pool_max_size < max(1, self.pool_min_size):
            raise SettingsError(
                f"{PREFIX}POOL_MAX_SIZE ({self.pool_max_size}) must be >= 1 and >= "
                f"{PREFIX}POOL_MIN_SIZE ({self.pool_min_size})"
            )
        for name in checks.POSITIVE:
            if not getattr(self, name) > 0:  # NaN fails too
                raise SettingsError(f"{PREFIX}{name.upper()} must be positive")
        for name in checks.AT_LEAST_ONE:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        for name in checks.RATES:
            value = getattr(self, name)
            if value is not None and not (0 <= value < math.inf):
                raise SettingsError(
                    f"{PREFIX}{name.upper()} must be a finite number >= 0 (0 turns limiting off)"
                )
        for name in checks.POSITIVE_SECONDS:
            if not 0 < getattr(self, name) < math.inf:
                raise SettingsError(f"{PREFIX}{name.upper()} must be a positive number of seconds")
        for name in checks.NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be >= 0")
        for name in checks.HEADER_VALUES:
            value = getattr(self, name)
            if len(value) > checks.HEADER_VALUE_MAX or not checks.HEADER_VALUE.fullmatch(value):
                raise SettingsError(
                    f"{PREFIX}{name.upper()} must be visible ASCII and spaces (none at either end), at most "
                    f"{checks.HEADER_VALUE_MAX} characters"
                )
        policies = [p.strip() for p in self.referrer_policy.split(",")]
        if not set(policies) <= securityheaders.REFERRER_POLICIES:
            raise SettingsError(
                f"{PREFIX}REFERRER_POLICY must be one or more (comma-separated) of "
                f"{', '.join(sorted(securityheaders.REFERRER_POLICIES))}"
            )
        checks.check_transports(self.socketio_transports)
        checks.check_compression(self.ws_compression)
        if self.ws_live_pending_bytes < checks.MIN_LIVE_PENDING_BYTES:
            raise SettingsError(
                f"{PREFIX}WS_LIVE_PENDING_BYTES must be at least {checks.MIN_LIVE_PENDING_BYTES} (a larger event "
                "would never fit)"
            )
        if not 1 <= self.nats_replicas <= jetstream.MAX_REPLICAS:
            raise SettingsError(f"{PREFIX}NATS_REPLICAS must be 1 to {jetstream.MAX_REPLICAS}")
        if not 0 <= self.ingest_partitions <= jetstream.MAX_PARTITIONS:
            raise SettingsError(f"{PREFIX}INGEST_PARTITIONS must be 0 to {jetstream.MAX_PARTITIONS}")
        if self.forwarded_allow_ips is not None:
            checks.check_networks(self.forwarded_allow_ips)
        if self.nats_url:
            checks.check_nats_urls(self.nats_url)
        if self.jwks_url:
            try:
                check_jwks_url(self.jwks_url)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}JWKS_URL: {exc}") from None
        if not 1 <= self.workers <= MAX_WORKERS:
            raise SettingsError(f"{PREFIX}WORKERS must be between 1 and {MAX_WORKERS}, not {self.workers}")
        if not 0 < self.port < 65536:
            raise SettingsError(f"{PREFIX}PORT must be a TCP port, not {self.port}")
        try:
            check_source(self.cloudevents_source)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}CLOUDEVENTS_SOURCE: {exc}") from None
        if (
            not checks.COMPAT_PREFIX.fullmatch(self.compat_prefix)
            or self.compat_prefix.split("/")[1] in checks.OWN_TOP
        ):
            raise SettingsError(
                f"{PREFIX}COMPAT_PREFIX must be a path such as /tickstock (segments of A-Z a-z 0-9 . _ ~ - "
                f"starting with a letter or digit, no trailing slash) outside the hub's own paths, not {self.compat_prefix!r}; "
                f"{PREFIX}COMPAT=false turns the routes off"
            )
        self.upstream_rules()
        if not self.bridge_channel_list:
            raise SettingsError(f"{PREFIX}BRIDGE_CHANNELS must name at least one Redis channel")
        if self.cursor_secret == "":
            raise SettingsError(
                f"{PREFIX}CURSOR_SECRET must not be empty (unset it for a per-deployment key)"
            )

    @property
    def embedded(self) -> tuple[str, ...]:
        """Which servers have no URL and must be started by the hub."""
        return tuple(
            name
            for name, url in (
                ("nats", self.nats_url),
                ("postgres", self.database_url),
                ("redis", self.redis_url),
            )
            if not url
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``TICKSTOCK_*`` variables (``os.environ`` unless ``environ`` is given; empty ones count as
        unset); ``overrides`` that are not None (e.g. command-line flags) win.

        Raises :class:`SettingsError` naming the variable when a value does not parse or is out of range.
        """
        # Empty counts as unset everywhere else; an empty prefix would mean "at the root", over our /api.
        raw = os.environ if environ is None else environ
        if any(k.upper() == f"{PREFIX}COMPAT_PREFIX" and v == "" for k, v in raw.items()):
            raise SettingsError(
                f"{PREFIX}COMPAT_PREFIX must not be empty (unset it for {DEFAULT_COMPAT_PREFIX})"
            )
        source = _Environment.source(environ)
        values: dict[str, Any] = {**source(), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _explain(exc, values) from None


class _Environment(BaseSettings, Settings):  # type: ignore[misc]  # a settings model over the same fields
    """The variables pydantic-settings reads: ``TICKSTOCK_`` + the field name, any case, empty = unset."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, case_sensitive=False)

    @classmethod
    def source(cls, environ: Mapping[str, str] | None) -> EnvSettingsSource:
        return EnvSettingsSource(cls) if environ is None else _MappingSource(cls, environ)


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            (k if self.case_sensitive else k.lower()): v
            for k, v in self._environ.items()
            if not (self.env_ignore_empty and v == "")
        }


_TYPES = {f.name: str(f.type) for f in dataclasses.fields(Settings)}


def _explain(exc: ValidationError, values: Mapping[str, object]) -> SettingsError:
    """The first error of ``exc`` as one line naming the variable."""
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SettingsError):
        return cause
    name = str(error["loc"][0]) if error["loc"] else "?"
    type_name = _TYPES.get(name, "value")
    return SettingsError(f"{PREFIX}{name.upper()}={values.get(name)!r} is not a valid {type_name}")
