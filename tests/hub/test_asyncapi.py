"""The AsyncAPI document (hub/asyncapi.yaml, linked as docs/asyncapi.yaml, served at /asyncapi.yaml).

1. The AsyncAPI project's own parser (``@asyncapi/parser``, pinned by ops/asyncapi/package-lock.json)
   reports 0 errors, for the file and for the document as a running hub serves it. ``npm ci`` fills
   ops/asyncapi/node_modules when it is missing or stale. Without node/npm the test skips, unless
   ``TICKSTOCK_REQUIRE_NODE`` is set (CI sets it): then it fails.
2. Coverage: every websocket op, close code and error code and every NATS subject, stream, consumer,
   dead-letter reason and hub-set header is taken from the code's constants and looked up in the
   document's structure (not its prose); the list checked is printed.
3. The document's examples satisfy its own schemas (the parser does not check AsyncAPI 3 examples).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from api.app import create_app
from api.nats_request import ERROR_CODE_HEADER, ERROR_HEADER
from api.nats_service import ENDPOINTS
from api.settings import Settings
from hub import cloudevent, jetstream, protocol, subjects
from hub.deadletters import DLQ_HEADERS, MAX_DELIVERIES, STORE_REJECTED
from hub.model import REASONS, TIMEFRAMES, load_json_schema
from hub.producer import PRODUCER_HEADER, PRODUCER_SIG_HEADER
from tests.conftest import JWT_SECRET
from tests.node import npm_installed
from tests.support import free_port, serve_started

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "hub" / "asyncapi.yaml"
LINK = ROOT / "docs" / "asyncapi.yaml"
CHECKER = ROOT / "ops" / "asyncapi"
SCHEMA_REF = "schema/pattern-event-v1.json"
NODE_TIMEOUT_S = 120


@cache
def document() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def resolve(node: Any) -> Any:
    """Follow local ``$ref``s (``#/a/b``) until a node without one."""
    while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/"):
        target: Any = document()
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def component_message(name: str) -> dict[str, Any]:
    """A message of ``components.messages``, its local ``$ref``s in schemas resolved (for jsonschema)."""
    return _inline(document()["components"]["messages"][name])  # type: ignore[no-any-return]


def _inline(node: Any) -> Any:
    if isinstance(node, dict):
        if str(node.get("$ref", "")).startswith("#/"):
            return _inline(resolve(node))
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v) for v in node]
    return node


# -- 1. the AsyncAPI parser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parser() -> Path:
    """ops/asyncapi with node_modules installed from package-lock.json (``npm ci``, once per lock)."""
    return npm_installed(CHECKER, what="the AsyncAPI parser") / "validate.mjs"


