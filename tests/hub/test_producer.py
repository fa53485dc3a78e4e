"""Who produced an event: the signed producer header is believed for the very event it was made for."""

from __future__ import annotations

import secrets

from hub.catalog import PatternCatalog
from hub.parsing import parse_event
from hub.producer import PRODUCER_HEADER, PRODUCER_SIG_HEADER, producer_of, sign_producer
from tests.support import make_event

KEY = secrets.token_bytes(32)
CATALOG = PatternCatalog.permissive()


def _event(**changes: object):  # type: ignore[no-untyped-def]
    return parse_event({**make_event(1, prefix="prod", source="detector-a"), **changes}, catalog=CATALOG)


def _headers(event, producer: str = "http:alice") -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {PRODUCER_HEADER: producer, PRODUCER_SIG_HEADER: sign_producer(KEY, event, producer)}


def test_a_signed_producer_is_believed() -> None:
    event = _event()
    assert producer_of(event, _headers(event), KEY) == "http:alice"


def test_copied_headers_vouch_for_nothing_else() -> None:
    genuine = _event()
    altered = _event(confidence=0.77)  # the same id, another payload
    assert producer_of(altered, _headers(genuine), KEY) == "nats:detector-a"
    other_id = _event(id="prod-other")
    assert producer_of(other_id, _headers(genuine), KEY) == "nats:detector-a"


def test_a_forged_or_absent_signature_falls_back_to_the_source() -> None:
    event = _event()
    forged = {PRODUCER_HEADER: "http:alice", PRODUCER_SIG_HEADER: "00" * 32}
    assert producer_of(event, forged, KEY) == "nats:detector-a"
    assert producer_of(event, {PRODUCER_HEADER: "http:alice"}, KEY) == "nats:detector-a"
    assert producer_of(event, _headers(event), None) == "nats:detector-a"  # no key: nothing is believed
    assert producer_of(event, _headers(event), secrets.token_bytes(32)) == "nats:detector-a"


def test_control_characters_never_reach_the_stored_producer() -> None:
    event = _event(source="evil\r\nsource")
    assert "\r" not in producer_of(event, None, KEY) and "\n" not in producer_of(event, None, KEY)
    claimed = "http:bob\r\nX-Injected: 1"
    stored = producer_of(event, _headers(event, claimed), KEY)
    assert stored.startswith("http:bob") and "\n" not in stored and "\r" not in stored
