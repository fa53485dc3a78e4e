"""The abuse campaign, run once for the whole ``tests/abuse`` package (every test here judges its
figures), on a database cloned from the reference template and fresh JetStream streams."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.abuse.attacks_auth import ATTACKS as AUTH_ATTACKS
from tests.abuse.attacks_http import ATTACKS as HTTP_ATTACKS
from tests.abuse.attacks_nats import ATTACKS as NATS_ATTACKS
from tests.abuse.attacks_ws import ATTACKS as WS_ATTACKS
from tests.abuse.campaign import Campaign, run_campaign
from tests.conftest import Servers, _clone, _drop, _redis_db, delete_all_streams

ATTACKS = {**HTTP_ATTACKS, **NATS_ATTACKS, **WS_ATTACKS, **AUTH_ATTACKS}
# ABUSE_ONLY=name,name runs only those attacks (ABUSE_ONLY= with nothing: the valid flow alone, a baseline).
_ONLY = os.environ.get("ABUSE_ONLY")
if _ONLY is not None:
    ATTACKS = {name: attack for name, attack in ATTACKS.items() if name in _ONLY.split(",")}


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def campaign(
    servers: Servers,
    template_ref: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Campaign]:
    name, url = _clone(servers, template_ref, "abuse")
    redis_url = f"{servers.redis_url.rsplit('/', 1)[0]}/{next(_redis_db)}"
    import redis as sync_redis

    with sync_redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    await delete_all_streams(servers.nats_url)
    try:
        result = await run_campaign(
            ATTACKS,
            database_url=url,
            nats_url=servers.nats_url,
            redis_url=redis_url,
            folder=tmp_path_factory.mktemp("abuse"),
        )
        _report(request.config, result.summary())
        yield result
    finally:
        _drop(servers, name)


def _report(config: pytest.Config, text: str) -> None:
    """Write ``text`` to the terminal now. The campaign runs in a fixture's set-up, where pytest captures
    output (and shows it only for a failing test), so capture is suspended for these lines."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        for line in text.splitlines():
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)


def failure_of(campaign: Campaign, name: str) -> None:
    """Fail with the attack's own assertion text when it did not hold."""
    failure = campaign.failures[name]
    if failure:
        pytest.fail(failure, pytrace=False)
