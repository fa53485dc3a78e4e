"""uvicorn's websocket protocol (websockets, sans-I/O) with less memory held per idle connection.

:class:`~uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol` keeps, for every
connection and for its whole life, about forty attributes in an instance dict (past the 30 keys a
shared-key dict holds, so a full table), an ``asyncio.Queue`` (three deques, 600+ bytes each, though
reading pauses after every message so it rarely holds more than one), an ``asyncio.Event`` (one more
deque) and the handshake's request and response with their headers. :class:`LeanProtocol` is the same
protocol, every method its own, with:

- its attributes in ``__slots__`` (no instance dict);
- :class:`Inbox` for the queue: ``put_nowait``/``get``/``empty`` as ``asyncio.Queue``'s (same order,
  same cancellation rules), its list and waiters made only while they hold something;
- :class:`Flag` for ``writable``: ``is_set``/``set``/``clear``/``wait`` as ``asyncio.Event``'s, its
  waiters made only while a send waits for flow control;
- the handshake request emptied once the ASGI scope is built from it: uvicorn never reads it again,
  but websockets' parser (a generator suspended for the connection's life) still holds it in a local
  variable, with every header and the path (the query, a token with it);
- the handshake response dropped once it is written;
- websockets' parser closed when the connection is lost: the generator refers to the protocol that
  refers to it, so until then the two (and the transport, the scope, the inbox with them) wait for the
  cyclic garbage collector, which a worker runs over its old objects rarely (``_tune_gc`` in
  ``api/cli/serving.py``), and every wave of closed connections added to RSS.

Measured with ``ops/ws_idle_memory.py`` (1,000 idle subscribed ``/ws`` connections, uvloop): 25.4 KB
of Python objects and 20.0 KB of RSS per connection with uvicorn's protocol, 15.5 KB and 10.2 KB with
this one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, TypeVar

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.server import ServerProtocol

__all__ = ["Flag", "Inbox", "LeanProtocol"]

T = TypeVar("T")
_NO_HEADERS = Headers()  # what an emptied handshake request holds (nothing writes to it)


class Inbox(Generic[T]):
    """An unbounded FIFO with ``asyncio.Queue``'s ``put_nowait``, ``get`` and ``empty``."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        self._wake_next()

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None

    async def get(self) -> T:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = [getter]
            else:
                self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it is not done yet
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                    if not self._getters:
                        self._getters = None
                if self._items and not getter.cancelled():
                    self._wake_next()
                raise
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None
        return item


class Flag:
    """``asyncio.Event``'s ``is_set``, ``set``, ``clear`` and ``wait``; starts set."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = True
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters = self._waiters
            waiters.remove(waiter)
            if not waiters:
                self._waiters = None


class LeanProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol, its per-connection state in slots (module docstring)."""

    __slots__ = (
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
    )
    queue: Inbox[Any]  # type: ignore[assignment]
    writable: Flag  # type: ignore[assignment]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # WebSocketsSansIOProtocol.__init__, but for the queue, the writable flag and the extensions
        # (see ``extensions``); every attribute it sets is set here.
        if not config.loaded:
            config.load()  # pragma: no cover - uvicorn loads it before serving
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = logging.getLogger("uvicorn.error")
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None  # type: ignore[assignment]
        self.queue = Inbox()
        self.handshake_initiated = False
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer = None
        self.close_timeout = 10.0
        self.initial_response = None
        self.conn = ServerProtocol(
            extensions=self.extensions(),
            max_size=config.ws_max_size,
            logger=logging.getLogger("uvicorn.error"),
        )
        self.read_paused = False
        self.writable = Flag()
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.ping_timer = None
        self.pong_timer = None
        self.pending_ping_payload = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.frames = []
        self.curr_msg_data_type = "bytes"

    def extensions(self) -> list[Any]:
        """The extensions offered to clients (uvicorn's own per-connection deflate when configured)."""
        if not self.config.ws_per_message_deflate:
            return []
        return [
            ServerPerMessageDeflateFactory(
                server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
            )
        ]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        event.path = ""  # see the module docstring: the scope has its own copies
        event.headers = _NO_HEADERS

    def start_keepalive(self) -> None:
        # Called once the handshake response is written (uvicorn's accept): it is not needed again.
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # Nothing is parsed from here on (only receive_data and receive_eof step the parser); closed,
        # the generator lets go of the protocol, which is then freed with its last reference.
        self.conn.parser.close()
