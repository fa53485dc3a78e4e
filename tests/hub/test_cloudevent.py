"""CloudEvents 1.0 on the clean stream (hub/cloudevent.py): the headers, and real clean-stream messages
read back with the CloudEvents Python SDK as the same events the hub stored and serves."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import websockets
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event
from jsonschema import Draft202012Validator

from api.auth import mint_token
from api.settings import Settings, SettingsError
from hub.cloudevent import (
    DATA_CONTENT_TYPE,
    DATA_SCHEMA,
    DEFAULT_SOURCE,
    HEADERS,
    SPEC_VERSION,
    TYPES,
    CloudEvents,
    check_source,
    percent_encode,
)
from hub.model import EVENT_TYPES, PatternEvent, load_json_schema
from hub.subjects import clean_subject
from ops.cloudevent_peek import attributes, last_messages, render
from tests.conftest import JWT_SECRET, delete_all_streams
from tests.hub.test_asyncapi import component_message
from tests.support import LiveHub, make_event, publish_events, wait_for


def _event(**changes: Any) -> PatternEvent:
    raw = make_event(1, prefix="ce")
    raw.update(changes)
    return PatternEvent.model_validate(raw)


def test_types_name_every_event_type_in_reverse_dns() -> None:
    assert TYPES == {
        "pattern_detected": "io.tickstock.pattern.detected.v1",
        "pattern_updated": "io.tickstock.pattern.updated.v1",
        "pattern_expired": "io.tickstock.pattern.expired.v1",
    }
    assert set(TYPES) == set(EVENT_TYPES)


def test_the_data_schema_is_the_shipped_schemas_id() -> None:
    assert load_json_schema()["$id"] == DATA_SCHEMA


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain-ID_1.2~x", "plain-ID_1.2~x"),
        ('say "50%" now', "say%20%2250%25%22%20now"),
        ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),  # the binding's own example
        ("line\r\nbreak\x7f", "line%0D%0Abreak%7F"),
        ("", ""),
    ],
)
def test_percent_encoding_follows_the_nats_binding(value: str, encoded: str) -> None:
    assert percent_encode(value) == encoded
    assert unquote(encoded) == value
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)


@pytest.mark.parametrize(
    "source", [DEFAULT_SOURCE, "https://hub.example.com/tickstock?env=prod#x", "urn:tickstock:hub", "/a%2Fb"]
)
def test_a_uri_reference_is_a_source(source: str) -> None:
    assert check_source(source) == source
    assert CloudEvents(source=source).source == source


@pytest.mark.parametrize(
    "source", ["", "has space", "line\r\nX-Forged: 1", "/tické", "%zz", '/"quoted"', "/x<y>", "/" * 513]
)
def test_anything_else_is_refused_as_a_source(source: str) -> None:
    with pytest.raises(ValueError, match="URI-reference"):
        CloudEvents(source=source)
    with pytest.raises(SettingsError, match="TICKSTOCK_CLOUDEVENTS_SOURCE"):
        Settings.from_env({}, cloudevents_source=source)


def test_the_source_setting_defaults_and_reads_the_environment() -> None:
    assert Settings.from_env({}).cloudevents_source == DEFAULT_SOURCE
    env = {"TICKSTOCK_CLOUDEVENTS_SOURCE": "https://hub.example.com/tickstock"}
    assert Settings.from_env(env).cloudevents_source == "https://hub.example.com/tickstock"


def test_headers_carry_every_attribute_and_an_sdk_reads_them() -> None:
    event = _event(
        id='ce-"50%"-1', type="pattern_expired", symbol="brk.b", detected_at="2026-11-02T09:30:00.250+01:00"
    )
    headers = CloudEvents(source="https://hub.example.com/t?a=1%2F").headers(event)
    assert set(headers) == set(HEADERS)
    assert headers["ce-id"] == "ce-%2250%25%22-1"
    assert headers["ce-source"] == "https://hub.example.com/t?a=1%252F"
    assert headers["ce-time"] == "2026-11-02T08:30:00.250000Z"
    assert headers["ce-subject"] == "BRK.B"
    read = from_binary_event(HTTPMessage(headers, event.to_json_bytes()))
    assert read.get_id() == event.id
    assert read.get_source() == "https://hub.example.com/t?a=1%2F"
    assert read.get_type() == "io.tickstock.pattern.expired.v1"
    assert read.get_time() == event.detected_at
    assert read.get_subject() == "BRK.B"
    assert read.get_dataschema() == DATA_SCHEMA
    assert read.get_datacontenttype() == DATA_CONTENT_TYPE
    assert read.get_specversion() == SPEC_VERSION
    assert read.get_data() == json.loads(event.to_json_bytes())


# -- real clean-stream messages ------------------------------------------------------------------------

SOURCE = "https://hub.example.com/tickstock?env=test"


@pytest.mark.slow
async def test_clean_stream_messages_read_with_the_sdk_are_the_stored_events(settings: Settings) -> None:
    await delete_all_streams(settings.nats_url or "")
    events = [
        make_event(1, prefix="sdk", type="pattern_detected", symbol="AAPL"),
        make_event(2, prefix="sdk", type="pattern_updated", symbol="BRK.B", timeframe="1min"),
        {**make_event(3, prefix="sdk", type="pattern_expired", symbol="BTC/USD"), "id": 'sdk-3-"50%"'},
    ]
    token = mint_token(JWT_SECRET, subject="ce-test", scopes=["patterns:read"])
    async with LiveHub(dataclasses.replace(settings, cloudevents_source=SOURCE)) as hub:
        js = hub.hub.js
        await publish_events(js, events)
        peeked = await wait_for(
            lambda: _all_of(js, len(events)), timeout=30, what="the three events on the clean stream"
        )
        async with httpx.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}) as http:
            served = {
                e["id"]: (await http.get(f"/api/patterns/{quote(str(e['id']), safe='')}")).json()
                for e in events
            }
        # The websocket (history replay from seq 0, the fan-out's path) carries the body only.
        async with websockets.connect(f"{hub.ws_url}/ws?token={token}") as ws:
            assert json.loads(await ws.recv())["op"] == "welcome"
            await ws.send(json.dumps({"op": "subscribe", "id": "all", "since": 0}))
            frames = [json.loads(await ws.recv()) for _ in range(len(events) + 1)]
    header_schema = component_message("cleanEvent")["headers"]
    body_schema = Draft202012Validator(load_json_schema())
    ws_events = {f["event"]["id"]: f for f in frames if f["op"] == "event"}
    for p in peeked:
        print("a clean-stream message read with the CloudEvents SDK:\n" + render(p))
        row = served[p.event.get_id()]  # as the REST API serves it, plus its seq, arrival and instance state
        stored = {k: v for k, v in row.items() if k not in ("seq", "received_at", "superseded")} | {
            "schema_version": 1
        }
        raw = next(e for e in events if e["id"] == stored["id"])
        assert row["seq"] == p.seq
        assert p.subject == clean_subject(str(raw["timeframe"]), str(raw["symbol"]))
        assert p.event.get_data() == stored  # the body unchanged: the event as the hub stored it
        assert p.event.get_type() == TYPES[str(raw["type"])]
        assert p.event.get_source() == SOURCE
        assert p.event.get_time() == datetime.fromisoformat(str(stored["detected_at"]))
        assert p.event.get_subject() == stored["symbol"] == str(raw["symbol"]).upper()
        assert p.event.get_dataschema() == DATA_SCHEMA
        assert p.event.get_datacontenttype() == "application/json"
        assert p.headers["Nats-Msg-Id"] == stored["id"]
        assert attributes(p.event)["specversion"] == "1.0"
        # What travels is what the AsyncAPI document promises, and nothing more.
        Draft202012Validator(header_schema).validate(p.headers)
        body_schema.validate(p.event.get_data())
        frame = ws_events[stored["id"]]
        assert set(frame) == {"op", "seq", "subs", "event"} and frame["seq"] == p.seq
        assert frame["event"] == stored
    assert sorted(p.event.get_id() for p in peeked) == sorted(str(e["id"]) for e in events)
    assert {p.headers["ce-id"] for p in peeked} >= {"sdk-3-%2250%25%22"}


async def _all_of(js: Any, n: int) -> list[Any] | None:
    peeked = await last_messages(js, n)
    return peeked if len(peeked) == n else None
