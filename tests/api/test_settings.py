from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from api.settings import Settings, SettingsError


def test_defaults_mean_everything_embedded() -> None:
    s = Settings.from_env({})
    assert s.embedded == ("nats", "postgres", "redis")
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8000, Path(".tickstock"))


def test_reads_prefixed_variables_and_types() -> None:
    s = Settings.from_env(
        {
            "TICKSTOCK_DATABASE_URL": "postgresql://x@127.0.0.1/db",
            "TICKSTOCK_NATS_URL": "nats://127.0.0.1:4222",
            "TICKSTOCK_POOL_MAX_SIZE": "20",
            "TICKSTOCK_POOL_TIMEOUT_S": "2.5",
            "TICKSTOCK_DATA_DIR": "/tmp/x",
            "TICKSTOCK_JWT_SECRET": "dev",
            "TICKSTOCK_REDIS_URL": "",
            "UNRELATED": "1",
        }
    )
    assert s.database_url == "postgresql://x@127.0.0.1/db"
    assert s.pool_max_size == 20 and s.pool_timeout_s == 2.5
    assert s.data_dir == Path("/tmp/x")
    assert s.jwt_secret == "dev"
    assert s.embedded == ("redis",)


def test_overrides_win_and_none_overrides_are_ignored() -> None:
    s = Settings.from_env({"TICKSTOCK_PORT": "9000", "TICKSTOCK_HOST": "0.0.0.0"}, port=9100, host=None)
    assert (s.host, s.port) == ("0.0.0.0", 9100)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TICKSTOCK_PORT": "eighty"}, "TICKSTOCK_PORT='eighty' is not a valid int"),
        ({"TICKSTOCK_POOL_TIMEOUT_S": "soon"}, "TICKSTOCK_POOL_TIMEOUT_S='soon' is not a valid float"),
        ({"TICKSTOCK_PORT": "70000"}, "TICKSTOCK_PORT must be a TCP port"),
        ({"TICKSTOCK_POOL_MIN_SIZE": "5", "TICKSTOCK_POOL_MAX_SIZE": "2"}, "TICKSTOCK_POOL_MAX_SIZE"),
        ({"TICKSTOCK_CONNECT_TIMEOUT_S": "0"}, "TICKSTOCK_CONNECT_TIMEOUT_S must be positive"),
        ({"TICKSTOCK_STATEMENT_TIMEOUT_MS": "-1"}, "TICKSTOCK_STATEMENT_TIMEOUT_MS must be >= 0"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_reads_os_environ_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKSTOCK_WRITER_BATCH", "50")
    monkeypatch.setenv("TICKSTOCK_CACHE_ENABLED", "off")
    s = Settings.from_env()
    assert (s.writer_batch, s.cache_enabled) == (50, False)
    assert Settings().writer_batch == 1000  # building directly never reads the environment


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"TICKSTOCK_CACHE_ENABLED": raw}).cache_enabled is expected


def test_new_settings_have_their_contract_defaults() -> None:
    s = Settings.from_env({})
    assert (s.event_max_age_days, s.event_max_ahead_s, s.event_max_expiry_days) == (7305, 86400, 400)
    assert (s.partitions_per_batch, s.jwt_max_lifetime_s) == (4, 86400)
    assert (s.auth_failure_per_s, s.auth_failure_burst) == (1, 20)
    assert (s.admin_max_body_bytes, s.jwks_max_bytes, s.cursor_secret) == (1 << 20, 1 << 20, None)


