"""The abuse campaign, run once for the whole ``tests/abuse`` package (every test here judges its
figures), on a database cloned from the reference template and fresh JetStream streams."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.abuse.attacks_auth import ATTACKS as AUTH_ATTACKS
from tests.abuse.attacks_http import ATTACKS as HTTP_ATTACKS
from tests.abuse.attacks_nats import ATTACKS as NATS_ATTACKS
from tests.abuse.attacks_ws import ATTACKS as WS_ATTACKS
from tests.abuse.campaign import Campaign, run_campaign
from tests.conftest import Servers, _clone, _drop, _redis_db, delete_all_streams
from tests.support import wait_for

ATTACKS = {**HTTP_ATTACKS, **NATS_ATTACKS, **WS_ATTACKS, **AUTH_ATTACKS}
# ABUSE_ONLY=name,name runs only those attacks (ABUSE_ONLY= with nothing: the valid flow alone, a baseline).
_ONLY = os.environ.get("ABUSE_ONLY")
if _ONLY is not None:
    ATTACKS = {name: attack for name, attack in ATTACKS.items() if name in _ONLY.split(",")}


# The campaign's invariants are timings (valid events' latency during the attacks against a baseline
# before them). Two test runs on one machine would each measure the other's attackers too: a campaign
# waits until no other run on this machine is in its own (any other test may run beside it).
MACHINE_LOCK = Path(tempfile.gettempdir()) / "tickstock-abuse-campaign.lock"
MACHINE_LOCK_WAIT_S = 180.0  # within the campaign budget (CAMPAIGN_BUDGET_S), which counts this wait


@contextlib.asynccontextmanager
async def one_campaign_per_machine(config: pytest.Config) -> AsyncIterator[None]:
    with open(MACHINE_LOCK, "a") as lock:
        started = time.monotonic()

        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        await wait_for(taken, timeout=MACHINE_LOCK_WAIT_S, interval=0.5, what="another run's abuse campaign")
        waited = time.monotonic() - started
        if waited > 1:
            _report(config, f"abuse: waited {waited:.0f} s for another run's campaign on this machine")
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
        async with one_campaign_per_machine(request.config):
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
