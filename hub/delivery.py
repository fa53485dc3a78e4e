"""Live events onto the sockets they match: each frame built once, each socket written once a batch.

For every event the subscription index (:mod:`hub.subscriptions`) finds the connections it matches.
Connections whose matching subscriptions have the same ids share one frame (and its bytes on the wire),
so an event is encoded once per distinct list of ids, not once per connection.

The fan-out hands on one event at a time while it keeps up. When live events wait in its buffer, it
hands them on together (at most :data:`COALESCE_EVENTS`): a socket that takes prepared bytes then gets
all of its frames of the batch in one write, one system call where it took one per event. That is what
lets a node that fell behind catch up instead of shedding. Order and once-only hold per connection: its
frames are written in stream order, in one write or (when the socket must go through its outbox) queued
one after the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from hub.connection import Connection
from hub.fanout_metrics import FanOutMetrics
from hub.protocol import CLOSE_SLOW
from hub.subscriptions import Entry, Subscription, SubscriptionIndex
from hub.wsframe import header_size, text_frame

__all__ = ["COALESCE_EVENTS", "deliver", "event_frame", "ids_json"]

COALESCE_EVENTS = 16  # live events handed on together at most, when more wait in the buffer

# A connection's frames of one batch: (its bytes on the wire, its text, the event's index in the batch,
# the frame's payload bytes).
_Out = list[tuple[bytes, str, int, int]]
# An event's frame for one list of subscription ids: its text, its bytes on the wire, its payload bytes.
_Frame = tuple[str, bytes, int]


def deliver(
    entries: Sequence[Entry], index: SubscriptionIndex, metrics: FanOutMetrics, *, resume_max: int
) -> None:
    """Send each of ``entries`` (in stream order) to every matching subscription, never waiting. A
    subscription that is resuming collects them in its ``pending`` (at most ``resume_max``; past that
    its connection is closed with 4409). One event is written to each socket as it is matched; several
    are gathered per socket first and written together (:func:`_write`)."""
    # Connections that take prepared bytes: their frames, in order (only when there are several events).
    batched: dict[Connection, _Out] | None = {} if len(entries) > 1 else None
    for k, entry in enumerate(entries):
        seq = entry.seq
        frames: dict[str, _Frame] = {}  # one frame per distinct list of subscription ids, shared
        written = payload = 0  # prepared frames of this event written at once, their payload bytes
        for conn, subs in index.match(entry).items():
            if len(subs) == 1:  # most connections: one matching subscription
                sub = subs[0]
                if seq <= sub.after:
                    continue
                if sub.pending is not None:
                    _hold(conn, sub, entry, resume_max)
                    continue
                ids = sub.ids_json
            else:
                live: list[Subscription] = []
                for sub in subs:
                    if seq <= sub.after:
                        continue
                    if sub.pending is None:
                        live.append(sub)
                    else:
                        _hold(conn, sub, entry, resume_max)
                if not live:
                    continue
                ids = ids_json(live)
            prepared = frames.get(ids)
            if prepared is None:
                frame = event_frame(entry, ids)
                wire = text_frame(frame)
                prepared = frames[ids] = (frame, wire, len(wire) - header_size(wire))
            if not conn.raw:
                conn.offer(prepared[0], entry.stored_at)
            elif batched is None:
                if conn.write_prepared(prepared[1]):
                    written += 1
                    payload += prepared[2]
                else:
                    conn.offer(prepared[0], entry.stored_at)
            else:
                out = batched.get(conn)
                if out is None:
                    batched[conn] = [(prepared[1], prepared[0], k, prepared[2])]
                else:
                    out.append((prepared[1], prepared[0], k, prepared[2]))
        if written:
            metrics.prepared_sent(written, payload, entry.stored_at)
    if batched:
        _write(entries, batched, metrics)


def _hold(conn: Connection, sub: Subscription, entry: Entry, resume_max: int) -> None:
    """``sub`` is resuming: keep ``entry`` for it, or close its connection when it holds too many."""
    pending = sub.pending
    assert pending is not None
    if len(pending) < resume_max:
        pending.append(entry)
    else:
        conn.close(CLOSE_SLOW, "slow consumer: too far behind while resuming")


def _write(entries: Sequence[Entry], batched: dict[Connection, _Out], metrics: FanOutMetrics) -> None:
    """Each connection's frames in one write of prepared bytes, or through its outbox one by one when
    it cannot take them now (see :meth:`Connection.write_prepared`); the prepared ones counted."""
    written = [0] * len(entries)  # prepared frames written, per event
    payload = [0] * len(entries)  # and their payload bytes
    for conn, out in batched.items():
        wire = out[0][0] if len(out) == 1 else b"".join([w for w, _, _, _ in out])
        if conn.write_prepared(wire):
            for _, _, k, size in out:
                written[k] += 1
                payload[k] += size
        else:
            for _, frame, k, _ in out:
                conn.offer(frame, entries[k].stored_at)
    for k, entry in enumerate(entries):
        if written[k]:
            metrics.prepared_sent(written[k], payload[k], entry.stored_at)


def ids_json(subs: list[Subscription]) -> str:
    """The ``subs`` field of an event frame for these subscriptions of one connection."""
    return subs[0].ids_json if len(subs) == 1 else json.dumps([s.id for s in subs])


def event_frame(entry: Entry, ids: str) -> str:
    """The event frame of ``entry`` for the subscriptions ``ids`` (:func:`ids_json`)."""
    return f'{{"op":"event","seq":{entry.seq},"subs":{ids},"event":{entry.text}}}'