def test_new_settings_are_read() -> None:
    s = Settings.from_env(
        {
            "TICKSTOCK_EVENT_MAX_AGE_DAYS": "30",
            "TICKSTOCK_EVENT_MAX_AHEAD_S": "60",
            "TICKSTOCK_EVENT_MAX_EXPIRY_DAYS": "10",
            "TICKSTOCK_PARTITIONS_PER_BATCH": "2",
            "TICKSTOCK_JWT_MAX_LIFETIME_S": "3600",
            "TICKSTOCK_AUTH_FAILURE_PER_S": "0.5",
            "TICKSTOCK_AUTH_FAILURE_BURST": "3",
            "TICKSTOCK_ADMIN_MAX_BODY_BYTES": "1024",
            "TICKSTOCK_JWKS_MAX_BYTES": "2048",
            "TICKSTOCK_CURSOR_SECRET": "k" * 32,
        }
    )
    assert (s.event_max_age_days, s.event_max_ahead_s, s.event_max_expiry_days) == (30, 60, 10)
    assert s.partitions_per_batch == 2
    assert (s.jwt_max_lifetime_s, s.auth_failure_per_s, s.auth_failure_burst) == (3600, 0.5, 3)
    assert (s.admin_max_body_bytes, s.jwks_max_bytes, s.cursor_secret) == (1024, 2048, "k" * 32)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TICKSTOCK_EVENT_MAX_AGE_DAYS": "0"}, "TICKSTOCK_EVENT_MAX_AGE_DAYS must be at least 1"),
        ({"TICKSTOCK_EVENT_MAX_AHEAD_S": "-1"}, "TICKSTOCK_EVENT_MAX_AHEAD_S must be positive"),
        ({"TICKSTOCK_EVENT_MAX_AHEAD_S": "nan"}, "TICKSTOCK_EVENT_MAX_AHEAD_S must be positive"),
        ({"TICKSTOCK_EVENT_MAX_EXPIRY_DAYS": "0"}, "TICKSTOCK_EVENT_MAX_EXPIRY_DAYS must be at least 1"),
        ({"TICKSTOCK_PARTITIONS_PER_BATCH": "0"}, "TICKSTOCK_PARTITIONS_PER_BATCH must be at least 1"),
        ({"TICKSTOCK_JWT_MAX_LIFETIME_S": "0"}, "TICKSTOCK_JWT_MAX_LIFETIME_S must be positive"),
        ({"TICKSTOCK_AUTH_FAILURE_PER_S": "-1"}, "TICKSTOCK_AUTH_FAILURE_PER_S must be a finite number >= 0"),
        ({"TICKSTOCK_AUTH_FAILURE_BURST": "0"}, "TICKSTOCK_AUTH_FAILURE_BURST must be at least 1"),
        ({"TICKSTOCK_ADMIN_MAX_BODY_BYTES": "0"}, "TICKSTOCK_ADMIN_MAX_BODY_BYTES must be at least 1"),
        ({"TICKSTOCK_JWKS_MAX_BYTES": "-5"}, "TICKSTOCK_JWKS_MAX_BYTES must be at least 1"),
        ({"TICKSTOCK_JWKS_MAX_BYTES": "1MB"}, "TICKSTOCK_JWKS_MAX_BYTES='1MB' is not a valid int"),
        ({"TICKSTOCK_CACHE_ENABLED": "maybe"}, "TICKSTOCK_CACHE_ENABLED='maybe' is not a valid bool"),
        ({"TICKSTOCK_RATE_LIMIT_PER_S": "inf"}, "TICKSTOCK_RATE_LIMIT_PER_S must be a finite number >= 0"),
        (
            {"TICKSTOCK_RATE_LIMIT_ADMIN_BURST": "x"},
            "TICKSTOCK_RATE_LIMIT_ADMIN_BURST='x' is not a valid int | None",
        ),
        ({"TICKSTOCK_WS_DRAIN_S": "inf"}, "TICKSTOCK_WS_DRAIN_S must be a positive number of seconds"),
        ({"TICKSTOCK_CACHE_STALENESS_MS": "-1"}, "TICKSTOCK_CACHE_STALENESS_MS must be >= 0"),
    ],
)
def test_bad_new_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("|", r"\|")):
        Settings.from_env(env)


def test_an_empty_cursor_secret_is_unset_in_the_environment_but_refused_when_passed() -> None:
    assert Settings.from_env({"TICKSTOCK_CURSOR_SECRET": ""}).cursor_secret is None
    with pytest.raises(ValueError, match="TICKSTOCK_CURSOR_SECRET must not be empty"):
        Settings(cursor_secret="")


def test_secrets_never_appear_in_the_repr() -> None:
    s = Settings(jwt_secret="jwt-secret-value", cursor_secret="cursor-secret-value")
    assert "secret-value" not in repr(s) and "secret-value" not in str(s)
    assert s.cursor_secret == "cursor-secret-value"


def test_replace_keeps_the_checks() -> None:
    s = Settings()
    assert dataclasses.replace(s, writer_batch=5).writer_batch == 5
    with pytest.raises(ValueError, match="TICKSTOCK_WRITER_BATCH must be at least 1"):
        dataclasses.replace(s, writer_batch=0)


def test_overrides_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="TICKSTOCK_PORT must be a TCP port"):
        Settings.from_env({}, port=0)


def test_the_tickstock_prefix_is_read_and_can_be_turned_off() -> None:
    assert (Settings().compat, Settings().compat_prefix) == (True, "/tickstock")
    read = Settings.from_env({"TICKSTOCK_COMPAT_PREFIX": "/upstream/v2", "TICKSTOCK_COMPAT": "false"})
    assert (read.compat, read.compat_prefix) == (False, "/upstream/v2")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tickstock",
        "/",
        "/tickstock/",
        "/a//b",
        "/api",
        "/api/v1",
        "/ws",
        "/health",
        "/a b",
        "/é",
        "/..",
        "/a/.b",
        "/socket.io",
    ],
)
def test_a_bad_tickstock_prefix_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="TICKSTOCK_COMPAT_PREFIX"):
        Settings.from_env({"TICKSTOCK_COMPAT_PREFIX": value})
    with pytest.raises(SettingsError, match="TICKSTOCK_COMPAT_PREFIX"):
        Settings.from_env({"tickstock_compat_prefix": value})


