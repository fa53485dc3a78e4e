"""Start the baseline servers of ``ops/bench`` and drive their publishers; measure their processes.

Each context manager yields a :class:`Server`: where the load client connects (``ws_url``, ``mode``),
the process whose CPU and RSS count as "the server" (``pid``, with its descendants: a hub's supervisor
and its workers), helper processes reported apart (``extra_pids``: Redis for Flask-SocketIO) and
``publish(count, rate, start)``, which blocks until the last message is out.

Memory of a server of several processes: ``proc_rss`` sums their RSS (a page they share, as the
interpreter's and the libraries' code, counts once per process); ``proc_memory`` adds their PSS (a
shared page split between its sharers: the sum counts it once), which costs a few milliseconds per
process (``/proc/<pid>/smaps_rollup``); :class:`RssSampler` samples both while a run goes. Servers run in their own process group and are stopped
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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from hub.embedded import free_port  # ports to listen on, drawn below the ephemeral range

HERE = Path(__file__).resolve().parent
OPS = HERE.parent
RESULTS = OPS / "results"
NODE_DIR = HERE / "socketio-node"
FLASK_DIR = HERE / "flask_socketio"
FLASK_VENV = RESULTS / "venvs" / "flask-socketio"
READY_TIMEOUT_S = 60.0
PUBLISH_MARGIN_S = 300.0  # an HTTP publisher may run this long past count / rate before it is given up

__all__ = [
    "RssSampler",
    "Server",
    "flask_server",
    "free_port",
    "node_server",
    "proc_connections",
    "proc_cpu_s",
    "proc_memory",
    "proc_rss",
    "starlette_server",
    "stop_group",
]


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
    """Resident bytes of ``pid`` and its live descendants, summed (shared pages count in each)."""
    total = 0
    for proc in _tree(pid):
        with suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def proc_memory(pid: int, *, pss: bool = True) -> dict[str, Any]:
    """``pid`` and its live descendants: summed RSS and (``pss``) summed PSS in bytes (None where the
    kernel does not say), how many processes, and each one's RSS by pid."""
    rss = 0
    pss_total: int | None = 0 if pss else None
    each: dict[int, int] = {}
    for proc in _tree(pid):
        try:
            info = proc.memory_info()
            rss += info.rss
            each[proc.pid] = info.rss
            if pss_total is not None:
                pss_total += proc.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
        except (psutil.AccessDenied, AttributeError):
            pss_total = None
    return {"rss": rss, "pss": pss_total, "processes": len(each), "rss_by_pid": each}


def proc_connections(pid: int, port: int) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by ``pid`` and each of its descendants."""
    found: dict[int, int] = {}
    for proc in _tree(pid):
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[proc.pid] = sum(
            1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
    return found


class RssSampler(threading.Thread):
    """Samples the summed RSS of ``pid``'s process tree every ``interval_s`` and its summed PSS every
    ``pss_every`` samples, in a thread, until :meth:`stop`; keeps the maxima. The tree is listed
    again with each PSS sample (listing scans /proc: too dear for every sample), so a worker that
    a supervisor restarts is followed."""

    def __init__(self, pid: int, *, interval_s: float = 0.5, pss_every: int = 4) -> None:
        super().__init__(daemon=True, name=f"rss-sampler-{pid}")
        self.pid = pid
        self.interval_s = interval_s
        self.pss_every = pss_every
        self.rss_max = 0
        self.pss_max: int | None = None
        self.processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        tree: list[psutil.Process] = []
        while True:
            if self.samples % self.pss_every == 0:
                tree = _tree(self.pid)
                memory = proc_memory(self.pid)
                self.rss_max = max(self.rss_max, memory["rss"])
                if memory["pss"] is not None:
                    self.pss_max = max(self.pss_max or 0, memory["pss"])
                self.processes = max(self.processes, memory["processes"])
            else:
                rss = 0
                for proc in tree:
                    with suppress(psutil.NoSuchProcess):
                        rss += proc.memory_info().rss
                self.rss_max = max(self.rss_max, rss)
            self.samples += 1
            if self._stop_event.wait(self.interval_s):
                return

    def stop(self) -> dict[str, Any]:
        """Stop sampling (one last sample first); the maxima in MB."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        last = proc_memory(self.pid, pss=False)
        self.rss_max = max(self.rss_max, last["rss"])
        return {
            "rss_max_mb": round(self.rss_max / 2**20, 1),
            "pss_max_mb": round(self.pss_max / 2**20, 1) if self.pss_max is not None else None,
            "rss_processes": self.processes,
            "rss_samples": self.samples,
        }


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
    workers: int = 1  # serving processes (the hub's --workers); baselines: 1


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
    """Publish through the server's own ``POST /publish`` and wait until it reports done.

    A server behind its schedule may not answer ``/health`` until it has sent everything: the bare
    Starlette loop's publisher never yields to the event loop while each ``send_text`` completes
    without waiting (one message to 5,000 clients outlasting its 50 ms slot, the next is due at
    once), so a poll that times out means "still publishing", up to the run's length plus
    :data:`PUBLISH_MARGIN_S`."""

    def publish(count: int, rate: float, start: int) -> float:
        started = time.monotonic()
        httpx.post(
            f"{base}/publish", params={"count": count, "rate": rate, "start": start}, timeout=10
        ).raise_for_status()
        time.sleep(max(0.0, count / rate - 0.5))
        deadline = started + count / rate + PUBLISH_MARGIN_S
        while True:
            try:
                if not httpx.get(f"{base}/health", timeout=30).json()["publishing"]:
                    break
            except httpx.TimeoutException:
                if time.monotonic() > deadline:
                    raise
                continue
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
