"""The hub's NATS service ``tickstock``: scans, symbols and universes by request/reply, without HTTP.

Every hub node runs it (nats-py's ``micro`` service API, one queue group, so NATS spreads the requests):

| subject | answers as |
|---|---|
| ``tickstock.svc.scan`` | ``GET /api/patterns/scan`` |
| ``tickstock.svc.symbols`` | ``GET /api/symbols`` |
| ``tickstock.svc.universes`` | ``GET /api/universes`` |

and it is discoverable on ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` (``….tickstock``). A request
carries a JSON object of the route's query parameters (:mod:`api.nats_request`) and the header
``Authorization: Bearer <jwt>``; it is authenticated, authorised (``patterns:read``) and rate limited
exactly as the route is (:func:`api.auth.admit`, the app's own authenticator and limiters; failed
authentications over NATS share one bucket, ``nats``: NATS does not tell the peer's address), and
answered by the route's own function over the same store and response cache, so both transports return
the same bytes. An error is a micro error reply with REST's problem document (:func:`error_reply`).

A request is answered in a task of its own (at most ``inflight`` at once per node; beyond, a 503 at
once), so one slow scan does not hold up the next request, and nothing a request holds can stop the
service: every exception becomes an error reply. On exit the endpoints stop taking requests, the ones
in hand get ``stop_timeout_s`` to finish, and the rest are cancelled with a 503 reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from types import TracebackType
from typing import Any

from nats import micro
from nats.errors import Error as NatsError
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service
from starlette.datastructures import QueryParams

from api.auth import admit
from api.errors import ApiError, problem_for
from api.nats_request import ERROR_CODE_HEADER, error_reply, query_string
from api.routes.patterns import scan_answer
from api.routes.symbols import symbols_answer
from api.routes.universes import universes_answer
from api.state import HubState
from hub.metrics import Counter, Histogram, Registry
from hub.subjects import SCAN_SUBJECT, SYMBOLS_SUBJECT, UNIVERSES_SUBJECT
from hub.text import escape
from store.cache import Served

__all__ = ["DEFAULT_INFLIGHT", "ENDPOINTS", "NATS_ADDRESS", "SERVICE_NAME", "ScanService"]

log = logging.getLogger("tickstock.service")

SERVICE_NAME = "tickstock"
DEFAULT_INFLIGHT = 64  # requests answered at once per node
DEFAULT_STOP_TIMEOUT_S = 5.0
NATS_ADDRESS = "nats"  # the failed-authentication bucket of every NATS caller
READ_SCOPE = "patterns:read"

Answer = Callable[[Any, bytes, str], Awaitable[tuple[Served, bytes]]]


async def _scan(state: Any, query: bytes, subject: str) -> tuple[Served, bytes]:
    return await scan_answer(state.hub, state.scan_queries, query, subject=subject)


async def _symbols(state: Any, query: bytes, subject: str) -> tuple[Served, bytes]:
    served = await symbols_answer(state.hub, QueryParams(query))
    return served, served.body


async def _universes(state: Any, query: bytes, subject: str) -> tuple[Served, bytes]:
    served = await universes_answer(state.hub, QueryParams(query))
    return served, served.body


@dataclass(frozen=True)
class Endpoint:
    name: str
    subject: str
    route: str  # the REST route it answers as
    answer: Answer


ENDPOINTS = (
    Endpoint("scan", SCAN_SUBJECT, "GET /api/patterns/scan", _scan),
    Endpoint("symbols", SYMBOLS_SUBJECT, "GET /api/symbols", _symbols),
    Endpoint("universes", UNIVERSES_SUBJECT, "GET /api/universes", _universes),
)


class ServiceMetrics:
    """Requests and error replies per endpoint, and the time to answer."""

    def __init__(self) -> None:
        self.requests = Counter(
            "tickstock_nats_service_requests", "Requests to the NATS service, by endpoint."
        )
        self.errors = Counter(
            "tickstock_nats_service_errors", "Error replies of the NATS service, by endpoint and status."
        )
        self.seconds = Histogram(
            "tickstock_nats_service_seconds", "From a NATS service request's arrival to its reply."
        )

    def register(self, registry: Registry) -> None:
        """Expose them in ``registry`` (once per hub: a second app on the same hub keeps its own)."""
        for metric in (self.requests, self.errors, self.seconds):
            try:
                registry.add(metric)
            except ValueError:
                return


def _version() -> str:
    try:
        return metadata.version("tickstock-hub")
    except metadata.PackageNotFoundError:  # pragma: no cover - installed with the project
        return "0.0.0"


def _authorization(headers: dict[str, str] | None) -> str:
    """The ``Authorization`` header, whatever its case (NATS headers keep the sender's)."""
    for name, value in (headers or {}).items():
        if name.lower() == "authorization":
            return value
    return ""


class ScanService:
    """The service on the NATS connection of ``state.hub`` (``state`` is the app's: its authenticator,
    rate limiters and validated scan queries). An async context manager: entering adds the service and
    its endpoints; leaving stops them (see the module docstring)."""

    def __init__(
        self,
        state: Any,
        *,
        inflight: int = DEFAULT_INFLIGHT,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> None:
        self.state = state
        self.inflight = inflight
        self.stop_timeout_s = stop_timeout_s
        self.max_reply_bytes: int | None = None  # None: the NATS server's max_payload
        self.metrics = ServiceMetrics()
        self.service: Service | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScanService:
        hub: HubState = self.state.hub
        self.metrics.register(hub.metrics.registry)
        self.service = await micro.add_service(
            hub.nats,
            name=SERVICE_NAME,
            version=_version(),
            description="TickStock Hub reads: the REST scan, symbols and universes over NATS request/reply.",
            stats_handler=self._endpoint_stats,
        )
        for endpoint in ENDPOINTS:
            await self.service.add_endpoint(
                name=endpoint.name,
                subject=endpoint.subject,
                handler=self._receiver(endpoint),
                metadata={"rest": endpoint.route, "scope": READ_SCOPE},
            )
        await hub.nats.flush()
        log.info("nats service %s answering on %s", SERVICE_NAME, ", ".join(e.subject for e in ENDPOINTS))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.service is not None:
            try:
                await self.service.stop()  # no new requests reach this node
            except NatsError as exc:  # the connection is gone already: nothing reaches this node either
                log.warning("nats service: stopping its subscriptions failed: %s", escape(exc))
            self.service = None
        pending = set(self._tasks)
        if pending:
            log.info("nats service: waiting up to %.1f s for %d requests", self.stop_timeout_s, len(pending))
            _, late = await asyncio.wait(pending, timeout=self.stop_timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
                log.warning("nats service: %d requests cancelled (answered 503)", len(late))
        log.info("nats service stopped")

    def _endpoint_stats(self, stats: EndpointStats) -> dict[str, Any]:
        """``data`` of an endpoint in ``$SRV.STATS``: the error replies (micro counts only handler
        exceptions, and this handler never raises) and the requests in hand."""
        errors = sum(
            value for labels, value in self.metrics.errors.points() if labels.get("endpoint") == stats.name
        )
        return {"error_replies": int(errors), "in_flight": len(self._tasks)}

    def _receiver(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[None]]:
        async def receive(request: Request) -> None:
            # One callback task serves the endpoint's subscription: it only hands the request on.
            started = time.perf_counter()
            self.metrics.requests.inc(endpoint=endpoint.name)
            if len(self._tasks) >= self.inflight:
                busy = ApiError("this hub node has too many requests in hand; try again", status=503)
                await self._reply_error(endpoint, request, busy, started)
                return
            task = asyncio.create_task(self._answer(endpoint, request, started), name=f"svc-{endpoint.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return receive

    async def _answer(self, endpoint: Endpoint, request: Request, started: float) -> None:
        try:
            principal, decision = await admit(
                self.state,
                _authorization(request.headers),
                scope=READ_SCOPE,
                address=lambda: NATS_ADDRESS,
                transport="nats",
            )
            served, body = await endpoint.answer(self.state, query_string(request.data), principal.subject)
            self._check_size(body)
            headers = {"Content-Type": "application/json", "X-Cache": served.outcome}
            if decision.checked:
                headers |= {
                    "RateLimit-Limit": str(decision.limit),
                    "RateLimit-Remaining": str(decision.remaining),
                }
            await self._respond(request, body, headers)
            self.metrics.seconds.observe(time.perf_counter() - started)
        except asyncio.CancelledError:  # the node stops: the caller may ask another at once
            stopping = ApiError("this hub node is stopping; try again", status=503)
            await self._reply_error(endpoint, request, stopping, started)
            raise
        except Exception as exc:
            await self._reply_error(endpoint, request, exc, started)

    async def _reply_error(
        self, endpoint: Endpoint, request: Request, exc: Exception, started: float
    ) -> None:
        if problem_for(exc) is None:
            log.error("nats service %s: unexpected error", endpoint.name, exc_info=exc)
        body, headers = error_reply(exc, instance=endpoint.subject)
        self.metrics.errors.inc(endpoint=endpoint.name, status=headers[ERROR_CODE_HEADER])
        try:
            await self._respond(request, body, headers)
        except Exception as failed:  # the connection is closing: nothing more can be said
            log.warning("nats service %s: error reply not sent: %s", endpoint.name, escape(failed))
        self.metrics.seconds.observe(time.perf_counter() - started)

    def _check_size(self, body: bytes) -> None:
        """Raises :class:`ApiError` 400 (at ``query.limit``) when ``body`` cannot travel in one message
        (larger than the server's ``max_payload``): REST would send it, NATS cannot; fewer rows can."""
        largest = self.state.hub.nats.max_payload
        if self.max_reply_bytes is not None:
            largest = min(largest, self.max_reply_bytes)
        if len(body) > largest:
            raise ApiError(
                f"the answer is {len(body)} bytes, more than one NATS message holds ({largest}); ask for fewer rows",
                errors=[{"loc": "query.limit", "msg": "the page is too large for one NATS message"}],
            )

    @staticmethod
    async def _respond(request: Request, body: bytes, headers: dict[str, str]) -> None:
        if not request._msg.reply:  # a publish, not a request: there is no one to answer
            return
        await request.respond(body, headers=headers)
