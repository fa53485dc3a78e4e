"""Start the baseline servers of ``ops/bench`` and drive their publishers; measure their processes.

Each context manager yields a :class:`Server`: where the load client connects (``ws_url``, ``mode``),
the process whose CPU and RSS count as "the server" (``pid``, with its descendants), helper processes
reported apart (``extra_pids``: Redis for Flask-SocketIO) and ``publish(count, rate, start)``, which
blocks until the last message is out. Servers run in their own process group and are stopped
(SIGTERM, then SIGKILL) on exit, whatever happened.

- ``starlette_server()``: ops/baselines/starlette_broadcast.py in this interpreter;
- ``node_server()``: ops/baselines/socketio-node, ``npm ci`` into that folder first when needed;
- ``flask_server(redis_url)``: ops/baselines/flask_socketio in its own virtualenv
  (``ops/results/venvs/flask-socketio``, made from ``requirements.txt`` when missing or stale).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
OPS = HERE.parent
RESULTS = OPS / "results"
NODE_DIR = HERE / "socketio-node"
FLASK_DIR = HERE / "flask_socketio"
FLASK_VENV = RESULTS / "venvs" / "flask-socketio"
READY_TIMEOUT_S = 60.0

__all__ = [
    "Server",
    "flask_server",
    "free_port",
    "node_server",
    "proc_cpu_s",
    "proc_rss",
    "starlette_server",
    "stop_group",
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``, its live descendants and the children it reaped."""
    total = 0.0
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def proc_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its live descendants."""
    total = 0
    for proc in _tree(pid):
        with suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def stop_group(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``timeout_s``."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Server:
    name: str
    mode: str
    ws_url: str
    http_url: str
    pid: int
    publish: Callable[[int, float, int], float]
    extra_pids: dict[str, int] = field(default_factory=dict)


def _spawn(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _wait_health(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {READY_TIMEOUT_S} s")


def _http_publisher(base: str) -> Callable[[int, float, int], float]:
    """Publish through the server's own ``POST /publish`` and wait until it reports done."""

    def publish(count: int, rate: float, start: int) -> float:
        started = time.monotonic()
        httpx.post(
            f"{base}/publish", params={"count": count, "rate": rate, "start": start}, timeout=10
        ).raise_for_status()
        time.sleep(max(0.0, count / rate - 0.5))
        while httpx.get(f"{base}/health", timeout=30).json()["publishing"]:
            time.sleep(0.05)
        return time.monotonic() - started

    return publish


@contextmanager
def starlette_server() -> Iterator[Server]:
    port = free_port()
    proc = _spawn([sys.executable, str(HERE / "starlette_broadcast.py"), "--port", str(port)], cwd=OPS)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_health(proc, f"{base}/health", "starlette baseline")
        yield Server("starlette", "plain", f"ws://127.0.0.1:{port}/ws", base, proc.pid, _http_publisher(base))
    finally:
        stop_group(proc)


def ensure_node_modules() -> None:
    """``npm ci`` into ops/baselines/socketio-node unless its node_modules matches package-lock.json."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the Socket.IO baseline")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".tickstock-lock-sha256"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print("  npm ci (socket.io baseline) ...", flush=True)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.write_text(digest)


@contextmanager
def node_server() -> Iterator[Server]:
    ensure_node_modules()
    port = free_port()
    proc = _spawn(["node", "--expose-gc", "server.js", "--port", str(port)], cwd=NODE_DIR)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_health(proc, f"{base}/health", "socket.io baseline")
        yield Server(
            "node",
            "socketio",
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            base,
            proc.pid,
            _http_publisher(base),
        )
    finally:
        stop_group(proc)


def ensure_flask_venv() -> Path:
    """The Flask-SocketIO baseline's own virtualenv; rebuilt when requirements.txt changes."""
    requirements = FLASK_DIR / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    python = FLASK_VENV / "bin" / "python"
    stamp = FLASK_VENV / ".tickstock-requirements-sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"  creating {FLASK_VENV.relative_to(OPS.parent)} (flask-socketio baseline) ...", flush=True)
    if FLASK_VENV.exists():
        shutil.rmtree(FLASK_VENV)
    FLASK_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(FLASK_VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        check=True,
    )
    stamp.write_text(digest)
    return python


@contextmanager
def flask_server(redis_url: str, *, redis_pid: int | None = None) -> Iterator[Server]:
    python = ensure_flask_venv()
    port = free_port()
    proc = _spawn([str(python), "server.py", "--port", str(port), "--redis", redis_url], cwd=FLASK_DIR)

    def publish(count: int, rate: float, start: int) -> float:
        started = time.monotonic()
        subprocess.run(
            [
                str(python),
                "publisher.py",
                "--redis",
                redis_url,
                "--count",
                str(count),
                "--rate",
                str(rate),
                "--start",
                str(start),
            ],
            cwd=FLASK_DIR,
            check=True,
            timeout=count / rate + 120,
        )
        return time.monotonic() - started

    try:
        base = f"http://127.0.0.1:{port}"
        _wait_health(proc, f"{base}/health", "flask-socketio baseline")
        yield Server(
            "flask",
            "socketio",
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            base,
            proc.pid,
            publish,
            extra_pids={"redis": redis_pid} if redis_pid else {},
        )
    finally:
        stop_group(proc)
