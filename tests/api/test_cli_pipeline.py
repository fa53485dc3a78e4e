"""The pipeline subcommands of `tickstock`: token, dlq, demo-feed and bridge-redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from api.auth import Authenticator, AuthError
from api.cli import main
from api.settings import Settings
from hub.bridge import DEFAULT_CHANNEL
from hub.jetstream import ensure_topology
from store.deadletters import get_dead_letter, mark_replayed, record_dead_letter
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, free_port, make_event, wait_for, within

SUBCOMMANDS = [
    ["token"],
    ["demo-feed"],
    ["bridge-redis"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "show"],
    ["dlq", "replay"],
    ["dlq", "purge"],
    ["patterns"],
    ["patterns", "define"],
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No TICKSTOCK_* variable but a data folder of the test's own (should a server be started)."""
    for key in list(os.environ):
        if key.startswith("TICKSTOCK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TICKSTOCK_DATA_DIR", str(tmp_path / "data"))
    return


@pytest.fixture
def hub_env(clean_env: None, live_hub: LiveHub, monkeypatch: pytest.MonkeyPatch) -> LiveHub:
    """The live hub's database and NATS for the command."""
    monkeypatch.setenv("TICKSTOCK_DATABASE_URL", live_hub.settings.database_url or "")
    monkeypatch.setenv("TICKSTOCK_NATS_URL", live_hub.settings.nats_url or "")
    return live_hub