def _validate(script: Path, source: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        ["node", str(script), source], capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _report(report: dict[str, Any]) -> str:
    lines = [
        f"asyncapi parser on {report['source']}: {report['errors']} errors, {report['warnings']} warnings"
    ]
    lines += [f"  {d['severity']} {d['code']} at /{d['path']}: {d['message']}" for d in report["diagnostics"]]
    return "\n".join(lines)


@pytest.mark.slow
def test_the_asyncapi_parser_reports_no_errors(parser: Path) -> None:
    assert LINK.resolve() == DOCUMENT  # docs/asyncapi.yaml is the shipped file, not a copy
    code, report = _validate(parser, str(LINK))
    print(_report(report))
    assert (code, report["errors"], report["asyncapi"]) == (0, 0, "3.0.0"), _report(report)


@pytest.mark.slow
async def test_the_served_document_parses_and_its_schema_ref_resolves_over_http(parser: Path) -> None:
    port = free_port()
    app = create_app(Settings(jwt_secret=JWT_SECRET))  # the two documents need no servers
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = await serve_started(server)
    try:
        # The parser fetches /asyncapi.yaml, then /schema/pattern-event-v1.json by the relative $ref.
        code, report = await asyncio.to_thread(_validate, parser, f"http://127.0.0.1:{port}/asyncapi.yaml")
    finally:
        server.should_exit = True
        await task
    print(_report(report))
    assert (code, report["errors"], report["asyncapi"]) == (0, 0, "3.0.0"), _report(report)


@pytest.mark.slow
def test_the_parser_catches_a_broken_document(parser: Path, tmp_path: Path) -> None:
    """The check can fail: an operation naming another channel's message, and a $ref to nowhere."""
    (tmp_path / "schema").mkdir()
    shutil.copy(ROOT / "hub" / SCHEMA_REF, tmp_path / SCHEMA_REF)
    text = DOCUMENT.read_text(encoding="utf-8")
    broken = text.replace(
        "      - $ref: '#/channels/websocket/messages/error'",
        "      - $ref: '#/channels/patterns/messages/patternEvent'",
    ).replace(
        "event:\n            $ref: 'schema/pattern-event-v1.json'",
        "event:\n            $ref: 'schema/v2.json'",
    )
    assert broken.count("schema/v2.json") == 1
    (tmp_path / "asyncapi.yaml").write_text(broken, encoding="utf-8")
    code, report = _validate(parser, str(tmp_path / "asyncapi.yaml"))
    errors = [d["message"] for d in report["diagnostics"] if d["severity"] == "error"]
    assert code == 1 and report["errors"] == len(errors) >= 2, _report(report)
    assert any("does not belong to the specified channel" in m for m in errors), errors
    assert any("v2.json" in m for m in errors), errors


# -- 2. coverage: every op, code and subject in the code is in the document ----------------------------


def _ws_ops(direction: str) -> set[str]:
    """The ``op`` of each websocket message the hub receives (``client``) or sends (``server``),
    from the operations on the websocket channel and their replies."""
    found = set()
    for op in document()["operations"].values():
        if resolve(op["channel"]) is not resolve(document()["channels"]["websocket"]):
            continue
        mine = "client" if op["action"] == "receive" else "server"
        batches = [(mine, op["messages"])]
        if "reply" in op:
            batches.append(("server" if mine == "client" else "client", op["reply"]["messages"]))
        for who, refs in batches:
            if who == direction:
                found |= {resolve(m)["payload"]["properties"]["op"]["const"] for m in refs}
    return found


def _addresses() -> dict[str, str]:
    return {name: ch["address"] for name, ch in document()["channels"].items()}


def _documents_subject(value: str) -> bool:
    """A subject constant is documented when a channel's address is it, or starts with it and goes on
    with parameters only; a wildcard ``<prefix>.>`` when a channel lives under ``<prefix>``."""
    if value.endswith(".>"):
        return any(a.startswith(value[:-1]) for a in _addresses().values())
    return any(
        a == value or (a.startswith(value + ".") and re.fullmatch(r"(\.\{\w+\})+", a[len(value) :]))
        for a in _addresses().values()
    )


def _address_pattern(channel: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", _addresses()[channel])
    return re.compile("".join("[^.]+" if p.startswith("{") else re.escape(p) for p in parts))


def _ops_in_sources() -> set[str]:
    """Every ``op`` the hub's and the dashboard's code writes as a literal (a guard on the constants)."""
    found = set()
    literal = re.compile(r"""["']?op["']?\s*:\s*["'](\w+)["']""")
    paths = [*ROOT.glob("hub/*.py"), *ROOT.glob("api/**/*.py"), ROOT / "api/static/dashboard/hub.js"]
    for path in paths:
        found |= set(literal.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_op_code_subject_and_header_in_the_code_is_documented() -> None:
    doc = document()
    checked: dict[str, list[str]] = {}

    # Websocket ops, both ways, equal to the code's (nothing missing, nothing invented).
    assert _ops_in_sources() <= set(protocol.CLIENT_OPS) | set(protocol.SERVER_OPS)
    assert _ws_ops("client") == set(protocol.CLIENT_OPS)
    assert _ws_ops("server") == set(protocol.SERVER_OPS)
    checked["websocket client ops"] = list(protocol.CLIENT_OPS)
    checked["websocket server ops"] = list(protocol.SERVER_OPS)

    # Close codes: the machine-readable map and the table in the channel's description.
    ws = doc["channels"]["websocket"]
    assert {int(code) for code in ws["x-close-codes"]} == protocol.CLOSE_CODES
    for code in protocol.CLOSE_CODES:
        assert f"| {code} |" in ws["description"], code
    checked["websocket close codes"] = [str(c) for c in sorted(protocol.CLOSE_CODES)]

    # Error codes: the enum of the error frame's code, each explained.
    code_schema = component_message("error")["payload"]["properties"]["code"]
    assert set(code_schema["enum"]) == protocol.ERROR_CODES
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in code_schema["description"], code
    checked["websocket error codes"] = sorted(protocol.ERROR_CODES)

    # Every subject constant of hub/subjects.py, and what the subject builders produce.
    constants = {
        name: getattr(subjects, name)
        for name in subjects.__all__
        if name.isupper() and isinstance(getattr(subjects, name), str)
    }
    assert len(constants) == 16, sorted(constants)
    for name, value in constants.items():
        assert _documents_subject(value), (name, value)
    assert _address_pattern("ingest").fullmatch(subjects.ingest_subject("daily", "BRK.B"))
    assert _address_pattern("patterns").fullmatch(subjects.clean_subject("1min", "BTC/USD"))
    assert _addresses()["ingestUnparsed"] == subjects.UNPARSED_SUBJECT
    for channel in ("ingest", "patterns", "deadLetters"):
        assert doc["channels"][channel]["x-subscribe-wildcard"] in constants.values()
    checked["NATS subjects"] = sorted(constants.values())

    # Parameters: timeframes and dead-letter reasons, exactly the code's.
    parameters = doc["components"]["parameters"]
    assert parameters["timeframe"]["enum"] == list(TIMEFRAMES)
    reasons = REASONS | {MAX_DELIVERIES, STORE_REJECTED}
    assert set(parameters["reason"]["enum"]) == reasons
    assert _address_pattern("deadLetters").fullmatch(f"{subjects.DLQ_PREFIX}.{STORE_REJECTED}")
    checked["dead-letter reasons"] = sorted(reasons)

    # Streams and the writer's consumer.
    streams = {ch.get("x-jetstream-stream") for ch in doc["channels"].values()}
    wanted = {
        jetstream.INGEST_STREAM,
        jetstream.PATTERNS_STREAM,
        jetstream.DLQ_STREAM,
        jetstream.ADVISORY_STREAM,
    }
    assert wanted <= streams
    consumers = doc["channels"]["maxDeliveries"]["parameters"]["consumer"]["examples"]
    assert consumers == [jetstream.WRITER_CONSUMER, jetstream.partition_consumer(3)]
    assert doc["operations"]["consumeIngest"]["x-consumer"] == jetstream.WRITER_CONSUMER
    partitioned = doc["operations"]["consumeIngest"]["x-partition-consumer"]
    assert partitioned.format(partition=7) == jetstream.partition_consumer(7)
    assert _address_pattern("ingestPartitioned").fullmatch(subjects.partition_filter(7)[:-1] + "daily.BRK_B")
    checked["JetStream streams and consumer"] = [*sorted(wanted), jetstream.WRITER_CONSUMER]

    # Headers the hub sets or reads.
    ingest_headers = component_message("ingestEvent")["headers"]["properties"]
    assert {"Nats-Msg-Id", PRODUCER_HEADER, PRODUCER_SIG_HEADER} <= set(ingest_headers)
    dlq = component_message("deadLetter")["headers"]
    assert list(dlq["properties"]) == list(DLQ_HEADERS) and dlq["additionalProperties"] is False
    clean = component_message("cleanEvent")["headers"]
    assert set(clean["properties"]) == {"Nats-Msg-Id", *cloudevent.HEADERS} == set(clean["required"])
    assert clean["properties"]["ce-type"]["enum"] == list(cloudevent.TYPES.values())
    assert clean["properties"]["ce-specversion"]["const"] == cloudevent.SPEC_VERSION
    assert clean["properties"]["ce-dataschema"]["const"] == cloudevent.DATA_SCHEMA
    assert clean["properties"]["ce-datacontenttype"]["const"] == cloudevent.DATA_CONTENT_TYPE
    assert clean["properties"]["ce-source"]["default"] == cloudevent.DEFAULT_SOURCE
    checked["headers"] = [
        "Nats-Msg-Id",
        PRODUCER_HEADER,
        PRODUCER_SIG_HEADER,
        *DLQ_HEADERS[1:],
        *cloudevent.HEADERS,
    ]
    # The NATS service: each endpoint's subject is a channel whose operation has a reply; its error headers.
    answered = {
        resolve(op["channel"])["address"]: op
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    for endpoint in ENDPOINTS:
        replies = answered[endpoint.subject]["reply"]["messages"]
        assert {"$ref": "#/channels/serviceReply/messages/serviceError"} in replies, endpoint
    error = component_message("serviceError")["headers"]
    assert {ERROR_HEADER, ERROR_CODE_HEADER} == set(error["required"])
    checked["NATS service endpoints"] = [e.subject for e in ENDPOINTS]
    for what, names in checked.items():
        print(f"asyncapi coverage, {what} ({len(names)}): {', '.join(names)}")


def test_the_event_schema_is_referenced_not_copied() -> None:
    refs = list(_refs(document()))
    payloads = [resolve(m).get("payload") for m in document()["components"]["messages"].values()]
    assert {"$ref": SCHEMA_REF} in payloads
    assert refs.count(SCHEMA_REF) == 3  # ingest, clean stream, websocket event frames
    assert '"confidence"' not in DOCUMENT.read_text() and "detected_at:\n" not in DOCUMENT.read_text()
    assert all(r.startswith("#/") or r == SCHEMA_REF for r in refs)
    assert (DOCUMENT.parent / SCHEMA_REF).read_text() == (
        ROOT / "hub/schema/pattern-event-v1.json"
    ).read_text()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_version_is_the_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert document()["info"]["version"] == project["version"]


# -- 3. the examples satisfy the document's schemas ----------------------------------------------------


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    shipped = load_json_schema()
    registry: Registry[Any] = Registry().with_resource(SCHEMA_REF, Resource.from_contents(shipped))
    return Draft202012Validator(schema, registry=registry)


def test_every_example_satisfies_its_message() -> None:
    seen = 0
    for name in document()["components"]["messages"]:
        message = component_message(name)
        for example in message.get("examples", []):
            if "payload" in example:
                _validator(message["payload"]).validate(example["payload"])
                seen += 1
            if "headers" in example:
                _validator(message["headers"]).validate(example["headers"])
                seen += 1
    assert seen >= 8
    bad = {**component_message("cleanEvent")["examples"][0]["payload"], "confidence": 85}
    assert not _validator(component_message("cleanEvent")["payload"]).is_valid(bad)
