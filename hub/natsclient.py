"""nats-py's client, minus one way any publisher could silence it.

nats-py decodes a message's header block in its read loop; a block it cannot decode (a status line or
a description that is not UTF-8: ``NATS/1.0 \\xff\\xff\\xff``) raised there, and its read loop logs the
error and stops for good. The connection still says it is connected, but reads nothing: no ingest,
no clean stream, no notices, no service requests, until its pings go stale minutes later. Whoever may
publish to a subject the hub subscribes to (a service request, a notice) could do that to every node.
:class:`HubClient` delivers such a message without headers instead (a service request without its
``Authorization`` header is answered 401), counted and logged.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client

__all__ = ["HubClient"]

log = logging.getLogger("tickstock.broker")


class HubClient(Client):
    """A nats-py client whose read loop survives a header block it cannot decode."""

    undecodable_headers = 0  # messages delivered without their headers

    async def _process_headers(self, headers: bytes | bytearray | None) -> dict[str, str] | None:
        try:
            return await super()._process_headers(headers)
        except Exception as exc:  # untrusted bytes: whatever fails to decode, the loop must go on
            self.undecodable_headers += 1
            log.warning(
                "nats: a message's headers do not decode (%s); delivered without them", type(exc).__name__
            )
            return None
