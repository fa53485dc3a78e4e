"""The life of one embedded server process: start, wait until ready, stop, attach after a restart.

:class:`EmbeddedServer` is the base of the servers in :mod:`hub.embedded.servers`; a subclass says which
binary to run with which arguments and how to tell it is ready. Entering starts the process and waits
until it accepts connections; leaving stops it with its graceful signal, waits up to a deadline, then
kills it. The child is bound to the parent's life with ``PR_SET_PDEATHSIG``, so a ``kill -9`` of the hub
does not leave servers behind.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "DEFAULT_START_TIMEOUT_S",
    "DEFAULT_STOP_TIMEOUT_S",
    "EmbeddedError",
    "EmbeddedServer",
    "bind_conflict",
    "find_binary",
    "free_port",
    "port_open",
    "started",
]

log = logging.getLogger("tickstock.embedded")

DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


_LISTEN_PORTS_FROM = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_BIND_CONFLICT = "address already in use"
_handed_out: collections.deque[int] = collections.deque(maxlen=1024)  # free_port's latest answers


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out for outgoing connections (32768 on Linux by default)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago, for a server to listen on later.

    It is drawn below the kernel's ephemeral range: a port from that range can be taken in between by
    any outgoing connection's source port, or by a connection to itself (a member dialling a route
    port nobody listens on yet). None of the last 1,024 answers is given again (a cluster's ports are
    all drawn before its first member starts). Only when no port there is free does the OS pick one."""
    floor = _ephemeral_floor()
    draw = random.SystemRandom()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        for _ in range(64 if floor > _LISTEN_PORTS_FROM else 0):
            port = draw.randrange(_LISTEN_PORTS_FROM, floor)
            if port in _handed_out:  # given to a server of this process that may not listen yet
                continue
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _handed_out.append(port)
            return port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind_conflict(error: BaseException) -> bool:
    """True when a server failed to start because a port of its was taken (its log says so)."""
    return isinstance(error, EmbeddedError) and _BIND_CONFLICT in str(error).lower()


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port`` (waits at most 0.5 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def find_binary(name: str, candidates: list[Path]) -> Path:
    """The first executable of ``candidates``, else ``name`` on ``PATH``; raises :class:`EmbeddedError`."""
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise EmbeddedError(f"cannot find the {name!r} binary (looked in {', '.join(map(str, candidates))})")


@dataclass
class EmbeddedServer:
    """One server process. Subclasses say how to prepare, launch and probe it.

    ``start()`` waits up to ``start_timeout_s`` for the readiness probe and raises
    :class:`EmbeddedError` with the tail of the server's log if it does not come up.
    ``stop()`` sends the graceful signal, waits ``stop_timeout_s`` and kills what is left.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    name: str = field(default="server", init=False)
    process_name: str = field(default="", init=False)
    stop_signal: signal.Signals = field(default=signal.SIGTERM, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_file: IO[bytes] | None = field(default=None, init=False, repr=False)
    _attached_pid: int | None = field(default=None, init=False, repr=False)

    # -- what subclasses provide -------------------------------------------------------------------
    @property
    def url(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create on-disk state (idempotent)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def run_as(self) -> str | None:
        return None

    def environment(self) -> dict[str, str]:
        """Variables added to the server's environment (e.g. passwords its configuration reads)."""
        return {}

    def ready(self) -> bool:
        return port_open(self.host, self.port)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else self._attached_pid

    @property
    def attached(self) -> bool:
        """True when this object uses a server another process started (and will not stop it)."""
        return self._attached_pid is not None

    @property
    def running(self) -> bool:
        return (self._proc is not None and self._proc.poll() is None) or self._attached_pid is not None

    def start(self) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._attach_or_clean():
            return
        if self.port:
            self._launch()
            return
        for attempt in range(_PORT_ATTEMPTS):  # a port of our choosing: another one when it was taken
            self.port = free_port(self.host)
            try:
                self._launch()
                return
            except EmbeddedError as exc:
                self.port = 0
                if not bind_conflict(exc) or attempt == _PORT_ATTEMPTS - 1:
                    raise
                log.warning("%s: the port it was given was taken meanwhile; trying another", self.name)

    def _launch(self) -> None:
        self.prepare()
        command = self.command()
        started = time.monotonic()
        kwargs: dict[str, Any] = {}
        user = self.run_as()
        if user is not None:
            kwargs["user"] = user
        extra = self.environment()
        if extra:
            kwargs["env"] = {**os.environ, **extra}
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by this object, closed in stop()
        try:
            self._proc = subprocess.Popen(
                command,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                preexec_fn=_die_with_parent,
                # Own session: a Ctrl-C in the terminal reaches the hub only, which then stops the
                # servers in order after draining its own work.
                start_new_session=True,
                **kwargs,
            )
        except OSError as exc:
            self.stop()
            raise EmbeddedError(f"{self.name}: cannot execute {command[0]}: {exc.strerror}") from exc
        (self.data_dir / f"{self.name}.pid").write_text(str(self._proc.pid))
        (self.data_dir / f"{self.name}.port").write_text(str(self.port))
        deadline = started + self.start_timeout_s
        while not self.ready():
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                self._fail(f"exited with code {code} while starting")
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"not ready after {self.start_timeout_s:.0f} s")
            time.sleep(0.05)
        log.info(
            "%s ready on %s:%s (pid %s, %.2f s)",
            self.name,
            self.host,
            self.port,
            self._proc.pid,
            time.monotonic() - started,
        )

    def stop(self) -> None:
        if self._attached_pid is not None:
            self._attached_pid = None
            return
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, self.stop_timeout_s)
                proc.kill()
                proc.wait()
            log.info("%s stopped (pid %s)", self.name, proc.pid)
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / f"{self.name}.pid").unlink()
        (self.data_dir / f"{self.name}.port").unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """``kill -9`` the process (a crash, for drills); :meth:`start` brings it back on the same port."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
            log.info("%s killed (pid %s)", self.name, proc.pid)
        (self.data_dir / f"{self.name}.pid").unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _attach_or_clean(self) -> bool:
        """A server of ours already runs on this data folder (another ``tickstock`` process started it,
        e.g. ``tickstock dlq list`` while ``tickstock run`` serves): use it, and leave it running on
        exit. A leftover that does not answer is stopped. Returns True when attached."""
        pid_file, port_file = self.data_dir / f"{self.name}.pid", self.data_dir / f"{self.name}.port"
        try:
            pid = int(pid_file.read_text().strip())
            port = int(port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid_file.unlink(missing_ok=True)
            return False
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = ""
        if comm != self.process_name:
            pid_file.unlink(missing_ok=True)
            return False
        wanted, self.port = self.port, port
        if self.ready():
            self._attached_pid = pid
            log.info(
                "%s: using the server already running on %s:%s (pid %s)", self.name, self.host, port, pid
            )
            return True
        self.port = wanted
        log.warning(
            "%s: stopping a server left by an earlier run that does not answer (pid %s)", self.name, pid
        )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, self.stop_signal)
            for _ in range(int(self.stop_timeout_s * 20)):
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        return False

    def _fail(self, why: str) -> None:
        tail = ""
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(errors="replace")[-2000:]
        raise EmbeddedError(f"{self.name} {why}; log {self.log_path}:\n{tail}")

    # -- context managers --------------------------------------------------------------------------
    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedServer:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


@contextlib.contextmanager
def started(
    *servers: EmbeddedServer, on_ready: Callable[[EmbeddedServer], None] | None = None
) -> Iterator[None]:
    """Start ``servers`` in order, stop them in reverse order (also on error)."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
            if on_ready is not None:
                on_ready(server)
        yield
