"""Bearer tokens never reach the log: uvicorn's line for a websocket opened with ``?token=`` is
redacted (``api.redaction``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import websockets

from api.auth import mint_token
from api.redaction import REDACTED, TokenRedactor, redacted
from tests.conftest import JWT_SECRET
from tests.support import LiveHub


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '1.2.3.4:5 - "WebSocket /ws?token=a.b.c" [accepted]',
            '1.2.3.4:5 - "WebSocket /ws?token=***" [accepted]',
        ),
        ("/ws?since=4&token=a.b.c&x=1", "/ws?since=4&token=***&x=1"),
        ("/ws?TOKEN=a.b.c;x=1", "/ws?TOKEN=***;x=1"),
        ("/ws?token=", "/ws?token=***"),
        ("/ws?mytoken=a.b.c", "/ws?mytoken=a.b.c"),  # another parameter
        ("no query here", "no query here"),
    ],
)
def test_the_token_parameter_is_redacted(line: str, expected: str) -> None:
    assert redacted(line) == expected


def test_a_record_is_rewritten_once_and_always_let_through() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s"', ("ip", "/ws?token=s3cret"), None
    )
    assert TokenRedactor().filter(record) and record.getMessage() == f'ip - "WebSocket /ws?token={REDACTED}"'
    plain = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "%s", ("nothing",), None)
    assert TokenRedactor().filter(plain) and plain.args == ("nothing",)
    # A call whose arguments do not fit its format: let through untouched, never raised at the caller.
    malformed = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "%s %s", ("one",), None)
    assert TokenRedactor().filter(malformed) and malformed.args == ("one",)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def uvicorn_lines() -> Iterator[list[str]]:
    """What uvicorn logs on ``uvicorn.error`` at INFO during the test (the live hub logs at WARNING)."""
    logger, handler = logging.getLogger("uvicorn.error"), _Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_websocket_opened_with_its_token_in_the_url_logs_no_token(
    live_hub: LiveHub, uvicorn_lines: list[str]
) -> None:
    token = mint_token(JWT_SECRET, subject="logged", scopes=["patterns:read"])
    async with websockets.connect(f"{live_hub.ws_url}/ws?token={token}") as ws:
        assert json.loads(await ws.recv())["op"] == "welcome"
    accepted = [line for line in uvicorn_lines if "[accepted]" in line]
    assert accepted and all(f"/ws?token={REDACTED}" in line for line in accepted)
    assert not any(token in line or token.split(".")[2] in line for line in uvicorn_lines)
