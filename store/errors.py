"""The store's exceptions: one base, :class:`StoreError`, for everything the store raises on purpose.

Where a store error is also a driver error it subclasses the driver's class too, so callers' existing
``except psycopg.OperationalError`` clauses keep working (:class:`StoreUnavailable`); where it is not,
it must not pretend to be one: a migration whose checksum does not match is not retryable, so
``MigrationError`` (``store.migrate``) is a plain :class:`StoreError`.
"""

from __future__ import annotations

import psycopg

__all__ = ["StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """Base of every error the store raises on purpose (refused input, unreachable database, bad history)."""


class StoreUnavailable(StoreError, psycopg.OperationalError):
    """The database cannot be reached or used right now; retrying later may succeed."""
