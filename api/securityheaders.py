"""Security headers on every HTTP response the hub sends: ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY``, a ``Referrer-Policy``, a ``Content-Security-Policy`` (one for HTML pages, a
locked-down one for everything else, both with ``frame-ancestors 'none'``) and, only when the request
arrived over TLS, ``Strict-Transport-Security``.

"Over TLS" is the ASGI scope's ``scheme``: ``https`` for a TLS connection to uvicorn, or when a trusted
proxy (uvicorn's ``forwarded_allow_ips``, ``TICKSTOCK_FORWARDED_ALLOW_IPS``) says ``X-Forwarded-Proto:
https``. A header the route set itself (the dashboard's own CSP) is never replaced.

Pure ASGI: the headers are added once, to the ``http.response.start`` message, with no body buffering
(the REST hot path pays for one pass over the response's few headers).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_HSTS_MAX_AGE_S",
    "DEFAULT_HTML_CSP",
    "DEFAULT_OTHER_CSP",
    "DEFAULT_REFERRER_POLICY",
    "REFERRER_POLICIES",
    "SecurityHeaders",
    "SecurityHeadersMiddleware",
]

# Everything /docs (Swagger UI) and the dashboard load is this origin; both draw icons from data: URIs.
DEFAULT_HTML_CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# JSON, problem documents, metrics, assets: nothing in them may load or run anything.
DEFAULT_OTHER_CSP = "default-src 'none'; frame-ancestors 'none'"
DEFAULT_REFERRER_POLICY = "no-referrer"
DEFAULT_HSTS_MAX_AGE_S = 31_536_000  # one year
REFERRER_POLICIES = frozenset(
    {
        "no-referrer",
        "no-referrer-when-downgrade",
        "origin",
        "origin-when-cross-origin",
        "same-origin",
        "strict-origin",
        "strict-origin-when-cross-origin",
        "unsafe-url",
    }
)

_CSP = b"content-security-policy"
_HSTS = b"strict-transport-security"
_CONTENT_TYPE = b"content-type"
_HTML = b"text/html"


@dataclass(frozen=True, kw_only=True)
class SecurityHeaders:
    """The header values; ``hsts_max_age_s`` 0 sends no HSTS. Values are checked by the settings."""

    html_csp: str = DEFAULT_HTML_CSP
    other_csp: str = DEFAULT_OTHER_CSP
    referrer_policy: str = DEFAULT_REFERRER_POLICY
    hsts_max_age_s: int = DEFAULT_HSTS_MAX_AGE_S


class SecurityHeadersMiddleware:
    """Adds :class:`SecurityHeaders` to each HTTP response that lacks them; websockets pass through."""

    def __init__(self, app: ASGIApp, *, headers: SecurityHeaders | None = None) -> None:
        self.app = app
        h = headers or SecurityHeaders()
        self._always = (
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", h.referrer_policy.encode()),
        )
        self._html_csp = (_CSP, h.html_csp.encode())
        self._other_csp = (_CSP, h.other_csp.encode())
        self._hsts = (_HSTS, f"max-age={h.hsts_max_age_s}".encode()) if h.hsts_max_age_s > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = self._completed(message, tls=tls)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _completed(self, message: Message, *, tls: bool) -> Message:
        """``message`` with the headers it lacks added (a new message: the route's list is not touched)."""
        headers = message.get("headers", ())
        present: set[bytes] = set()
        html = False
        for name, value in headers:
            name = name.lower()
            present.add(name)
            if name == _CONTENT_TYPE:
                html = value[: len(_HTML)].lower() == _HTML
        added = [header for header in self._always if header[0] not in present]
        if _CSP not in present:
            added.append(self._html_csp if html else self._other_csp)
        if tls and self._hsts is not None and _HSTS not in present:
            added.append(self._hsts)
        if not added:
            return message
        return {**message, "headers": [*headers, *added]}
