from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import Settings, SettingsError


def test_defaults_mean_everything_embedded() -> None:
    s = Settings.from_env({})
    assert s.embedded == ("nats", "postgres", "redis")
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8000, Path(".tickstock"))


def test_reads_prefixed_variables_and_types() -> None:
    s = Settings.from_env({
        "TICKSTOCK_DATABASE_URL": "postgresql://x@127.0.0.1/db",
        "TICKSTOCK_NATS_URL": "nats://127.0.0.1:4222",
        "TICKSTOCK_POOL_MAX_SIZE": "20",
        "TICKSTOCK_POOL_TIMEOUT_S": "2.5",
        "TICKSTOCK_DATA_DIR": "/tmp/x",
        "TICKSTOCK_JWT_SECRET": "dev",
        "TICKSTOCK_REDIS_URL": "",
        "UNRELATED": "1",
    })
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
