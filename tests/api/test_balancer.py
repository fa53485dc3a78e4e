"""The supervisor's hand-over of connections (:mod:`api.cli.balancer`), with real sockets: a listening
socket, the balancer accepting on it, and two "workers" in this process, each serving what its inlet is
handed with an echo protocol (the hub's workers serve it with uvicorn: ``tests/api/test_workers.py``)."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from api.cli.balancer import Balancer, Route
from tests.support import wait_for


@dataclass(eq=False)
class Worker:
    """One route's worker: its open connections as uvicorn keeps them (the inlet's counting set)."""

    route: Route
    connections: set[asyncio.Protocol] = field(default_factory=set)

    def start(self) -> None:
        self.connections = self.route.inlet.connections()
        self.route.inlet.open(self._serve)

    def _serve(self, sock: socket.socket) -> None:
        asyncio.get_running_loop().create_task(
            asyncio.get_running_loop().connect_accepted_socket(lambda: Echo(self.connections), sock)
        )


class Echo(asyncio.Protocol):
    def __init__(self, connections: set[asyncio.Protocol]) -> None:
        self.connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)


@dataclass
class Node:
    balancer: Balancer
    port: int
    workers: list[Worker]

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Worker]:
        """A connection, served: which worker holds it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
        local = writer.get_extra_info("sockname")
        holder = next(
            w for w in self.workers for c in w.connections if c.transport.get_extra_info("peername") == local
        )  # type: ignore[attr-defined]
        return reader, writer, holder


@pytest_asyncio.fixture
async def node() -> AsyncIterator[Node]:
    listening = socket.create_server(("127.0.0.1", 0))
    balancer = Balancer(listening)
    workers = [Worker(balancer.route()) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        yield Node(balancer, listening.getsockname()[1], workers)
    finally:
        for worker in workers:
            worker.route.inlet.close()
            for conn in list(worker.connections):
                conn.transport.close()  # type: ignore[attr-defined]
            balancer.drop(worker.route)  # admitted or not
        listening.close()
        await asyncio.sleep(0)  # the transports' close callbacks


async def test_connections_go_to_the_worker_holding_the_fewest_and_in_turn_among_equals(node: Node) -> None:
    for worker in node.workers:
        node.balancer.admit(worker.route)
    clients = [await node.client() for _ in range(20)]
    assert [len(w.connections) for w in node.workers] == [10, 10]
    assert node.balancer.handed == 20 and [w.route.load for w in node.workers] == [10, 10]

    # Six of the first worker's clients leave (as after a shed): the next six all go to it.
    first = node.workers[0]
    leaving = [c for c in clients if c[2] is first][:6]
    for _, writer, _ in leaving:
        writer.close()
        await writer.wait_closed()
    await wait_for(lambda: len(first.connections) == 4, what="the first worker to see them go")
    more = [await node.client() for _ in range(6)]
    assert {holder for _, _, holder in more} == {first}
    assert [len(w.connections) for w in node.workers] == [10, 10]

    # Short requests, one at a time, leave both at the same load: they go in turn.
    for _, writer, _ in clients + more:
        writer.close()
    await wait_for(lambda: not any(w.connections for w in node.workers), what="every client gone")
    holders = []
    for _ in range(6):
        _, writer, holder = await node.client()
        holders.append(holder)
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda h=holder: not h.connections, what="the short request gone")  # type: ignore[misc]
    assert holders.count(node.workers[0]) == holders.count(node.workers[1]) == 3


async def test_with_no_worker_ready_connections_wait_in_the_queue_until_one_is(node: Node) -> None:
    connecting = asyncio.ensure_future(node.client())
    done, _ = await asyncio.wait({connecting}, timeout=0.3)
    assert not done and node.balancer.handed == 0  # queued by the kernel, not accepted
    node.balancer.admit(node.workers[1].route)
    _, writer, holder = await connecting
    assert holder is node.workers[1]
    writer.close()


async def test_a_worker_that_is_gone_is_dropped_and_its_connection_goes_to_another(node: Node) -> None:
    gone, other = node.workers
    for worker in node.workers:
        node.balancer.admit(worker.route)
    gone.route.inlet.close()  # its process died: nothing reads its end any more
    clients = [await node.client() for _ in range(4)]
    assert {holder for _, _, holder in clients} == {other}
    assert list(node.balancer.routes) == [other.route] and node.balancer.refused == 0
    other.route.inlet.close()
    node.balancer.drop(other.route)  # the last one asked to stop: nothing is accepted any more
    connecting = asyncio.ensure_future(node.client())
    done, _ = await asyncio.wait({connecting}, timeout=0.3)
    assert not done and node.balancer.handed == 4
    connecting.cancel()
    for _, writer, _ in clients:
        writer.close()


async def test_when_no_worker_can_take_a_connection_it_is_closed_and_accepting_pauses(node: Node) -> None:
    stuck, healthy = node.workers
    asyncio.get_running_loop().remove_reader(stuck.route.inlet.channel.fileno())  # it reads no more
    while True:  # ... and its hand-over socket fills up
        try:
            stuck.route.channel.send(b"x" * 4096)
        except BlockingIOError:
            break
    node.balancer.admit(stuck.route)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    assert await asyncio.wait_for(reader.read(1), 10) == b""  # closed: nobody could take it
    assert node.balancer.refused == 1 and node.balancer.handed == 0
    writer.close()
    # Accepting pauses (rather than closing every connection that comes): the next one waits in the
    # queue, and a worker that can take it gets it once the pause is over.
    waiting = asyncio.ensure_future(node.client())
    done, _ = await asyncio.wait({waiting}, timeout=0.3)
    assert not done and node.balancer.refused == 1  # not accepted, so not refused
    node.balancer.admit(healthy.route)
    node.balancer.drop(stuck.route)
    _, served, holder = await waiting
    assert holder is healthy and node.balancer.handed == 1 and node.balancer.refused == 1
    served.close()


async def test_when_accepting_fails_for_want_of_descriptors_it_pauses_and_the_connection_waits(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    for worker in node.workers:
        node.balancer.admit(worker.route)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The client connects first (the kernel queues it); then no new descriptor can be made: the
    # supervisor is out of them.
    client = socket.create_connection(("127.0.0.1", node.port))
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        await wait_for(lambda: "cannot accept connections" in caplog.text, what="accept to fail")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert node.balancer.handed == 0 and node.balancer.refused == 0
    assert "Too many open files" in caplog.text and "accepting again in 1 s" in caplog.text
    # Not accepted, so not lost: it waits in the queue and is served once the pause is over.
    reader, writer = await asyncio.open_connection(sock=client)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
    assert node.balancer.handed == 1 and sum(len(w.connections) for w in node.workers) == 1
    writer.close()