@pytest.mark.parametrize(
    ("value", "servers"),
    [
        ("nats://127.0.0.1:4222", ("nats://127.0.0.1:4222",)),  # one URL, as before
        ("nats://localhost", ("nats://localhost",)),  # nats-py's default port
        ("nats://127.0.0.1:4222/x", ("nats://127.0.0.1:4222/x",)),  # a path was always ignored
        (
            "nats://hub:pw@nats-1:4222, nats://hub:pw@nats-2:4222,tls://nats-3:4443",
            ("nats://hub:pw@nats-1:4222", "nats://hub:pw@nats-2:4222", "tls://nats-3:4443"),
        ),
    ],
)
def test_nats_url_takes_one_server_or_a_comma_separated_list(value: str, servers: tuple[str, ...]) -> None:
    s = Settings.from_env({"TICKSTOCK_NATS_URL": value})
    assert s.nats_url == value
    assert s.nats_servers == servers
    assert Settings.from_env({}).nats_servers == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://a:4222", "server 1 of 1 must start with nats:// or tls://"),
        ("nats://a:4222,redis://b:6379", "server 2 of 2 must start with nats:// or tls://"),
        ("nats://a:4222,,nats://b:4222", "server 2 of 3 is empty"),
        ("nats://a:4222,", "server 2 of 2 is empty"),
        ("nats://:4222", "server 1 of 1 needs a host and a TCP port"),
        ("nats://a:70000", "server 1 of 1 needs a host and a TCP port"),
        ("nats://a:0", "server 1 of 1 needs a host and a TCP port"),
        ("nats://u:secret@a:port", "server 1 of 1 needs a host and a TCP port"),
        ("a:4222", "must start with nats:// or tls://"),
    ],
)
def test_a_bad_nats_server_list_names_the_variable_in_one_line(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^TICKSTOCK_NATS_URL: .*{message}") as caught:
        Settings.from_env({"TICKSTOCK_NATS_URL": value})
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)


def test_workers_default_to_the_cores_and_are_bounded() -> None:
    assert Settings().workers == (os.cpu_count() or 1)
    assert Settings.from_env({"TICKSTOCK_WORKERS": "3"}).workers == 3
    assert Settings.from_env({"TICKSTOCK_WORKERS": "3"}, workers=1).workers == 1  # --workers wins
    for bad in ("0", "65"):
        with pytest.raises(SettingsError, match="TICKSTOCK_WORKERS must be between 1 and 64"):
            Settings.from_env({"TICKSTOCK_WORKERS": bad})
    with pytest.raises(SettingsError, match="TICKSTOCK_WORKERS='two' is not a valid int"):
        Settings.from_env({"TICKSTOCK_WORKERS": "two"})


def test_partition_and_replica_settings() -> None:
    s = Settings.from_env({})
    assert (s.ingest_partitions, s.ingest_pin_timeout_s, s.ingest_partition_ack_wait_s, s.nats_replicas) == (
        0,
        3,
        6,
        1,
    )
    s = Settings.from_env(
        {
            "TICKSTOCK_INGEST_PARTITIONS": "8",
            "TICKSTOCK_INGEST_PIN_TIMEOUT_S": "1.5",
            "TICKSTOCK_INGEST_PARTITION_ACK_WAIT_S": "4",
            "TICKSTOCK_NATS_REPLICAS": "3",
        }
    )
    assert (s.ingest_partitions, s.ingest_pin_timeout_s, s.ingest_partition_ack_wait_s, s.nats_replicas) == (
        8,
        1.5,
        4,
        3,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TICKSTOCK_INGEST_PARTITIONS": "129"}, "TICKSTOCK_INGEST_PARTITIONS must be 0 to 128"),
        ({"TICKSTOCK_INGEST_PARTITIONS": "-1"}, "TICKSTOCK_INGEST_PARTITIONS must be 0 to 128"),
        ({"TICKSTOCK_NATS_REPLICAS": "0"}, "TICKSTOCK_NATS_REPLICAS must be 1 to 5"),
        ({"TICKSTOCK_NATS_REPLICAS": "7"}, "TICKSTOCK_NATS_REPLICAS must be 1 to 5"),
        (
            {"TICKSTOCK_INGEST_PIN_TIMEOUT_S": "0"},
            "TICKSTOCK_INGEST_PIN_TIMEOUT_S must be a positive number of seconds",
        ),
        (
            {"TICKSTOCK_INGEST_PARTITION_ACK_WAIT_S": "inf"},
            "TICKSTOCK_INGEST_PARTITION_ACK_WAIT_S must be a positive number of seconds",
        ),
    ],
)
def test_bad_partition_and_replica_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
