"""The TICKSTOCK_UPSTREAM_* and TICKSTOCK_BRIDGE_* settings."""

from __future__ import annotations

from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from api.settings import Settings, SettingsError
from hub.bridge import DEFAULT_CHANNELS
from hub.tiers import TimeframeTable


def test_defaults() -> None:
    settings = Settings()
    rules = settings.upstream_rules()
    assert rules.timeframes == TimeframeTable() and rules.timeframes.default is None
    assert rules.naive_zone == ZoneInfo("UTC") and rules.naive_zone.utcoffset(None) == UTC.utcoffset(None)
    assert settings.bridge_redis_url is None and settings.bridge_channel_list == DEFAULT_CHANNELS


def test_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TICKSTOCK_UPSTREAM_TIMEFRAMES": "test=daily,combo=",
            "TICKSTOCK_UPSTREAM_DEFAULT_TIMEFRAME": "hourly",
            "TICKSTOCK_UPSTREAM_NAIVE_TIMEZONE": "America/New_York",
            "TICKSTOCK_BRIDGE_REDIS_URL": "redis://127.0.0.1:6380/0",
            "TICKSTOCK_BRIDGE_CHANNELS": " one ,two,,",
        }
    )
    rules = settings.upstream_rules()
    assert (rules.timeframes.lookup("test"), rules.timeframes.lookup("combo")) == ("daily", None)
    assert rules.timeframes.default == "hourly" and rules.naive_zone == ZoneInfo("America/New_York")
    assert settings.bridge_channel_list == ("one", "two")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TICKSTOCK_UPSTREAM_TIMEFRAMES": "test=yearly"},
            "TICKSTOCK_UPSTREAM_TIMEFRAMES: 'test' maps to 'yearly'",
        ),
        ({"TICKSTOCK_UPSTREAM_TIMEFRAMES": "{nope"}, "TICKSTOCK_UPSTREAM_TIMEFRAMES: not a JSON object"),
        (
            {"TICKSTOCK_UPSTREAM_TIMEFRAMES": "default=yearly"},
            "TICKSTOCK_UPSTREAM_TIMEFRAMES: 'default' maps to",
        ),
        (
            {"TICKSTOCK_UPSTREAM_DEFAULT_TIMEFRAME": "1d"},
            "TICKSTOCK_UPSTREAM_DEFAULT_TIMEFRAME: '1d' is not one of",
        ),
        (
            {"TICKSTOCK_UPSTREAM_NAIVE_TIMEZONE": "Mars/Olympus"},
            "TICKSTOCK_UPSTREAM_NAIVE_TIMEZONE: no time zone",
        ),
        ({"TICKSTOCK_UPSTREAM_NAIVE_TIMEZONE": "../etc"}, "TICKSTOCK_UPSTREAM_NAIVE_TIMEZONE: no time zone"),
        ({"TICKSTOCK_BRIDGE_CHANNELS": " , "}, "TICKSTOCK_BRIDGE_CHANNELS must name at least one"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(env)
