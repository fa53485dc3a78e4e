"""The `tickstock` command, run the way a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import main
from tests.support import alive, free_port, lines_until

COMMANDS = ["run", "serve", "migrate", "load-reference-data"]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
    env["TICKSTOCK_WORKERS"] = "1"  # `run` and `serve` as one process unless a test says otherwise
    env.update(values)
    return env


def _tickstock(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("TICKSTOCK_"):
            monkeypatch.delenv(key)
    return


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tickstock")
    if command in ("run", "serve"):
        assert "--host" in out and "--port" in out


def test_serve_without_urls_says_which_are_missing(
    clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "TICKSTOCK_NATS_URL, TICKSTOCK_DATABASE_URL, TICKSTOCK_REDIS_URL" in err[0]


def test_bad_setting_is_a_usage_error(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_POOL_MAX_SIZE", "many")
    assert main(["migrate"]) == 2
    assert "TICKSTOCK_POOL_MAX_SIZE='many'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("TICKSTOCK_DATABASE_URL", "cannot connect to PostgreSQL"),
        ("TICKSTOCK_NATS_URL", "cannot connect to NATS"),
        ("TICKSTOCK_REDIS_URL", "cannot connect to Redis"),
    ],
)
@pytest.mark.slow
def test_serve_with_a_wrong_url_fails_fast_in_one_line(
    servers, database_url: str, broken: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    closed = free_port()
    urls = {
        "TICKSTOCK_DATABASE_URL": database_url,
        "TICKSTOCK_NATS_URL": servers.nats_url,
        "TICKSTOCK_REDIS_URL": servers.redis_url,
    }
    scheme = urls[broken].split("://")[0]
    urls[broken] = (
        f"{scheme}://127.0.0.1:{closed}/x"
        if scheme != "postgresql"
        else f"postgresql://postgres@127.0.0.1:{closed}/x"
    )
    # The subprocess timeout is the deadline: a serve that hangs on the wrong URL fails the test.
    result = _tickstock("serve", "--port", str(free_port()), env=_env(**urls), timeout=30)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("tickstock:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_and_load_reference_data_with_a_url(
    database_url: str, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_DATABASE_URL", database_url)
    assert main(["migrate"]) == 0
    assert "migrations: up to date" in capsys.readouterr().err
    assert main(["load-reference-data"]) == 0
    err = capsys.readouterr().err
    assert "reference data:" in err and "symbols" in err and "sectors" in err


@pytest.mark.slow
def test_migrate_without_a_url_uses_the_embedded_cluster(tmp_path: Path) -> None:
    result = _tickstock("migrate", "--data-dir", str(tmp_path), env=_env())
    assert result.returncode == 0, result.stderr
    assert "starting postgres (embedded" in result.stderr
    assert "migrations: 4 applied" in result.stderr or "applied" in result.stderr
    assert "embedded servers stopped" in result.stderr
    again = _tickstock("migrate", "--data-dir", str(tmp_path), env=_env())
    assert "migrations: up to date" in again.stderr


def _pids(data_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in data_dir.glob("*/*.pid")}


_alive = alive


def _processes_under(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_run_serves_until_ctrl_c_and_leaves_nothing_behind(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "run", "--port", str(port), "--data-dir", str(tmp_path)],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        output = "".join(lines_until(proc.stderr, "serving on", timeout=90))
        for name in ("nats", "postgres", "redis"):
            assert f"{name} ready on 127.0.0.1:" in output
        assert "reference data:" in output
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ok"
        pids = _pids(tmp_path)
        assert set(pids) == {"nats", "postgres", "redis"}
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest
    assert "embedded servers stopped" in rest
    assert not any(_alive(pid) for pid in pids.values())
    assert _processes_under(tmp_path) == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # the HTTP port is free again


@pytest.mark.slow
def test_run_on_a_busy_port_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _tickstock(
            "run", "--port", str(port), "--data-dir", str(tmp_path), "--skip-reference-data", env=_env()
        )
    assert result.returncode == 1
    assert f"tickstock: error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert _processes_under(tmp_path) == []
