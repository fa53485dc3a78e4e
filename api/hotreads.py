"""Cached reads answered before the router: ``GET /api/patterns/scan``, ``/api/universes``,
``/api/universes/{key}``, ``/api/symbols``, ``/api/symbols/{symbol}``, ``/api/patterns/definitions``.

On these paths a request's own handling, not the data, is most of the cost: Starlette's router, its
request and response objects, the exception wrappers and the query's validation came to about two thirds
of the CPU a cached ``/api/universes`` took (``ops/bench_hotpath.py --profile``). So the full path
teaches this one which cache entry answers a ``GET`` of a given path and query string, once it has
validated them and served the entry; the next identical ``GET`` is answered here when all of these hold,
with nothing but dictionary lookups:

* its ``Authorization`` token was verified recently and may be used without checking it again
  (:meth:`api.auth.Authenticator.remembered`), and it has the scope the route requires;
* what the full path validated still holds (a scan's pattern catalog is the same);
* this process holds a copy of the entry that may be served (:meth:`api.cache.HubCache.local_copy`: the
  same copies, the same notices and age bound as the full path's);
* the node's rate-limit lease has a token for the principal (:meth:`api.ratelimit.RateLimiter.take_now`).

The checks before the last take nothing, so a request that fails any of them goes on to the full path
as if this module did not exist, which verifies the token (a failure is charged to its address), takes
the rate-limit token or refuses with 429, validates and answers. The answer is the full path's: status,
body (a scan's ends with this request's own ``query_ms`` and cache age), ``ETag``, ``Cache-Control``,
``X-Cache``, the ``RateLimit-*`` headers, and 304 when ``If-None-Match`` matches; the middlewares outside
this one add the request id, the worker and the security headers to both alike, and a hit is counted in
the cache's metrics as a hit. Only answers that depend on nothing but the path and the query string are
learned (their routes answer with :func:`hot_response`; a scan of the caller's own universe is not); at
most ``max_entries`` paths, the least recently learned first out (a path in use is learned again each
time the full path renews its copy), each with a query string of at most ``MAX_QUERY_BYTES``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.etags import CACHE_CONTROL, cached_response, entity_tag, none_match
from hub.metrics import CounterView, Registry
from store.cache_entries import Served, Source

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "MAX_QUERY_BYTES",
    "HotRead",
    "HotReadMiddleware",
    "HotReads",
    "hot_response",
]

DEFAULT_MAX_ENTRIES = 1024
MAX_QUERY_BYTES = 512
_AUTHORIZATION = b"authorization"
_IF_NONE_MATCH = b"if-none-match"
_FIXED = ((b"cache-control", CACHE_CONTROL.encode()), (b"x-cache", b"hit"))
_JSON = (b"content-type", b"application/json")


# The answer's body from the cached one, its age (seconds) and the time taken so far (milliseconds).
Compose = Callable[[bytes, float, float], bytes]


@dataclass(frozen=True, slots=True)
class HotRead:
    """The cache entry that answers a path and query string, the scope its route requires, and how the
    route turns the entry into its answer: ``compose`` (the cached body as it is when ``None``), a weak
    ``ETag`` or not, and ``still`` (when it says False, what the full path validated no longer holds)."""

    source: Source
    scope: str
    compose: Compose | None = None
    weak: bool = False
    still: Callable[[], bool] | None = None


class HotReads:
    """Learned ``(path, query string) -> HotRead``; bounded, least recently learned first out. No I/O."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._reads: OrderedDict[tuple[str, bytes], HotRead] = OrderedDict()
        self.served = 0  # answers given here (for the tests and the bench)

    def __len__(self) -> int:
        return len(self._reads)

    def register(self, registry: Registry) -> bool:
        """Expose ``tickstock_hot_reads_total`` (the answers given here) in ``registry`` (the hub's
        ``/metrics``); False when that registry already has it (several apps on one hub, as in the tests)."""
        try:
            registry.add(
                CounterView(
                    "tickstock_hot_reads_total",
                    "Cached reads answered before the router (api/hotreads.py); every one is also a cache hit.",
                    lambda: float(self.served),
                )
            )
        except ValueError:
            return False
        return True

    def learn(self, request: Request, source: Source, **how: Any) -> None:
        """``request`` (a ``GET`` the full path validated and answered from ``source``, a copy this process
        keeps) is answered from ``source`` next time, as ``how`` says (:class:`HotRead`'s fields). Its
        route must require a scope."""
        scope: str | None = getattr(request.scope.get("endpoint"), "required_scope", None)
        query: bytes = request.scope.get("query_string", b"")
        if request.method != "GET" or scope is None or len(query) > MAX_QUERY_BYTES or not self.max_entries:
            return
        key = (get_route_path(request.scope), query)
        self._reads[key] = HotRead(source, scope, **how)
        self._reads.move_to_end(key)
        while len(self._reads) > self.max_entries:
            self._reads.popitem(last=False)

    def find(self, path: str, query: bytes) -> HotRead | None:
        return self._reads.get((path, query))


