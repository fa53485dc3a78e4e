"""``tickstock serve --workers 2``: one port, two hub processes under a supervisor, run as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import websockets

from api.auth import mint_token
from api.settings import Settings
from api.workerheader import WORKER_HEADER
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.support import (
    clean_stream_messages,
    free_port,
    make_event,
    publish_events,
    wait_for,
    wait_for_sync,
    wait_settled,
)

SYMBOLS = ["AAPL", "MSFT", "IBM"]
WORKER = re.compile(r"(\d+) \(pid (\d+)\)")
PRIMARY_READY = re.compile(r"worker 0 ready \(pid (\d+)\)")


class Node:
    """``tickstock serve --workers N`` as a child process, its log in a file."""

    def __init__(self, settings: Settings, tmp_path: Path, *, workers: int = 2, **extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "hub.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
        env.update(
            TICKSTOCK_DATABASE_URL=settings.database_url or "",
            TICKSTOCK_NATS_URL=settings.nats_url or "",
            TICKSTOCK_REDIS_URL=settings.redis_url or "",
            TICKSTOCK_JWT_SECRET=JWT_SECRET,
            TICKSTOCK_DATA_DIR=str(tmp_path / "data"),
            TICKSTOCK_MAINTENANCE_INTERVAL_S="3600",
            TICKSTOCK_AUTH_FAILURE_PER_S="0",
            **extra,
        )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "api.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_sync(lambda: "workers ready" in self.log(), timeout=90, what="every worker ready")
        except AssertionError:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def answer(self, path: str = "/health", **kwargs: object) -> tuple[int, int, httpx.Response]:
        """One request on a new connection: the worker index and pid that answered, and the response."""
        response = httpx.get(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]
        index, pid = _worker(response.headers[WORKER_HEADER])
        return index, pid, response

    def primary(self) -> int | None:
        """The pid of the primary (process 0, which serves no socket) that was ready last, from the log."""
        pids = PRIMARY_READY.findall(self.log())
        return int(pids[-1]) if pids else None

    def workers(self, *, want: int = 2) -> dict[int, int]:
        """pid by index, until ``want`` workers answered: from connections held open meanwhile, since
        the supervisor hands each new one to the worker holding the fewest."""
        seen: dict[int, int] = {}

        def every() -> bool:
            with contextlib.ExitStack() as held:
                for _ in range(4 * want):
                    client = held.enter_context(httpx.Client(base_url=self.url, timeout=10))
                    index, pid = _worker(client.get("/health").headers[WORKER_HEADER])
                    seen[index] = pid
                    if len(seen) >= want:
                        return True
            return False

        wait_for_sync(every, timeout=30, interval=0.01, what=f"{want} workers answering")
        return seen


def _worker(header: str) -> tuple[int, int]:
    match = WORKER.fullmatch(header)
    assert match, header
    return int(match[1]), int(match[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def node(settings: Settings, tmp_path: Path) -> Iterator[Node]:
    asyncio.run(delete_all_streams(settings.nats_url or ""))  # the clean stream holds this test's events only
    hub = Node(settings, tmp_path)
    try:
        yield hub
    finally:
        hub.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


def _stored(settings: Settings, prefix: str) -> int:
    with psycopg.connect(settings.database_url or "") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pattern_events WHERE id LIKE %s", (f"{prefix}-%",)
        ).fetchone()
    return int(row[0]) if row else 0


async def test_two_workers_serve_one_port_and_ingest_once_in_order(
    settings: Settings, node: Node, nats_client
) -> None:  # type: ignore[no-untyped-def]
    pids = node.workers()
    primary = node.primary()
    assert sorted(pids) == [1, 2] and len({pids[1], pids[2], primary}) == 3
    assert {_alive(pid) for pid in [*pids.values(), primary or 0]} == {True}
    assert "Socket.IO long-polling with 2 workers" in node.log()  # it cannot be sticky: said at start
    assert "the primary and 2 workers ready" in node.log()

    # Ingest over NATS: only the primary writes, so each event is stored once and published once, a
    # symbol's events in the order they were sent. It serves no socket (below: no answer comes from 0).
    js = nats_client.jetstream()
    total = 300
    events = [make_event(i, prefix="wk", symbol=SYMBOLS[i % len(SYMBOLS)]) for i in range(total)]
    await publish_events(js, events)
    await wait_for(lambda: _stored(settings, "wk") == total, what="every event stored")
    await wait_settled(js)
    ours = [json.loads(m.data)["id"] for m in await clean_stream_messages(js)]
    assert len(ours) == len(set(ours)) == total
    for symbol in SYMBOLS:
        order = [n for n in (int(i.split("-")[1]) for i in ours) if events[n]["symbol"] == symbol]
        assert order == sorted(order)

    # /metrics answers for the node: the REST requests each worker counted, summed, whichever answers.
    token = mint_token(JWT_SECRET, subject="workers", scopes=["patterns:read"])
    served: dict[int, int] = {}
    for _ in range(40):
        index, _, response = node.answer("/api/universes", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        served[index] = served.get(index, 0) + 1
    assert sorted(served) == [1, 2]  # both served some: one worker's own count would be short
    scraped: set[int] = set()

    def summed() -> bool:
        index, _, response = node.answer("/metrics")
        requests = sum(
            _metric(response.text, "tickstock_cache_requests_total", result=result, route="universes")
            for result in ("hit", "miss", "coalesced", "bypass")
        )
        if requests == 40 and _metric(response.text, "tickstock_events_stored_total") == total:
            scraped.add(index)
            return True
        return False

    # Scraped until each worker has answered with the node's sums (the kernel, not the hub, picks which
    # worker accepts a connection: a few scrapes can all land on one).
    wait_for_sync(
        lambda: summed() and scraped == {1, 2},
        timeout=60,
        interval=0.1,
        what="/metrics summing, from each worker",
    )
    # /health/ready's pipeline too: no worker has the writer, yet each shows the node's totals.
    readied: set[int] = set()

    def ready_totals() -> bool:
        index, _, response = node.answer("/health/ready")
        pipeline = response.json()["pipeline"]
        assert pipeline["totals"]["stored"] == pipeline["totals"]["published"] == total
        assert pipeline["writer_batches"] >= 1 and pipeline["ingest_to_stored_p95_s"] is not None
        universes = response.json()["cache"]["routes"]["universes"]
        assert sum(universes[r] for r in ("hit", "miss", "coalesced", "bypass")) == 40
        readied.add(index)
        return readied == {1, 2}

    wait_for_sync(ready_totals, timeout=60, interval=0.1, what="/health/ready's totals, from each worker")


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_the_port_answers_meanwhile(
    settings: Settings, node: Node, nats_client
) -> None:  # type: ignore[no-untyped-def]
    before = node.workers()
    os.kill(before[1], signal.SIGKILL)
    answered = {node.answer()[1] for _ in range(20)}  # the port keeps answering, from the other worker
    assert before[1] not in answered
    after = await wait_for(lambda: _restarted(node, 1, before[1]), what="worker 1 restarted")
    assert after != before[1] and not _alive(before[1])
    assert f"worker 1 (pid {before[1]}) exited (signal SIGKILL)" in node.log()

    # The primary comes back as the primary: ingest resumes where JetStream kept it. Both workers
    # serve on meanwhile: the primary serves no socket.
    primary = node.primary()
    assert primary is not None
    os.kill(primary, signal.SIGKILL)
    js = nats_client.jetstream()
    await publish_events(js, [make_event(i, prefix="kill", symbol="AAPL") for i in range(50)])
    assert {node.answer()[0] for _ in range(20)} <= {1, 2}
    await wait_for(lambda: node.primary() not in (None, primary), what="the primary restarted")
    assert f"worker 0 (pid {primary}) exited (signal SIGKILL)" in node.log()
    await wait_for(lambda: _stored(settings, "kill") == 50, what="ingest by the new primary")


def _restarted(node: Node, index: int, old: int) -> int | None:
    pid = node.workers().get(index)
    return pid if pid is not None and pid != old else None


@pytest.mark.slow
def test_sigterm_stops_every_worker_cleanly(node: Node) -> None:
    pids = {**node.workers(), 0: node.primary()}
    assert node.stop() == 0
    assert not any(_alive(pid) for pid in pids.values())
    log = node.log()
    assert "Traceback" not in log
    assert all(f"worker {i} (pid {pid}) exited (status 0)" in log for i, pid in pids.items())
    assert not list((node.log_path.parent / "data").glob("metrics-*/gauge_live*"))  # marked dead


@pytest.mark.slow
async def test_a_rolling_restart_keeps_the_other_workers_clients(node: Node) -> None:
    token = mint_token(JWT_SECRET, subject="workers", scopes=["patterns:read"])
    clients: dict[int, websockets.ClientConnection] = {}
    opened = []
    held: list[int] = []
    for _ in range(10):  # the supervisor hands each to the worker holding the fewest: five each
        ws = await websockets.connect(f"ws://127.0.0.1:{node.port}/ws?token={token}", ping_interval=None)
        opened.append(ws)
        assert json.loads(await ws.recv())["op"] == "welcome"
        held.append(_worker(ws.response.headers[WORKER_HEADER])[0])
        clients.setdefault(held[-1], ws)
    try:
        assert sorted(held) == [1] * 5 + [2] * 5
        await clients[1].send(json.dumps({"op": "subscribe", "id": "s0", "filter": {}}))
        head = json.loads(await asyncio.wait_for(clients[1].recv(), 10))["head"]
        pids = {**node.workers(), 0: node.primary()}
        node.proc.send_signal(signal.SIGHUP)
        # The primary goes first (never two writers), then worker 1: its client is told "going away" ...
        await asyncio.wait_for(clients[1].wait_closed(), 30)
        assert clients[1].close_code == 1001
        assert f"worker 0 (pid {pids[0]}) exited (status 0)" in node.log()  # the primary went before
        # ... while the other worker's client stays connected and served.
        await clients[2].send(json.dumps({"op": "subscribe", "id": "s1", "filter": {}}))
        assert json.loads(await asyncio.wait_for(clients[2].recv(), 10))["op"] == "subscribed"
        await wait_for(lambda: "rolling restart done" in node.log(), timeout=90, what="the roll")
        # The closed client resumes by seq on whichever worker it reaches now.
        again = await websockets.connect(f"ws://127.0.0.1:{node.port}/ws?token={token}", ping_interval=None)
        opened.append(again)
        assert json.loads(await again.recv())["op"] == "welcome"
        await again.send(json.dumps({"op": "subscribe", "id": "s0", "filter": {}, "since": head}))
        resumed = json.loads(await asyncio.wait_for(again.recv(), 10))
        assert resumed["op"] == "subscribed" and resumed["recovered"] is True
        renewed = {**node.workers(), 0: node.primary()}
        assert not set(renewed.values()) & set(pids.values())
    finally:
        for ws in opened:
            await ws.close()


def test_a_worker_that_cannot_start_fails_serve_in_one_line(settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
    env.update(
        TICKSTOCK_DATABASE_URL=settings.database_url or "",
        TICKSTOCK_NATS_URL=settings.nats_url or "",
        TICKSTOCK_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        TICKSTOCK_DATA_DIR=str(tmp_path),
        TICKSTOCK_CONNECT_TIMEOUT_S="2",
    )
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tickstock: error")]
    assert len(errors) == 1 and "did not start: cannot connect to Redis" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_one_tokens_rate_limit_holds_across_the_workers(settings: Settings, tmp_path: Path) -> None:
    """Each worker draws from the shared bucket as a node does: a burst of 3 with no refill to speak of
    (one token an hour) admits 3 requests in all, however the requests spread over the workers."""
    node = Node(settings, tmp_path, TICKSTOCK_RATE_LIMIT_PER_S=str(1 / 3600), TICKSTOCK_RATE_LIMIT_BURST="3")
    try:
        token = mint_token(JWT_SECRET, subject="one-bucket", scopes=["patterns:read"])
        answers: list[tuple[int, int]] = []

        def both_answered_twice() -> bool:
            index, _, response = node.answer(
                "/api/patterns/definitions", headers={"Authorization": f"Bearer {token}"}
            )
            answers.append((index, response.status_code))
            return all(sum(1 for i, _ in answers if i == w) >= 2 for w in (1, 2))

        wait_for_sync(both_answered_twice, timeout=30, interval=0, what="both workers asked")
        codes = [code for _, code in answers]
        assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}
    finally:
        node.stop()
