"""What every ``tickstock`` process sets up the same way (the command and each ``--workers`` process):
logging, the event loop, and which failures are reported in one line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

import psycopg
from nats.errors import Error as NatsError
from redis.exceptions import RedisError

from api.app import ConfigurationError
from api.requestid import RequestIdLogFilter
from api.settings import SettingsError
from hub.embedded import EmbeddedError

__all__ = ["USER_ERRORS", "configure_logging", "loop_factory"]

# Failures that mean "this configuration does not work": reported in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    SettingsError,
    ConfigurationError,
    EmbeddedError,
    psycopg.Error,
    NatsError,
    RedisError,
    OSError,
)


def configure_logging(level: str, *, process: str = "") -> None:
    """Log lines on stderr with the request id; ``process`` (e.g. ``worker 1``) leads each line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdLogFilter())
    lead = f"{process} " if process else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s {lead}%(name)s [%(request_id)s]: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with uvicorn[standard]): a faster event loop for the hub."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with the project
        return None
    return uvloop.new_event_loop
