"""A request to the hub's NATS service read as the REST query string it stands for, and its error reply.

A request's payload is a JSON object of the REST route's query parameters: ``{"symbol": ["AAPL",
"MSFT"], "limit": 10, "cursor": "…"}``. Each value is a string, a number or a boolean, or an array of
them for a parameter REST lets repeat; each is read as the text it would have in a query string
(``true``, ``10``, ``0.5``), so both transports go through one parser, with one set of rules and errors.
An empty payload is ``{}``.

An error reply follows the NATS micro convention (headers ``Nats-Service-Error`` and
``Nats-Service-Error-Code``) and carries REST's problem document as its payload, with the same status.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.datastructures import QueryParams

from api.errors import PROBLEM_TYPE, UNEXPECTED_DETAIL, ApiError, problem_document, problem_for
from api.validation import parse_json, query_error
from hub.parsing import loads_json

__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "MAX_REQUEST_BYTES",
    "error_reply",
    "query_string",
]

MAX_REQUEST_BYTES = 64 * 1024
MAX_DESCRIPTION_CHARS = 256  # of the Nats-Service-Error header; the payload has the whole detail
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
# A header value must stay on its line: control characters (CR, LF ...) and non-ASCII are escaped.
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _text(value: Any) -> str | None:
    """``value`` as a query string would spell it; None for what a query string cannot hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return None


def query_string(data: bytes) -> bytes:
    """The query string a request's payload stands for (see the module docstring).

    Raises :class:`ApiError` 413 beyond :data:`MAX_REQUEST_BYTES`, 400 when the payload is not JSON (or
    repeats a key), not an object, or holds a value that is not a string, number, boolean or an array
    of them (every such value listed, located ``query.<name>``). The parameters themselves are checked
    by the route's own reader."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ApiError(f"the request is larger than {MAX_REQUEST_BYTES} bytes", status=413)
    if not data.strip():
        return b""
    document = parse_json(data, max_depth=2, loads=loads_json)
    if not isinstance(document, dict):
        raise ApiError(
            "the request must be a JSON object of query parameters",
            errors=[{"loc": "body", "msg": "not a JSON object"}],
        )
    items: list[tuple[str, str]] = []
    errors = []
    for name, value in document.items():
        texts = [_text(v) for v in (value if isinstance(value, list) else [value])]
        if any(t is None for t in texts):
            errors.append(
                {"loc": f"query.{name}", "msg": "must be a string, number or boolean, or an array of them"}
            )
        items.extend((name, t) for t in texts if t is not None)
    if errors:
        raise query_error(errors)
    try:
        return str(QueryParams(items)).encode("ascii")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") has no UTF-8 form
        raise ApiError(
            "the request holds text that is not valid Unicode",
            errors=[{"loc": "body", "msg": "a lone surrogate"}],
        ) from None


def error_reply(exc: BaseException, *, instance: str) -> tuple[bytes, dict[str, str]]:
    """The payload and headers answering ``exc``: REST's problem document for it (a 500 with a generic
    detail for an error the table does not know), and the micro error headers with the status as the
    code and the detail, on one line of printable ASCII, as the description."""
    found = problem_for(exc)
    status, detail = (found.status, found.detail) if found is not None else (500, UNEXPECTED_DETAIL)
    body = problem_document(
        status,
        detail,
        title=found.title if found is not None else None,
        errors=found.errors if found is not None else None,
        instance=instance,
    )
    headers = dict(found.headers or {}) if found is not None else {}
    headers["Content-Type"] = PROBLEM_TYPE
    headers[ERROR_HEADER] = _UNSAFE.sub(_escape, detail)[:MAX_DESCRIPTION_CHARS]
    headers[ERROR_CODE_HEADER] = str(status)
    return json.dumps(body, separators=(",", ":")).encode(), headers


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