class HotReadMiddleware:
    """Pure ASGI: answers a learned ``GET`` when it can (see the module docstring), else passes it on."""

    def __init__(self, app: ASGIApp, *, reads: HotReads) -> None:
        self.app = app
        self.reads = reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and self.reads:
            read = self.reads.find(get_route_path(scope), scope["query_string"])
            answer = None if read is None else self._answer(scope, read)
            if answer is not None:
                status, headers, body = answer
                self.reads.served += 1
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope, read: HotRead) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Status, headers and body, or ``None`` (nothing taken) when the full path must answer."""
        started = time.perf_counter()
        if read.still is not None and not read.still():
            return None
        state = scope["app"].state  # learned reads imply an open hub with a cache (create_app's limiter)
        hub, limiter = state.hub, state.rate_limiter
        if hub.cache is None:  # an app on another hub state than the one that taught it
            return None
        authorization = if_none_match = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's request.headers.get
            if name == _AUTHORIZATION and authorization is None:
                authorization = value
            elif name == _IF_NONE_MATCH and if_none_match is None:
                if_none_match = value
        if authorization is None:
            return None
        principal = state.auth.remembered(authorization.decode("latin-1"))
        if principal is None or not principal.has(read.scope):
            return None
        source = read.source
        copy = hub.cache.local_copy(source.route, source.key, source.deps)
        if copy is None:
            return None
        decision = limiter.take_now(hub.redis, principal.subject, admin="admin" in principal.scopes)
        if decision is None:
            return None
        hub.cache.record(source.route, "hit")
        etag = entity_tag(copy.tag, weak=read.weak)
        headers = [(b"etag", etag.encode()), *_FIXED]
        if if_none_match is not None and none_match(if_none_match.decode("latin-1"), etag):
            status, body = 304, b""
        else:
            status, body = 200, copy.body
            if read.compose is not None:
                age_s = max(0.0, time.time() - copy.computed_at)
                body = read.compose(body, age_s, (time.perf_counter() - started) * 1000)
            headers += [(b"content-length", b"%d" % len(body)), _JSON]
        if decision.checked:
            headers += [
                (b"ratelimit-limit", b"%d" % decision.limit),
                (b"ratelimit-remaining", b"%d" % decision.remaining),
            ]
        return status, headers, body


def hot_response(
    request: Request,
    served: Served,
    *,
    content: bytes | None = None,
    compose: Compose | None = None,
    weak: bool = False,
    still: Callable[[], bool] | None = None,
) -> Response:
    """:func:`api.etags.cached_response` (``content``: the body, made of the served one by ``compose``),
    and the request learned by the app's :class:`HotReads` when this process keeps a copy of the body
    (``served.source``). Only for answers that depend on nothing but the path and the query string (and
    what ``still`` checks): a route clears ``source`` for one that depends on the caller."""
    reads: HotReads | None = getattr(request.app.state, "hot_reads", None)
    if reads is not None and served.source is not None:
        reads.learn(request, served.source, compose=compose, weak=weak, still=still)
    return cached_response(request, served, content=content, weak=weak)
