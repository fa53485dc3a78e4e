"""The CloudEvents 1.0 attributes of a clean-stream message.

Each stored event is published to ``tickstock.patterns.<timeframe>.<token>`` as a CloudEvent in
*binary content mode* as the CloudEvents NATS protocol binding defines it (section 3.1): the body is
the event's canonical JSON, unchanged, and every context attribute is a NATS header named ``ce-`` +
the attribute — ``datacontenttype`` included, as ``ce-datacontenttype`` (the NATS binding, unlike the
HTTP one, leaves ``Content-Type`` to mark structured mode). Values are percent-encoded as the binding
requires (space, ``"``, ``%`` and everything outside printable ASCII; only an event id can hold any).

============================  =========================================================
``ce-specversion``            ``1.0``
``ce-id``                     the event id (also ``Nats-Msg-Id``)
``ce-source``                 :attr:`CloudEvents.source` (``TICKSTOCK_CLOUDEVENTS_SOURCE``)
``ce-type``                   ``io.tickstock.pattern.<detected|updated|expired>.v1``
``ce-time``                   ``detected_at``, RFC 3339 in UTC, as in the body
``ce-subject``                the symbol (``BRK.B``, not the subject token)
``ce-dataschema``             :data:`DATA_SCHEMA`, the ``$id`` of ``schema/pattern-event-v1.json``
``ce-datacontenttype``        ``application/json``
============================  =========================================================
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

from hub.model import EVENT_TYPES, PatternEvent, format_utc

__all__ = [
    "DATA_CONTENT_TYPE",
    "DATA_SCHEMA",
    "DEFAULT_SOURCE",
    "HEADERS",
    "SPEC_VERSION",
    "TYPES",
    "CloudEvents",
    "check_source",
    "percent_encode",
]

SPEC_VERSION: Final = "1.0"
DEFAULT_SOURCE: Final = "/tickstock/hub"
DATA_CONTENT_TYPE: Final = "application/json"
DATA_SCHEMA: Final = "urn:tickstock:schema:pattern-event:v1"
TYPES: Final = {kind: f"io.tickstock.pattern.{kind.removeprefix('pattern_')}.v1" for kind in EVENT_TYPES}
"""The CloudEvents ``type`` of each event ``type``: ``pattern_detected`` -> ``io.tickstock.pattern.detected.v1``."""
HEADERS: Final = tuple(
    f"ce-{name}"
    for name in ("specversion", "id", "source", "type", "time", "subject", "dataschema", "datacontenttype")
)
MAX_SOURCE_LENGTH = 512

# Printable ASCII but space, '"' and '%' travels as it is (NATS binding, section 3.1.3.2).
_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"%')
_ALL_SAFE = re.compile(r"[!#$&-~]*")  # the same set, for the common case that needs no encoding
# A URI-reference (RFC 3986): its characters, with '%' only as the start of an escape.
_URI_REFERENCE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def percent_encode(value: str) -> str:
    """``value`` as a header value of the CloudEvents NATS binding: each character outside printable
    ASCII, and space, ``"`` and ``%``, as the ``%XX`` escapes of its UTF-8 bytes."""
    if _ALL_SAFE.fullmatch(value):
        return value
    return quote(value, safe=_SAFE)


def check_source(source: str) -> str:
    """``source`` when it can be the CloudEvents ``source``: a non-empty URI-reference of at most
    :data:`MAX_SOURCE_LENGTH` characters. Raises ``ValueError`` otherwise."""
    if not (0 < len(source) <= MAX_SOURCE_LENGTH and _URI_REFERENCE.fullmatch(source)):
        raise ValueError(
            f"the CloudEvents source must be a URI-reference of 1-{MAX_SOURCE_LENGTH} characters "
            f"(e.g. {DEFAULT_SOURCE} or https://hub.example.com), not {source[:80]!r}"
        )
    return source


class CloudEvents:
    """Builds the ``ce-*`` headers of clean-stream messages. ``source`` names this hub deployment (the
    same on every node: the events are the deployment's, not a node's); one that is not a
    URI-reference raises ``ValueError``."""

    __slots__ = ("_fixed", "source")

    def __init__(self, *, source: str = DEFAULT_SOURCE) -> None:
        self.source = check_source(source)
        self._fixed = {
            "ce-specversion": SPEC_VERSION,
            "ce-source": percent_encode(source),
            "ce-dataschema": DATA_SCHEMA,
            "ce-datacontenttype": DATA_CONTENT_TYPE,
        }

    def headers(self, event: PatternEvent) -> dict[str, str]:
        """The CloudEvents headers of ``event``'s clean-stream message (a new dict)."""
        return {
            **self._fixed,
            "ce-id": percent_encode(event.id),
            "ce-type": TYPES[event.type],
            "ce-time": format_utc(event.detected_at),
            "ce-subject": percent_encode(event.symbol),
        }