async def tickstock(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    """``main(args)`` in a worker thread (it runs its own event loop), while this loop keeps the live
    hub going; returns the status, stdout and the ``tickstock:`` lines of stderr."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return status, captured.out, [line for line in captured.err.splitlines() if line.startswith("tickstock:")]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_pipeline_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tickstock {' '.join(command)}")


# -- token ------------------------------------------------------------------------------------------


async def test_token_mints_what_the_hub_accepts(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_JWT_SECRET", JWT_SECRET)
    status, out, err = await tickstock(
        capsys, "token", "--sub", "alice", "--scope", "patterns:read", "--scope", "admin", "--ttl", "60"
    )
    assert status == 0 and err == []
    [token] = out.splitlines()
    principal = await Authenticator(Settings(jwt_secret=JWT_SECRET)).verify(token)
    assert principal.subject == "alice"
    assert principal.scopes == frozenset({"patterns:read", "admin"})
    assert 55 <= principal.expires_at - time.time() <= 61
    with pytest.raises(AuthError):
        await Authenticator(Settings(jwt_secret=JWT_SECRET[::-1])).verify(token)


async def test_token_defaults_and_issuer_from_the_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("TICKSTOCK_JWT_ISSUER", "other-hub")
    status, out, _ = await tickstock(capsys, "token")
    assert status == 0
    token = out.strip()
    principal = await Authenticator(Settings(jwt_secret=JWT_SECRET, jwt_issuer="other-hub")).verify(token)
    assert principal.subject == "demo-user"
    assert principal.scopes == frozenset({"patterns:read"})
    assert 3590 <= principal.expires_at - time.time() <= 3601
    with pytest.raises(AuthError):
        await Authenticator(Settings(jwt_secret=JWT_SECRET)).verify(token)  # the default issuer


async def test_token_with_an_unknown_scope_fails_in_one_line(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_JWT_SECRET", JWT_SECRET)
    status, out, err = await tickstock(
        capsys, "token", "--scope", "patterns:read", "--scope", "root", "--scope", "everything"
    )
    assert status == 1 and out == ""
    assert err == [
        "tickstock: error: unknown scope(s) everything, root; "
        "known: patterns:read, patterns:write, universe:write, admin"
    ]


async def test_token_without_any_secret_says_what_to_set(
    clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await tickstock(capsys, "token", "--data-dir", str(tmp_path / "empty"))
    assert status == 1 and out == ""
    assert len(err) == 1 and "set TICKSTOCK_JWT_SECRET" in err[0]
    assert not (tmp_path / "empty").exists()  # asking for a token creates nothing


async def test_token_uses_the_secret_in_the_data_folder(
    clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "data-folder-secret-" + "s" * 40
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "jwt-secret").write_text(secret + "\n")
    status, out, _ = await tickstock(
        capsys, "token", "--data-dir", str(tmp_path / "d"), "--scope", "patterns:write"
    )
    assert status == 0
    principal = await Authenticator(Settings(jwt_secret=secret)).verify(out.strip())
    assert principal.scopes == frozenset({"patterns:write"})


# -- dlq --------------------------------------------------------------------------------------------

BAD = make_event(1, prefix="cli-dlq", symbol="KO", confidence=85)  # a 0-100 confidence: rejected


async def _clear(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM dead_letters")


async def _seed(
    pool: AsyncConnectionPool,
    key: str,
    *,
    reason: str = "not_json",
    payload: bytes = b"{nope",
    replayed: bool = False,
) -> int:
    async with pool.connection() as conn:
        dead_letter_id = await record_dead_letter(
            conn,
            source_key=key,
            subject="tickstock.ingest.daily.KO",
            payload=payload,
            headers={"Nats-Msg-Id": key, "X-Producer": "tests"},
            reason=reason,
            detail=f"detail of {key}",
        )
        if replayed:
            await mark_replayed(conn, dead_letter_id)
    return dead_letter_id


async def _remaining(pool: AsyncConnectionPool) -> list[int]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id FROM dead_letters ORDER BY id")
        return [r["id"] for r in await cur.fetchall()]


async def test_dlq_list_and_show(
    hub_env: LiveHub, ref_pool: AsyncConnectionPool, capsys: pytest.CaptureFixture[str]
) -> None:
    await _clear(ref_pool)
    a = await _seed(ref_pool, "cli:a")
    b = await _seed(ref_pool, "cli:b", reason="too_large", payload=b"x" * 300)
    c = await _seed(ref_pool, "cli:c", replayed=True)
    status, out, err = await tickstock(capsys, "dlq", "list")
    assert status == 0 and err == ["tickstock: 3 dead letter(s)"]
    lines = out.splitlines()
    assert [int(line.split()[0]) for line in lines] == [c, b, a]
    assert all(part in lines[1] for part in ("too_large", "tickstock.ingest.daily.KO", "detail of cli:b"))
    assert "replayed" in lines[0] and "replayed" not in lines[1]
    status, out, err = await tickstock(capsys, "dlq", "list", "--reason", "not_json", "--limit", "1")
    assert status == 0 and err == ["tickstock: 1 dead letter(s)"]
    assert [int(line.split()[0]) for line in out.splitlines()] == [c]
    status, out, err = await tickstock(capsys, "dlq", "list", "--reason", "nothing_like_it")
    assert (status, out, err) == (0, "", ["tickstock: 0 dead letter(s)"])

    status, out, _ = await tickstock(capsys, "dlq", "show", str(b))
    assert status == 0
    shown = json.loads(out)
    assert shown["id"] == b and shown["reason"] == "too_large"
    assert shown["payload_preview"] == "x" * 300 and shown["payload_truncated"] is False  # shown whole
    assert shown["headers"] == {"Nats-Msg-Id": "cli:b", "X-Producer": "tests"}
    assert shown["replayed_at"] is None

    status, out, err = await tickstock(capsys, "dlq", "show", "999999")
    assert (status, out, err) == (1, "", ["tickstock: error: no dead letter 999999"])


async def test_dlq_replay_with_a_corrected_payload_is_stored(
    hub_env: LiveHub, ref_pool: AsyncConnectionPool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _clear(ref_pool)
    js = hub_env.hub.js
    await js.publish(
        "tickstock.ingest.daily.KO", json.dumps(BAD).encode(), headers={"Nats-Msg-Id": "cli-dlq-bad"}
    )

    async def recorded() -> int | None:
        async with ref_pool.connection() as conn:
            row = await (
                await conn.execute("SELECT id FROM dead_letters WHERE event_id = %s", (BAD["id"],))
            ).fetchone()
        return row["id"] if row else None

    dead_letter_id = await wait_for(recorded, timeout=20, what="the bad event dead-lettered")

    # As it is, it would be rejected again: nothing is published, the reason is given.
    status, _, err = await tickstock(capsys, "dlq", "replay", str(dead_letter_id))
    assert status == 1 and len(err) == 1
    assert "would be rejected again: confidence_out_of_range" in err[0]
    status, _, err = await tickstock(capsys, "dlq", "replay", "999999")
    assert status == 1 and err == ["tickstock: error: no dead letter 999999"]

    corrected = tmp_path / "corrected.json"
    corrected.write_text(json.dumps({**BAD, "confidence": 0.85}))
    status, _, err = await tickstock(
        capsys, "dlq", "replay", str(dead_letter_id), "--payload", str(corrected)
    )
    assert status == 0
    assert err[-1].startswith(
        f"tickstock: replayed dead letter {dead_letter_id} as event cli-dlq-1 to "
        "tickstock.ingest.daily.KO (ingest seq "
    )

    async def stored() -> dict[str, Any] | None:
        async with ref_pool.connection() as conn:
            cur = await conn.execute("SELECT confidence FROM pattern_events WHERE id = 'cli-dlq-1'")
            return await cur.fetchone()

    row = await wait_for(stored, timeout=20, what="the corrected event stored")
    assert row["confidence"] == pytest.approx(0.85)
    async with ref_pool.connection() as conn:
        letter = await get_dead_letter(conn, dead_letter_id)
    assert letter is not None and letter.replay_count == 1 and letter.replayed_at is not None
    status, out, _ = await tickstock(capsys, "dlq", "list")
    assert "replayed" in out


async def test_dlq_purge(
    hub_env: LiveHub, ref_pool: AsyncConnectionPool, capsys: pytest.CaptureFixture[str]
) -> None:
    await _clear(ref_pool)
    ids = [
        await _seed(ref_pool, f"cli:p{i}", reason=("not_json", "unknown_pattern")[i % 2], replayed=i >= 6)
        for i in range(9)
    ]
    status, out, err = await tickstock(capsys, "dlq", "purge")
    assert (status, out) == (1, "")
    assert err == ["tickstock: error: purge needs --id, --reason, --replayed or --all"]
    assert await _remaining(ref_pool) == ids

    status, _, err = await tickstock(capsys, "dlq", "purge", "--id", str(ids[0]), "--id", str(ids[1]))
    assert (status, err) == (0, ["tickstock: purged 2 dead letter(s)"])
    status, _, err = await tickstock(capsys, "dlq", "purge", "--replayed")
    assert (status, err) == (0, ["tickstock: purged 3 dead letter(s)"])  # 6, 7, 8
    status, _, err = await tickstock(capsys, "dlq", "purge", "--reason", "unknown_pattern")
    assert (status, err) == (0, ["tickstock: purged 2 dead letter(s)"])  # 3, 5
    assert await _remaining(ref_pool) == [ids[2], ids[4]]
    status, _, err = await tickstock(capsys, "dlq", "purge", "--all")
    assert (status, err) == (0, ["tickstock: purged 2 dead letter(s)"])
    assert await _remaining(ref_pool) == []


async def test_dlq_with_an_unreachable_database_fails_in_one_line(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("TICKSTOCK_CONNECT_TIMEOUT_S", "2")
    status, out, err = await tickstock(capsys, "dlq", "list")
    assert (status, out) == (1, "")
    assert len(err) == 1 and "cannot connect to PostgreSQL" in err[0]


# -- demo-feed and bridge-redis ---------------------------------------------------------------------


@pytest.mark.slow
async def test_demo_feed_publishes_to_ingest(hub_env: LiveHub, capsys: pytest.CaptureFixture[str]) -> None:
    await ensure_topology(hub_env.hub.js)  # idempotent: the ingest stream is there
    before = (await hub_env.hub.js.stream_info("TICKSTOCK_INGEST")).state.last_seq
    async with within(60, what="a two-second demo feed"):
        status, _, err = await tickstock(capsys, "demo-feed", "--rate", "50", "--duration", "2", "--once")
    assert status == 0
    assert err[-1].startswith("tickstock: demo feed: ") and err[-1].endswith(" events published")
    published = int(err[-1].split()[3])
    assert published > 0
    after = (await hub_env.hub.js.stream_info("TICKSTOCK_INGEST")).state.last_seq
    assert after - before >= published


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "rate must be a positive number"),
        (["--duration", "-1"], "duration_s must be a non-negative number"),
    ],
)
async def test_demo_feed_refuses_bad_numbers_in_one_line(
    hub_env: LiveHub, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, _, err = await tickstock(capsys, "demo-feed", *args)
    assert status == 1
    assert len(err) == 1 and message in err[0]


async def test_bridge_redis_for_a_second(
    hub_env: LiveHub, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_REDIS_URL", redis_url)
    started = time.monotonic()
    async with within(60, what="a one-second bridge"):
        status, _, err = await tickstock(capsys, "bridge-redis", "--duration", "1")
    assert status == 0
    assert time.monotonic() - started >= 1  # hygiene: ok - a lower bound: a busy machine only lengthens it
    assert err[-1] == "tickstock: bridge: 0 messages forwarded"


async def test_bridge_redis_with_an_unreachable_redis_fails_in_one_line(
    hub_env: LiveHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    status, _, err = await tickstock(capsys, "bridge-redis", "--duration", "1")
    assert status == 1
    assert len(err) == 1 and "cannot connect to Redis" in err[0]


@contextlib.asynccontextmanager
async def bridge_process(
    live_hub: LiveHub, redis_url: str
) -> AsyncIterator[tuple[subprocess.Popen[str], aioredis.Redis]]:
    """``tickstock bridge-redis`` as a process, yielded once it has subscribed; killed if still running
    on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
    env.update(TICKSTOCK_NATS_URL=live_hub.settings.nats_url or "", TICKSTOCK_REDIS_URL=redis_url)
    redis = aioredis.Redis.from_url(redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "bridge-redis"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def subscribed() -> bool:
            assert proc.poll() is None, "bridge-redis exited early"
            [(_, n)] = await redis.pubsub_numsub(DEFAULT_CHANNEL)
            return n == 1

        await wait_for(subscribed, timeout=30, what="the bridge subscribed")
        yield proc, redis
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        await redis.aclose()


def _stopped_cleanly(proc: subprocess.Popen[str], err: str) -> None:
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("tickstock:")] == ["tickstock: stopped"]


async def test_bridge_redis_process_forwards_until_interrupted(
    live_hub: LiveHub, redis_url: str, ref_pool: AsyncConnectionPool
) -> None:
    async with bridge_process(live_hub, redis_url) as (proc, redis):
        event = make_event(1, prefix="cli-bridge", symbol="TSLA")
        assert await redis.publish(DEFAULT_CHANNEL, json.dumps(event)) == 1

        async def stored() -> bool:
            async with ref_pool.connection() as conn:
                cur = await conn.execute("SELECT 1 FROM pattern_events WHERE id = 'cli-bridge-1'")
                return await cur.fetchone() is not None

        await wait_for(stored, timeout=20, what="the bridged event stored")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    _stopped_cleanly(proc, err)


@pytest.mark.slow
async def test_sigterm_stops_a_long_running_command_cleanly(live_hub: LiveHub, redis_url: str) -> None:
    async with bridge_process(live_hub, redis_url) as (proc, redis):
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
        _stopped_cleanly(proc, err)

        async def unsubscribed() -> bool:
            [(_, listeners)] = await redis.pubsub_numsub(DEFAULT_CHANNEL)
            return listeners == 0

        await wait_for(unsubscribed, timeout=5, what="the subscription gone")
