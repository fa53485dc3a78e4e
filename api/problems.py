"""The problem document (RFC 9457): the body of every error response, as the OpenAPI document shows it.

:mod:`api.errors` builds these bodies; this module is their schema.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["FieldError", "Problem"]


class FieldError(BaseModel):
    """One field at fault: ``loc`` is ``body.symbols[3].name``, ``query.limit`` or ``path.name``."""

    model_config = ConfigDict(extra="forbid")

    loc: str
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem document, the body of every error response."""

    model_config = ConfigDict(extra="forbid")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None
    request_id: str | None = None  # also in the X-Request-ID header; quote it when reporting a problem
