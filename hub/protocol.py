"""The websocket protocol's ops and codes, defined once (documented in ``docs/websocket.md`` and
``hub/asyncapi.yaml``).

Every frame is ``{"op": …}``: :data:`CLIENT_OPS` are what a client may send, :data:`SERVER_OPS` what the
hub sends. Close codes end a connection; error codes name an ``{"op": "error", "code": …}`` frame that
leaves it open. ``hub`` sends some of them itself (a slow consumer, an idle socket, shutdown); ``api`` maps its
errors to them through the one table in :mod:`api.errors`. Nothing here imports from ``api``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLIENT_OPS",
    "CLOSE_CODES",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_IDLE",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_SLOW",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_MANY",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNAUTHORIZED",
    "ERROR_BAD_FRAME",
    "ERROR_CODES",
    "ERROR_FORBIDDEN",
    "ERROR_INVALID",
    "ERROR_INVALID_FILTER",
    "ERROR_TOO_MANY_SUBSCRIPTIONS",
    "ERROR_UNAUTHENTICATED",
    "ERROR_UNKNOWN_OP",
    "ERROR_UNKNOWN_SUBSCRIPTION",
    "SERVER_OPS",
]

# -- ops ----------------------------------------------------------------------------------------------
CLIENT_OPS: Final = ("auth", "refresh", "subscribe", "unsubscribe", "ping", "pong")
SERVER_OPS: Final = ("welcome", "refreshed", "subscribed", "unsubscribed", "event", "ping", "pong", "error")

# -- close codes (RFC 6455 ones below 4000, ours in the 4000-4999 private range, mirroring HTTP) ------
CLOSE_NORMAL: Final = 1000  # the client closed
CLOSE_GOING_AWAY: Final = 1001  # the node is shutting down: reconnect anywhere and resume
CLOSE_TOO_BIG: Final = 1009  # a frame over the size limit
CLOSE_INTERNAL: Final = 1011  # a bug: the hub's log has the traceback
CLOSE_TRY_AGAIN: Final = 1013  # the hub cannot check tokens now (its key set is unavailable)
CLOSE_UNAUTHORIZED: Final = 4401  # no valid token in time, a bad token, or it expired
CLOSE_FORBIDDEN: Final = 4403  # the token lacks the scope
CLOSE_IDLE: Final = 4408  # nothing received for the idle timeout
CLOSE_SLOW: Final = 4409  # slow consumer: the outbox was full or a frame waited too long
CLOSE_TOO_MANY: Final = 4429  # too many connections on this node, or too many failed authentications

CLOSE_CODES: Final = frozenset(
    {
        CLOSE_NORMAL,
        CLOSE_GOING_AWAY,
        CLOSE_TOO_BIG,
        CLOSE_INTERNAL,
        CLOSE_TRY_AGAIN,
        CLOSE_UNAUTHORIZED,
        CLOSE_FORBIDDEN,
        CLOSE_IDLE,
        CLOSE_SLOW,
        CLOSE_TOO_MANY,
    }
)

# -- error frame codes --------------------------------------------------------------------------------
ERROR_BAD_FRAME: Final = "bad_frame"  # not a JSON object with a string op, or a binary frame
ERROR_UNKNOWN_OP: Final = "unknown_op"
ERROR_INVALID: Final = "invalid"  # an op whose fields are wrong
ERROR_INVALID_FILTER: Final = "invalid_filter"
ERROR_TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
ERROR_UNKNOWN_SUBSCRIPTION: Final = "unknown_subscription"
ERROR_UNAUTHENTICATED: Final = "unauthenticated"
ERROR_FORBIDDEN: Final = "forbidden"

ERROR_CODES: Final = frozenset(
    {
        ERROR_BAD_FRAME,
        ERROR_UNKNOWN_OP,
        ERROR_INVALID,
        ERROR_INVALID_FILTER,
        ERROR_TOO_MANY_SUBSCRIPTIONS,
        ERROR_UNKNOWN_SUBSCRIPTION,
        ERROR_UNAUTHENTICATED,
        ERROR_FORBIDDEN,
    }
)
