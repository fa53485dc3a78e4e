"""The supervisor's contract with real worker processes (tiny spawn targets, no hub): start, failure at
start, restart with back-off, rolling restart, stop and kill."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from api.cli import supervisor as supervision
from api.cli.supervisor import Supervisor, WorkerFailed
from tests.support import wait_for


def _serve(kind: str, index: int, conn: Connection) -> None:
    """A worker: ``ready`` serves until SIGTERM (exit 0); ``fail`` says why and exits 1; ``crash`` exits
    3 once ready; ``stubborn`` is ready and ignores SIGTERM; ``mute`` never says ready."""
    supervision.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if kind == "fail":
        conn.send(("failed", f"worker {index} cannot connect"))
        raise SystemExit(1)
    if kind == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if kind != "mute":
        conn.send(("ready", os.getpid()))
    if kind == "crash":
        time.sleep(0.2)
        raise SystemExit(3)
    threading.Event().wait()  # until a signal ends the process


def _supervisor(tmp_path: Path, kinds: list[str], *, workers: int = 2, grace_s: float = 5) -> Supervisor:
    """``kinds`` per start, in order (the last one repeats)."""
    starts: list[str] = list(kinds)

    def args(index: int) -> tuple[object, ...]:
        kind = starts.pop(0) if len(starts) > 1 else starts[0]
        return (kind, index)

    return Supervisor(workers=workers, target=_serve, args=args, metrics_dir=tmp_path / "m", grace_s=grace_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_worker_that_fails_at_start_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["ready", "fail"])
    with pytest.raises(WorkerFailed, match="worker 1 did not start: worker 1 cannot connect"):
        await sup.run()
    assert not sup._alive  # the other one was stopped too


async def test_one_that_exits_without_a_word_fails_with_its_status(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["crash"], workers=1)
    sup._args = lambda index: ("mute", index)
    task = asyncio.create_task(sup.run())
    await wait_for(lambda: sup._alive, what="the worker")
    os.kill(next(iter(sup._alive)).pid, signal.SIGKILL)
    with pytest.raises(WorkerFailed, match="worker 0 did not start: signal SIGKILL"):
        await task


async def test_a_crashing_worker_is_restarted_with_a_growing_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "RESTART_MIN_S", 0.05)
    sup = _supervisor(tmp_path, ["ready", "ready", "crash"])
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    os.kill(sup.pids[1], signal.SIGKILL)
    await wait_for(lambda: sup.restarts >= 3, timeout=30, what="restarts")
    assert sup._failures[1] >= 3  # each quick death doubles the next wait
    sup.stop()
    await task
    assert not sup._alive


async def test_a_rolling_restart_replaces_every_worker_one_at_a_time(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["ready"])
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    before = sup.pids
    rolling = sup.roll()
    assert rolling is not None and sup.roll() is None  # one at a time
    await rolling
    after = sup.pids
    assert sorted(after) == [0, 1] and not set(after.values()) & set(before.values())
    assert not any(_alive(pid) for pid in before.values())
    assert sup.restarts == 0  # replaced, not restarted
    sup.stop()
    await task


@pytest.mark.slow
async def test_a_replacement_that_is_never_ready_stops_the_roll_and_the_old_one_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's start-up must fit, under coverage and on a loaded machine too (5 s did not, once, with
    # two test runs beside helpers' jobs); the mute replacement costs the test this long.
    monkeypatch.setattr(supervision, "READY_TIMEOUT_S", 20.0)
    sup = _supervisor(tmp_path, ["ready", "ready", "ready", "mute"])
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    before = sup.pids
    rolling = sup.roll()
    assert rolling is not None
    await rolling
    after = sup.pids
    assert after[0] != before[0] and sup._serving[0].ready.done()  # the primary was replaced
    assert after[1] == before[1] and _alive(before[1])  # its replacement never said ready
    sup.stop()
    await task


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "STOP_MARGIN_S", 0.0)
    sup = _supervisor(tmp_path, ["stubborn"], workers=1, grace_s=0.5)
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    pid = sup.pids[0]
    sup.stop()
    await task
    assert not _alive(pid)


async def test_signals_stop_then_kill(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["stubborn"], workers=1, grace_s=60)
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    pid = sup.pids[0]
    os.kill(os.getpid(), signal.SIGHUP)  # a rolling restart: the stubborn one does not leave ...
    await wait_for(lambda: sup._rolling is not None, what="the roll")
    os.kill(os.getpid(), signal.SIGTERM)  # ... stop: it does not either ...
    await wait_for(lambda: sup._stop.is_set(), what="the stop")
    assert not task.done() and _alive(pid)
    os.kill(os.getpid(), signal.SIGINT)  # ... a second signal kills it at once
    await asyncio.wait_for(task, 30)
    assert not _alive(pid)


async def test_a_stop_during_the_start_stops_the_starting_workers(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, ["mute"], workers=1)
    task = asyncio.create_task(sup.run())
    await wait_for(lambda: sup._alive, what="the worker")
    pid = next(iter(sup._alive)).pid
    sup.stop()
    await task  # no WorkerFailed: it was asked to stop
    assert not _alive(pid)


async def test_a_restart_still_waiting_is_called_off_by_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "RESTART_MIN_S", 60.0)
    sup = _supervisor(tmp_path, ["ready"], workers=1)
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    os.kill(sup.pids[0], signal.SIGKILL)
    await wait_for(lambda: sup._restarts, what="a restart waiting")
    sup.stop()
    await task
    assert sup.restarts == 0 and not sup._alive


async def test_a_new_primary_that_is_never_ready_stops_the_roll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervision, "READY_TIMEOUT_S", 1.0)
    sup = _supervisor(tmp_path, ["ready", "ready", "mute"])
    ready = asyncio.Event()
    task = asyncio.create_task(sup.run(ready=ready.set))
    await ready.wait()
    before = sup.pids
    rolling = sup.roll()
    assert rolling is not None
    await rolling
    assert sup.pids[1] == before[1]  # the roll stopped before the secondary
    sup.stop()
    await task
