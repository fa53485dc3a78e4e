"""Stream creation against a real JetStream server."""

from __future__ import annotations

import logging

import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, ServerError

from hub.jetstream import add_stream


async def test_a_stream_deleted_and_created_again_at_once_comes_back_empty(
    jetstream: JetStreamContext,
) -> None:
    config = StreamConfig(name="RECREATED", subjects=["recreated.>"])
    for round_ in range(10):
        await add_stream(jetstream, config)
        await jetstream.publish("recreated.x", f"{round_}".encode())
        info = await jetstream.stream_info("RECREATED")
        assert info.state.messages == 1
        await jetstream.delete_stream("RECREATED")


async def test_a_refusal_other_than_a_busy_store_is_raised_at_once(
    jetstream: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    await add_stream(jetstream, StreamConfig(name="FIRST", subjects=["overlap.>"]))
    caplog.set_level(logging.WARNING, logger="tickstock.jetstream")
    with pytest.raises((BadRequestError, ServerError)) as caught:
        await add_stream(jetstream, StreamConfig(name="SECOND", subjects=["overlap.>"]))
    assert "overlap" in str(caught.value.description)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # the first refusal is final
