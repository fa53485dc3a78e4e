"""Every NATS subject of the hub, and the symbol tokens that carry a symbol in one.

Producers publish to ``tickstock.ingest.<timeframe>.<token>``; the hub republishes validated events to
``tickstock.patterns.<timeframe>.<token>``, dead letters to ``tickstock.dlq.<reason>``, and announces a
user's universe change on ``tickstock.users.universe.changed``, a cache bump on ``tickstock.cache.bumped``
and a lost one on ``tickstock.cache.lost``. Other services query the hub by request/reply on
``tickstock.svc.scan``, ``tickstock.svc.symbols`` and ``tickstock.svc.universes`` (the NATS service
``tickstock``; its discovery subjects ``$SRV.…`` are nats-py's). Nothing else in the code spells a subject.

A NATS subject token cannot hold ``.``, ``*``, ``>`` or whitespace, so a symbol (see
:func:`hub.model.canonical_symbol`) is carried as a *token*: it replaces ``.`` with ``_`` and ``/`` with
``~`` (``/`` is legal in NATS, but the MQTT gateway rewrites it to ``.``); every other character is kept.
Neither ``_`` nor ``~`` is in the symbol alphabet, so the mapping is a bijection between canonical
(upper-case) symbols and tokens of 1-15 characters from ``A-Z 0-9 _ - ~ ^ = $``: ``BRK.B`` <-> ``BRK_B``.
:func:`token_to_symbol` accepts exactly the tokens :func:`symbol_to_token` can produce (so no lower
case) and inverts it.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from hub.model import MAX_SYMBOL_LENGTH, TIMEFRAMES, EventError, PatternEvent, brief, canonical_symbol

__all__ = [
    "CACHE_BUMPED_SUBJECT",
    "CACHE_LOST_SUBJECT",
    "CLEAN_PREFIX",
    "CLEAN_WILDCARD",
    "DLQ_PREFIX",
    "DLQ_WILDCARD",
    "INGEST_PREFIX",
    "INGEST_WILDCARD",
    "MAX_DELIVERIES_ADVISORY",
    "PARTITIONED_PREFIX",
    "SCAN_SUBJECT",
    "SYMBOLS_SUBJECT",
    "UNIVERSES_SUBJECT",
    "UNIVERSE_CHANGED_SUBJECT",
    "UNPARSED_SUBJECT",
    "WRITERS_SUBJECT",
    "SubjectParts",
    "check_subject",
    "clean_subject",
    "ingest_subject",
    "parse_subject",
    "partition_filter",
    "partition_transform",
    "producer_subject",
    "symbol_to_token",
    "token_to_symbol",
]

INGEST_PREFIX = "tickstock.ingest"
"""Producers publish here: ``tickstock.ingest.<timeframe>.<token>`` (stream ``TICKSTOCK_INGEST``)."""
CLEAN_PREFIX = "tickstock.patterns"
"""The hub republishes stored events here: ``tickstock.patterns.<timeframe>.<token>`` (``TICKSTOCK_PATTERNS``)."""
DLQ_PREFIX = "tickstock.dlq"
"""Dead letters: ``tickstock.dlq.<reason>`` (stream ``TICKSTOCK_DLQ``)."""
INGEST_WILDCARD = f"{INGEST_PREFIX}.>"
UNPARSED_SUBJECT = f"{INGEST_PREFIX}.unparsed"
"""Where the Redis bridge forwards a message it cannot parse, so the writer dead-letters it with a reason."""
PARTITIONED_PREFIX = "tickstock.ingestp"
"""Where the ingest stream *stores* ``tickstock.ingest.<timeframe>.<token>``: ``tickstock.ingestp.<partition>.
<timeframe>.<token>`` (a subject transform on the stream). Outside ``tickstock.ingest.>``, so a producer
cannot pick a partition by publishing there: no stream listens on it."""
CLEAN_WILDCARD = f"{CLEAN_PREFIX}.>"
DLQ_WILDCARD = f"{DLQ_PREFIX}.>"
UNIVERSE_CHANGED_SUBJECT = "tickstock.users.universe.changed"
"""Core NATS: ``{"subject": <token subject>}`` after a user's universe changed (fan-out and cache follow it)."""
CACHE_BUMPED_SUBJECT = "tickstock.cache.bumped"
"""Core NATS: ``{"generations": [...]}`` a node bumped in Redis (every node drops its in-process copies)."""
CACHE_LOST_SUBJECT = "tickstock.cache.lost"
"""Core NATS: ``{"generations": [...]}`` a node could not bump in Redis (the others replay it)."""
SCAN_SUBJECT = "tickstock.svc.scan"
"""Core NATS request/reply: a scan, as ``GET /api/patterns/scan`` answers it (docs/nats-contract.md)."""
SYMBOLS_SUBJECT = "tickstock.svc.symbols"
"""Core NATS request/reply: a page of the symbol directory, as ``GET /api/symbols`` answers it."""
UNIVERSES_SUBJECT = "tickstock.svc.universes"
"""Core NATS request/reply: every universe with its member count, as ``GET /api/universes`` answers it."""
WRITERS_SUBJECT = "tickstock.hub.writers"
"""Core NATS request: every hub node answers ``{"node": <id>, "partitions": [...]}`` (its pinned ingest
partitions), so the nodes can count each other and share the partitions."""
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
"""JetStream's advisory when a consumer gave up on a message; ``.<stream>.<consumer>`` follows."""

