"""The locked-down deployment (issue #15, acceptance 4), on real servers started here with the lock-down
on: the embedded stack of ``tickstock run`` (NATS users from hub/embedded/nats-accounts.conf — the file
compose's nats.conf includes —, a Redis password, a PostgreSQL password with scram-sha-256), and the hub
running on it with its own credentials.

The session's servers (tests/conftest.py) stay open; nothing here uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import stat
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import nats
import psycopg
import pytest
import pytest_asyncio
import redis
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import TimeoutError

from api.app import ConfigurationError
from api.cli.resources import embedded_servers, prepare_database
from api.settings import Settings
from hub.broker import open_nats
from hub.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres, EmbeddedRedis
from hub.embedded.credentials import CREDENTIALS_FILE, NATS_ACCOUNTS_CONF, Credentials, load_or_create
from hub.embedded.process import find_binary
from hub.embedded.servers import _scripts_dir
from hub.jetstream import PATTERNS_STREAM
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, free_port, make_event, wait_for


@dataclasses.dataclass(frozen=True)
class Locked:
    settings: Settings  # the hub's: every URL with the hub's own credentials
    credentials: Credentials

    def nats_as(self, user: str | None) -> str:
        """The NATS URL of ``user`` (None: no credentials at all)."""
        parts = urlsplit(self.settings.nats_url or "")
        auth = f"{user}:{self.credentials.nats_password(user)}@" if user else ""
        return f"nats://{auth}{parts.hostname}:{parts.port}"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{parts.hostname}:{parts.port}"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def locked(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Locked]:
    data_dir = tmp_path_factory.mktemp("locked")
    base = Settings(
        data_dir=data_dir,
        jwt_secret=JWT_SECRET,
        maintenance_interval_s=3600,
        pool_min_size=1,
        pool_max_size=4,
        auth_failure_per_s=0,
    )
    async with embedded_servers(base, durable=False) as full:
        await prepare_database(full)
        credentials, created = load_or_create(data_dir)
        assert not created
        yield Locked(settings=full, credentials=credentials)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hub(locked: Locked) -> AsyncIterator[LiveHub]:
    async with LiveHub(locked.settings) as live:
        yield live


async def _connect(url: str, errors: list[str]) -> NATS:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(url, error_cb=on_error, connect_timeout=5, max_reconnect_attempts=0)


async def _stored(database_url: str, event_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pattern_events WHERE id = %s AND stream_seq IS NOT NULL", (event_id,)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_a_producer_may_publish_to_ingest_only(locked: Locked, hub: LiveHub) -> None:
    errors: list[str] = []
    producer = await _connect(locked.nats_as("producer"), errors)
    try:
        before = (await hub.hub.js.stream_info(PATTERNS_STREAM)).state.messages
        forged = make_event(1, prefix="forged", pattern="<img src=x onerror=alert(1)>")
        await producer.publish("tickstock.patterns.x", json.dumps(forged).encode())
        await producer.flush()
        await wait_for(lambda: errors, what="the permissions violation")
        assert errors == ['nats: permissions violation for publish to "tickstock.patterns.x"']

        event = make_event(2, prefix="locked", symbol="AAPL", timeframe="daily")
        ack = await producer.jetstream().publish("tickstock.ingest.daily.AAPL", json.dumps(event).encode())
        assert ack.stream == "TICKSTOCK_INGEST"
        database_url = locked.settings.database_url or ""
        await wait_for(lambda: _stored(database_url, "locked-2"), what="the producer's event stored")
        clean = await hub.hub.js.get_last_msg(PATTERNS_STREAM, "tickstock.patterns.daily.AAPL")
        assert json.loads(clean.data or b"{}")["id"] == "locked-2"
        after = (await hub.hub.js.stream_info(PATTERNS_STREAM)).state.messages
        assert after == before + 1  # the stored event, never the forged one
    finally:
        await producer.close()


async def test_a_reader_reads_the_clean_stream_and_publishes_nothing(locked: Locked, hub: LiveHub) -> None:
    event = make_event(3, prefix="read", symbol="MSFT", timeframe="daily")
    await hub.hub.js.publish("tickstock.ingest.daily.MSFT", json.dumps(event).encode())
    database_url = locked.settings.database_url or ""
    await wait_for(lambda: _stored(database_url, "read-3"), what="the event stored")

    errors: list[str] = []
    reader = await _connect(locked.nats_as("reader"), errors)
    try:
        await reader.publish("tickstock.ingest.daily.MSFT", json.dumps(make_event(4, prefix="r")).encode())
        await reader.flush()
        await wait_for(lambda: errors, what="the permissions violation")
        # (nats-py lower-cases the server's -ERR line)
        assert errors == ['nats: permissions violation for publish to "tickstock.ingest.daily.msft"']

        js = reader.jetstream()
        sub = await js.pull_subscribe("tickstock.patterns.daily.MSFT", stream=PATTERNS_STREAM)
        (msg,) = await sub.fetch(1, timeout=5)
        assert json.loads(msg.data)["id"] == "read-3"
        await msg.ack()
        ordered = await js.subscribe("tickstock.patterns.>", ordered_consumer=True)
        first = await ordered.next_msg(timeout=5)
        assert json.loads(first.data)["type"] == "pattern_detected"
        with pytest.raises(TimeoutError):  # no consumer on the ingest stream, no stream management
            await js.add_consumer("TICKSTOCK_INGEST", timeout=1)
        with pytest.raises(TimeoutError):
            await reader.request(f"$JS.API.STREAM.DELETE.{PATTERNS_STREAM}", b"", timeout=1)
        assert (await hub.hub.js.stream_info(PATTERNS_STREAM)).config.name == PATTERNS_STREAM
    finally:
        await reader.close()


async def _greeting(url: str) -> str:
    """The server's answer to CONNECT (with the URL's credentials) and PING, spoken by hand: ``PONG``
    when let in, ``-ERR 'Authorization Violation'`` when refused."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        connect: dict[str, object] = {"verbose": False, "pedantic": False, "protocol": 1}
        if parts.username:
            connect.update(user=parts.username, **{"pass": parts.password})
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_nats_refuses_a_connection_without_credentials(locked: Locked) -> None:
    for url in (locked.nats_as(None), locked.nats_as(None).replace("nats://", "nats://producer:wrong@")):
        assert await _greeting(url) == "-ERR 'Authorization Violation'"
    assert await _greeting(locked.nats_as("producer")) == "PONG"


