"""What :class:`api.settings.Settings` checks, by kind, and the checks that are more than a bound: each
refuses a value the hub cannot use with a :class:`SettingsError` whose message names the variable."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

__all__ = [
    "AT_LEAST_ONE",
    "COMPAT_PREFIX",
    "HEADER_VALUE",
    "HEADER_VALUES",
    "HEADER_VALUE_MAX",
    "MIN_LIVE_PENDING_BYTES",
    "NOT_NEGATIVE",
    "OWN_TOP",
    "POSITIVE",
    "POSITIVE_SECONDS",
    "PREFIX",
    "RATES",
    "SOCKETIO_TRANSPORTS",
    "SettingsError",
    "check_compression",
    "check_jwks_url",
    "check_nats_urls",
    "check_networks",
    "check_transports",
]

PREFIX = "TICKSTOCK_"

# The TickStock compatibility routes' prefix: one or more path segments, none of them ours at the top.
COMPAT_PREFIX = re.compile(r"(?:/[A-Za-z0-9][A-Za-z0-9._~-]*)+")
OWN_TOP = frozenset(
    {
        "api",
        "ws",
        "socket.io",
        "health",
        "metrics",
        "docs",
        "openapi.json",
        "schema",
        "asyncapi.yaml",
        "dashboard-assets",
    }
)

# The checks, by kind; each message names the variable.
AT_LEAST_ONE = (
    "writer_batch",
    "ingest_max_deliver",
    "http_ingest_max_events",
    "http_ingest_max_bytes",
    "http_ingest_inflight",
    "rate_limit_burst",
    "rate_limit_admin_burst",
    "rate_limit_timeout_ms",
    "ws_max_connections",
    "ws_max_subscriptions",
    "ws_queue_messages",
    "ws_queue_bytes",
    "ws_resume_max",
    "ws_ring_size",
    "ws_live_pending_messages",
    "ws_live_pending_bytes",
    "event_max_age_days",
    "event_max_expiry_days",
    "partitions_per_batch",
    "auth_failure_burst",
    "admin_max_body_bytes",
    "jwks_max_bytes",
    "socketio_max_packet_bytes",
    "socketio_queue_packets",
)
POSITIVE = (
    "pool_timeout_s",
    "connect_timeout_s",
    "maintenance_interval_s",
    "ingest_ack_wait_s",
    "cache_ttl_s",
    "cache_closed_ttl_s",
    "cache_timeout_ms",
    "cache_breaker_failures",
    "cache_breaker_reset_ms",
    "event_max_ahead_s",
    "jwt_max_lifetime_s",
)
POSITIVE_SECONDS = (
    "ingest_pin_timeout_s",
    "ingest_partition_ack_wait_s",
    "ws_ping_interval_s",
    "ws_idle_timeout_s",
    "ws_auth_timeout_s",
    "ws_drain_s",
    "ws_queue_age_s",
    "ws_shed_after_s",
    "ws_shed_lag_s",
    "socketio_ping_interval_s",
    "socketio_ping_timeout_s",
)
RATES = ("rate_limit_per_s", "rate_limit_admin_per_s", "auth_failure_per_s")
NOT_NEGATIVE = (
    "cache_staleness_ms",
    "statement_timeout_ms",
    "hsts_max_age_s",
    "auth_cache_size",
    "rate_limit_sync_ms",
    "cache_local_entries",
    "cache_local_max_age_ms",
)
HEADER_VALUES = ("csp_html", "csp_other", "referrer_policy")
# A header value h11 and browsers accept: visible ASCII and spaces, no space at either end.
HEADER_VALUE = re.compile(r"[!-~](?: *[!-~])*")
HEADER_VALUE_MAX = 4096


SOCKETIO_TRANSPORTS = frozenset({"polling", "websocket"})
MIN_LIVE_PENDING_BYTES = 1 << 20  # the live buffer must hold the largest event (data: 16 KiB)
WS_COMPRESSION = ("off", "shared")  # what api/wsdeflate.py implements


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def check_transports(value: str) -> None:
    """``value`` is ``polling``, ``websocket`` or both, comma-separated; SettingsError otherwise."""
    if not {t.strip() for t in value.split(",")} <= SOCKETIO_TRANSPORTS:
        raise SettingsError(f"{PREFIX}SOCKETIO_TRANSPORTS must be polling, websocket or both")


def check_compression(value: str) -> None:
    """``value`` is ``off`` or ``shared``; SettingsError otherwise."""
    if value not in WS_COMPRESSION:
        raise SettingsError(
            f"{PREFIX}WS_COMPRESSION must be {' or '.join(WS_COMPRESSION)}, not {value[:32]!r}"
        )


def check_networks(value: str) -> None:
    """``value`` is ``*`` or comma-separated IP addresses or networks; SettingsError otherwise."""
    for item in (part.strip() for part in value.split(",")):
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                f"{PREFIX}FORWARDED_ALLOW_IPS: {item[:64]!r} is not an IP address, a network or *"
            ) from None


NATS_SCHEMES = frozenset({"nats", "tls"})


def check_nats_urls(value: str) -> tuple[str, ...]:
    """The servers of ``TICKSTOCK_NATS_URL``: one URL or a comma-separated list, each ``nats://`` or
    ``tls://`` with a host and (optionally, default 4222) a port; credentials in a URL are allowed.
    Raises :class:`SettingsError` naming the variable (never echoing a password) otherwise."""
    urls = tuple(part.strip() for part in value.split(","))
    for index, url in enumerate(urls, 1):
        where = f"{PREFIX}NATS_URL: server {index} of {len(urls)}"
        if not url:
            raise SettingsError(f"{where} is empty (a list is comma-separated URLs, no empty entries)")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in NATS_SCHEMES:
            raise SettingsError(f"{where} must start with nats:// or tls://")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or port == 0:
            raise SettingsError(f"{where} needs a host and a TCP port (nats://host:4222)")
    return urls


def check_jwks_url(url: str) -> str:
    """``url`` when the hub may fetch a key set from it: ``https``, ``file``, or ``http`` to a loopback host
    (for tests). Raises ``ValueError`` otherwise."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("https", "file"):
        return url
    if scheme == "http":
        host = (parts.hostname or "").lower()
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
        raise ValueError("a JWKS URL over plain http must point at a loopback host (use https)")
    raise ValueError("a JWKS URL must be https:// or file:// (http:// to a loopback host for tests)")
