"""The hub's exceptions: one base, :class:`HubError`, for everything ``hub`` raises on purpose.

They carry a domain ``kind`` (what went wrong), never an HTTP status or a websocket close code: the
one table in :mod:`api.errors` turns them into those.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["HubError", "ReplayError", "ReplayErrorKind", "SubscriptionLimitError"]

ReplayErrorKind = Literal["not_found", "rejected"]


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class ReplayError(HubError, ValueError):
    """A dead letter cannot be replayed.

    ``kind`` is ``not_found`` (no dead letter with that id) or ``rejected`` (its payload, or the
    corrected one, would be rejected again; ``reason`` is the dead-letter reason it would get).
    """

    def __init__(
        self, message: str, *, kind: ReplayErrorKind = "rejected", reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind: ReplayErrorKind = kind
        self.reason = reason


class SubscriptionLimitError(HubError, OverflowError):
    """A connection asked for more subscriptions than ``TICKSTOCK_WS_MAX_SUBSCRIPTIONS`` allows."""