def test_redis_refuses_a_connection_without_the_password(locked: Locked) -> None:
    url = locked.settings.redis_url or ""
    for refused in (_without_password(url), url.replace(locked.credentials.redis, "wrong")):
        client = redis.Redis.from_url(refused, socket_timeout=5)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):  # NOAUTH / WRONGPASS
                client.get("anything")
        finally:
            client.close()
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


def test_postgresql_refuses_a_connection_without_the_password(locked: Locked) -> None:
    url = locked.settings.database_url or ""
    with pytest.raises(psycopg.OperationalError, match=r"no password supplied|password authentication"):
        psycopg.connect(_without_password(url), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.replace(locked.credentials.postgres, "wrong"), connect_timeout=5)
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_setting('password_encryption')").fetchone()
        assert row == ("scram-sha-256",)
    hba = Path(locked.settings.data_dir).resolve() / "postgres" / "pgdata" / "pg_hba.conf"
    methods = {line.split()[-1] for line in hba.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert methods == {"scram-sha-256"}


async def test_credentials_are_made_once_kept_private_printed_once_and_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = Settings(data_dir=tmp_path)
    async with embedded_servers(base, only=("redis",)) as first:
        pass
    printed = capsys.readouterr().err
    credentials = json.loads((tmp_path / CREDENTIALS_FILE).read_text())
    assert stat.S_IMODE((tmp_path / CREDENTIALS_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "redis" / "redis-embedded.conf").stat().st_mode) == 0o600
    assert "new credentials" in printed and credentials["redis"] in printed
    assert credentials["nats_producer"] in printed  # every password is shown once, whatever started
    assert len({*credentials.values()}) == 5 and all(len(p) >= 40 for p in credentials.values())
    async with embedded_servers(base, only=("redis",)) as second:
        assert urlsplit(second.redis_url or "").password == urlsplit(first.redis_url or "").password
    again = capsys.readouterr().err
    assert credentials["redis"] not in again and "credentials: " in again
    assert json.loads((tmp_path / CREDENTIALS_FILE).read_text()) == credentials


async def test_a_broken_credentials_file_is_named_and_a_loose_one_tightened(tmp_path: Path) -> None:
    (tmp_path / CREDENTIALS_FILE).write_text('{"redis": "x"}')
    with pytest.raises(ValueError, match=f"{CREDENTIALS_FILE} is not a credentials file"):
        load_or_create(tmp_path)
    with pytest.raises(ConfigurationError, match="move it away to make a new one"):
        async with embedded_servers(Settings(data_dir=tmp_path), only=("redis",)):
            pass
    (tmp_path / CREDENTIALS_FILE).unlink()
    made, created = load_or_create(tmp_path)
    (tmp_path / CREDENTIALS_FILE).chmod(0o644)
    assert load_or_create(tmp_path) == (made, False) and created
    assert stat.S_IMODE((tmp_path / CREDENTIALS_FILE).stat().st_mode) == 0o600
    with pytest.raises(EmbeddedError, match="no users"):
        EmbeddedNats(tmp_path / "nats").url_for("producer")


async def test_servers_with_urls_need_no_credentials(tmp_path: Path) -> None:
    given = Settings(
        data_dir=tmp_path,
        database_url="postgresql://x@127.0.0.1:1/db",
        nats_url="nats://127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
    )
    async with embedded_servers(given) as full:
        assert full is given
    assert not (tmp_path / CREDENTIALS_FILE).exists()


@pytest.mark.slow
async def test_a_data_folder_made_before_the_lock_down_is_locked_down_and_keeps_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The folder as `tickstock run` left it before this change: open servers, data in them.
    with EmbeddedNats(tmp_path / "nats") as old_nats, EmbeddedPostgres(tmp_path / "postgres") as old_pg:
        nc = await nats.connect(old_nats.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.one", b"kept")
        await nc.close()
        with psycopg.connect(old_pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
    with EmbeddedRedis(tmp_path / "redis"):
        pass
    capsys.readouterr()

    async with embedded_servers(Settings(data_dir=tmp_path)) as full:
        printed = capsys.readouterr().err
        assert "locking down the servers of" in printed and "new credentials" in printed
        nc = await nats.connect(full.nats_url or "")
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
        port = urlsplit(full.nats_url or "").port
        assert await _greeting(f"nats://127.0.0.1:{port}") == "-ERR 'Authorization Violation'"
        with psycopg.connect(full.database_url or "") as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(_without_password(full.database_url or ""), connect_timeout=5)
        client = redis.Redis.from_url(_without_password(full.redis_url or ""), socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.ping()
        client.close()
    # The next run finds everything locked already and changes nothing.
    hba = (tmp_path / "postgres" / "pgdata" / "pg_hba.conf").read_text()
    async with embedded_servers(Settings(data_dir=tmp_path)) as again:
        assert urlsplit(again.database_url or "").password == urlsplit(full.database_url or "").password
        with psycopg.connect(again.database_url or "") as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
        nc = await nats.connect(again.nats_url or "")
        assert (await nc.jetstream().stream_info("KEEP")).state.messages == 1
        await nc.close()
    assert (tmp_path / "postgres" / "pgdata" / "pg_hba.conf").read_text() == hba
    assert "new credentials" not in capsys.readouterr().err


# -- the compose stack's NATS cluster --------------------------------------------------------------------


def _cluster_conf(folder: Path, node: int, ports: dict[str, list[int]]) -> Path:
    """The repository's nats.conf for ``node`` with only its addresses and store moved onto this
    machine (loopback ports, a temporary store); authorization, cluster and accounts untouched."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "nats.conf").read_text()
    moves = {
        'listen: "0.0.0.0:4222"': f'listen: "127.0.0.1:{ports["client"][node]}"',
        'http: "0.0.0.0:8222"': f'http: "127.0.0.1:{ports["http"][node]}"',
        'listen: "0.0.0.0:6222"': f'listen: "127.0.0.1:{ports["route"][node]}"',
        'store_dir: "/data/jetstream"': f'store_dir: "{folder / f"store-{node}"}"',
    }
    for old, new in moves.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (folder / "nats-accounts.conf").write_text(NATS_ACCOUNTS_CONF.read_text())
    path = folder / f"nats-{node}.conf"
    path.write_text(text)
    return path


def _node_logs(folder: Path, processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]]) -> str:
    """Each node's exit status and the end of its log: what a failure to form the cluster shows."""
    parts = []
    for node, (process, _) in enumerate(processes):
        tail = (folder / f"nats-{node}.log").read_text(errors="replace")[-1500:]
        parts.append(f"-- node {node + 1}: exit status {process.poll()}, log:\n{tail}")
    return "\n".join(parts)


@pytest.mark.slow
async def test_the_compose_nats_config_runs_a_three_node_cluster_with_the_same_permissions(
    tmp_path: Path,
) -> None:
    ports = {kind: [free_port() for _ in range(3)] for kind in ("client", "http", "route")}
    secrets = Credentials.generate()
    env = {
        **os.environ,
        **secrets.nats_environment(),
        "TICKSTOCK_NATS_ROUTE_PASSWORD": "kroute",
        **{
            f"TICKSTOCK_NATS_ROUTE_{i + 1}": f"nats-route://route:kroute@127.0.0.1:{port}"
            for i, port in enumerate(ports["route"])
        },
    }
    binary = find_binary("nats-server", [_scripts_dir() / "nats-server"])
    processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    try:
        for node in range(3):
            conf = _cluster_conf(tmp_path, node, ports)
            log = open(tmp_path / f"nats-{node}.log", "wb")  # noqa: SIM115 - closed with the process
            if node:  # one after the other: three nodes started in the same instant sometimes formed
                # a cluster whose routes never learned the account ("Unknown account" for a minute)
                await asyncio.sleep(0.5)
            processes.append(
                (
                    subprocess.Popen(
                        [str(binary), "-c", str(conf)],
                        env={**env, "TICKSTOCK_NATS_SERVER_NAME": f"nats-{node + 1}"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )

        def healthy() -> bool:
            if any(process.poll() is not None for process, _ in processes):
                raise AssertionError("a node exited")  # its log is added below
            for port in ports["http"]:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/healthz?js-enabled-only=true", timeout=1
                    ):
                        pass
                except OSError:
                    return False
            return True

        try:
            await wait_for(healthy, timeout=30, what="three healthy JetStream nodes")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_node_logs(tmp_path, processes)}") from None
        hub_urls = [f"nats://hub:{secrets.nats_hub}@127.0.0.1:{port}" for port in ports["client"]]

        async def replicated() -> bool:
            # A fresh connection each time: on a cluster just formed, a reply subscription made before
            # the routes knew the account can stay unknown to the node that answers.
            # Each attempt is bounded too: on a cluster still forming, a connect or a JetStream request
            # could wait past the whole deadline (it did once in a make test) instead of failing.
            client: NATS | None = None
            try:
                async with asyncio.timeout(8):
                    client = await nats.connect(hub_urls, connect_timeout=5, inbox_prefix="_INBOX_HUB")
                    js = client.jetstream(timeout=2)
                    for name, subject in (
                        (PATTERNS_STREAM, "tickstock.patterns.>"),
                        ("TICKSTOCK_INGEST", "tickstock.ingest.>"),
                    ):
                        await js.add_stream(name=name, subjects=[subject], num_replicas=3)
            except (NatsError, OSError, asyncio.TimeoutError):  # noqa: UP041 - TimeoutError here is nats'
                return False  # the cluster is still settling
            finally:
                if client is not None:
                    with contextlib.suppress(NatsError, OSError, asyncio.TimeoutError):
                        async with asyncio.timeout(5):
                            await client.close()
            return True

        await wait_for(replicated, timeout=60, what="R3 streams on the cluster")
        hub = await nats.connect(hub_urls, connect_timeout=5, inbox_prefix="_INBOX_HUB")
        try:
            js = hub.jetstream()
            info = await js.stream_info(PATTERNS_STREAM)
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # the leader + 2
            await js.publish("tickstock.patterns.daily.AAPL", b'{"id": "clean-1"}')

            errors: list[str] = []
            producer = await _connect(
                f"nats://producer:{secrets.nats_producer}@127.0.0.1:{ports['client'][1]}", errors
            )
            await producer.publish("tickstock.patterns.x", b"{}")
            ack = await producer.jetstream().publish("tickstock.ingest.daily.AAPL", b"{}")
            assert ack.stream == "TICKSTOCK_INGEST"
            await wait_for(lambda: errors, what="the permissions violation")
            assert errors == ['nats: permissions violation for publish to "tickstock.patterns.x"']
            await producer.close()

            reader = await _connect(
                f"nats://reader:{secrets.nats_reader}@127.0.0.1:{ports['client'][2]}", errors
            )
            sub = await reader.jetstream().pull_subscribe("tickstock.patterns.>", stream=PATTERNS_STREAM)
            (msg,) = await sub.fetch(1, timeout=5)
            assert msg.data == b'{"id": "clean-1"}'
            await reader.close()
            assert (await js.stream_info("TICKSTOCK_INGEST")).state.messages == 1
            assert (await js.stream_info(PATTERNS_STREAM)).state.messages == 1
        finally:
            await hub.close()

        # The hub given one node's URL learns the others from the cluster, and logs in to them with
        # the same credentials when that node goes.
        async with open_nats(hub_urls[0], name="failover", connect_timeout_s=5) as client:
            await wait_for(lambda: len(client.discovered_servers) >= 2, what="the other nodes announced")
            first, _ = processes[0]
            first.terminate()
            first.wait(10)

            def moved() -> bool:
                url = client.connected_url
                return client.is_connected and url is not None and url.port != ports["client"][0]

            await wait_for(moved, timeout=30, what="a reconnect to another node")

            async def stored() -> bool:
                try:
                    await client.jetstream(timeout=2).publish("tickstock.ingest.daily.MSFT", b"{}")
                except NatsError:
                    return False  # the stream may be electing a new leader
                return True

            await wait_for(stored, timeout=30, what="an ingest publish on the two nodes left")
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
            log.close()
