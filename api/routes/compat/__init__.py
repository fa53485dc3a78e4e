"""A drop-in for TickStock's REST clients: upstream's paths, parameters and response shapes (see
``docs/tickstock-compat.md``) served over the hub's own queries, under a configurable prefix
(``TICKSTOCK_COMPAT_PREFIX``, default ``/tickstock``). Our own ``/api`` is unchanged."""

from __future__ import annotations

from starlette.routing import Route

from api.routes.compat import reference, tiers, users
from api.routes.compat.scan import scan

__all__ = ["routes"]


def routes(prefix: str) -> list[Route]:
    """Every compatibility route under ``prefix`` (``/tickstock``: ``/tickstock/api/patterns/scan``...).
    The fixed paths come before the tiers, as upstream registers them."""
    return [
        Route(f"{prefix}/api/patterns/scan", scan, methods=["GET"]),
        *reference.routes(prefix),
        *tiers.routes(prefix),
        *users.routes(prefix),
    ]