_TOKEN = re.compile(rf"[A-Z0-9_\-~^=$]{{1,{MAX_SYMBOL_LENGTH}}}")
_KINDS: dict[str, Literal["ingest", "clean"]] = {INGEST_PREFIX: "ingest", CLEAN_PREFIX: "clean"}
_TO_TOKEN = str.maketrans({".": "_", "/": "~"})
_FROM_TOKEN = str.maketrans({"_": ".", "~": "/"})


class SubjectParts(NamedTuple):
    """A parsed subject: ``kind`` is ``"ingest"`` or ``"clean"``, ``symbol`` is canonical."""

    kind: Literal["ingest", "clean"]
    timeframe: str
    symbol: str


def symbol_to_token(symbol: str) -> str:
    """The subject token for ``symbol`` (``BRK.B`` -> ``BRK_B``); raises ``invalid_symbol``."""
    return canonical_symbol(symbol).translate(_TO_TOKEN)


def token_to_symbol(token: str) -> str:
    """The symbol a subject token stands for (``BRK_B`` -> ``BRK.B``); raises ``invalid_symbol``.

    Exact inverse of :func:`symbol_to_token`: lower-case tokens are rejected, not folded.
    """
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise EventError("invalid_symbol", f"subject token {brief(token)} is not a valid symbol token")
    return token.translate(_FROM_TOKEN)


def _subject(prefix: str, timeframe: str, symbol: str) -> str:
    if timeframe not in TIMEFRAMES:
        raise EventError(
            "unknown_timeframe", f"timeframe {brief(timeframe)} is not one of {' '.join(TIMEFRAMES)}"
        )
    return f"{prefix}.{timeframe}.{symbol_to_token(symbol)}"


def ingest_subject(timeframe: str, symbol: str) -> str:
    """``tickstock.ingest.<timeframe>.<token>``; raises ``unknown_timeframe`` or ``invalid_symbol``."""
    return _subject(INGEST_PREFIX, timeframe, symbol)


def clean_subject(timeframe: str, symbol: str) -> str:
    """``tickstock.patterns.<timeframe>.<token>``; raises ``unknown_timeframe`` or ``invalid_symbol``."""
    return _subject(CLEAN_PREFIX, timeframe, symbol)


def partition_transform(partitions: int) -> tuple[str, str]:
    """The ingest stream's subject transform ``(source, destination)``: ``tickstock.ingest.<a>.<b>`` is
    stored as ``tickstock.ingestp.<partition of b>.<a>.<b>``; any other ingest subject stays as it is."""
    return (
        f"{INGEST_PREFIX}.*.*",
        f"{PARTITIONED_PREFIX}.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
    )


def partition_filter(partition: int) -> str:
    """The filter of partition ``partition``'s consumer: ``tickstock.ingestp.<partition>.>``."""
    return f"{PARTITIONED_PREFIX}.{partition}.>"


def producer_subject(subject: str) -> str:
    """The subject the producer published to: a stored ``tickstock.ingestp.<p>.<a>.<b>`` becomes
    ``tickstock.ingest.<a>.<b>``; any other subject is returned as it is."""
    parts = subject.split(".")
    if len(parts) == 5 and ".".join(parts[:2]) == PARTITIONED_PREFIX:
        return f"{INGEST_PREFIX}.{parts[3]}.{parts[4]}"
    return subject


def parse_subject(subject: str) -> SubjectParts:
    """Split an ingest or clean subject into ``(kind, timeframe, symbol)``; raises ``invalid_subject``."""
    parts = subject.split(".") if isinstance(subject, str) else []
    kind = _KINDS.get(".".join(parts[:2]))
    if kind is None or len(parts) != 4 or parts[2] not in TIMEFRAMES:
        raise EventError(
            "invalid_subject",
            f"subject {brief(subject)} is not {INGEST_PREFIX}|{CLEAN_PREFIX}.<timeframe>.<symbol token>",
        )
    try:
        symbol = token_to_symbol(parts[3])
    except EventError as exc:
        raise EventError("invalid_subject", f"subject {brief(subject)}: {exc.detail}") from None
    return SubjectParts(kind, parts[2], symbol)


def check_subject(event: PatternEvent, subject: str) -> None:
    """Check that ``subject`` names the event's timeframe and symbol.

    Raises ``invalid_subject`` if the subject is malformed, ``subject_mismatch`` if it disagrees.
    """
    _, timeframe, symbol = parse_subject(subject)
    if (timeframe, symbol) != (event.timeframe, event.symbol):
        raise EventError(
            "subject_mismatch",
            f"subject {subject!r} is for {symbol} {timeframe} but the event is for "
            f"{event.symbol} {event.timeframe}",
        )
