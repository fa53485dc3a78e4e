"""``hub.wsframe.text_frame`` against the ``websockets`` library's own frame parser and serializer."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from hub.wsframe import header_size, text_frame


def parse(data: bytes) -> tuple[Frame, bytes]:
    """The first frame in ``data`` as a client parses it (unmasked), and what follows it."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - the whole frame is fed at once
        raise AssertionError("the parser wanted more bytes")
    return frame, bytes(reader.buffer)  # the parser consumed exactly the frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_each_length_encoding_is_what_websockets_writes_and_parses(size: int) -> None:
    text = "x" * size
    data = text_frame(text)
    assert data == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert len(data) - header_size(data) == size  # what the fan-out counts as payload bytes
    frame, rest = parse(data)
    assert (frame.opcode, frame.fin, frame.rsv1, frame.data.decode(), rest) == (
        Opcode.TEXT,
        True,
        False,
        text,
        b"",
    )


def test_the_length_counts_utf8_bytes_not_characters() -> None:
    text = '{"symbol":"NESN.SW","note":"Zürich ✓ 🙂"}' * 5  # 125 characters, more bytes
    data = text_frame(text)
    assert data == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert parse(data)[0].data.decode() == text


def test_frames_written_back_to_back_parse_one_by_one() -> None:
    first, second = text_frame('{"op":"event","seq":1}'), text_frame("y" * 300)
    frame, rest = parse(first + second)
    assert frame.data == b'{"op":"event","seq":1}'
    assert parse(rest)[0].data == b"y" * 300
