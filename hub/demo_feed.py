"""The demo feed: real OHLCV history replayed through TA-Lib's candlestick recognisers into the hub.

Data flow: :func:`hub.ohlcv.load_bars` reads a CSV into bars; :func:`hub.candles.scan` runs all 61
TA-Lib ``CDL*`` functions over the whole history once and returns every detection; :class:`DemoFeed`
walks the files' bars round-robin from bar :data:`hub.candles.WARMUP_BARS` on (every indicator the
confidence uses is defined there, so confidences spread from the first event) and publishes each bar's detections to
``tickstock.ingest.<tf>.<token>`` as schema-v1 events, paced at about ``rate`` events per second.
:func:`run` is the ``tickstock demo-feed`` entry point. The shipped files and their licences are
listed in ``demo_data/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from hub.broker import open_nats
from hub.candles import WARMUP_BARS, Detection, PatternNames, scan
from hub.ohlcv import default_files, load_bars
from hub.producer import publish_to_ingest

__all__ = ["DEFAULT_RATE", "DemoFeed", "Track", "load_tracks", "replay", "run"]

log = logging.getLogger("tickstock.demo_feed")

DEFAULT_RATE = 5.0  # events per second
DEFAULT_PUBLISH_TIMEOUT_S = 2.0
DEFAULT_MAX_BACKOFF_S = 5.0
INITIAL_BACKOFF_S = 0.1
STOP_GRACE_S = 0.1
MAX_LAG_S = 1.0  # after a stall, catch up at most this much of the schedule in a burst
_RUN_ID = re.compile(r"[A-Za-z0-9_]{1,40}")  # no "-" or ".": ids stay unambiguous


# -- the feed ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Track:
    """One file's detections by bar index, and its number of bars."""

    length: int
    hits: dict[int, tuple[Detection, ...]]


def load_tracks(files: Sequence[Path]) -> list[Track]:
    """Load and scan ``files`` (CPU and disk: run it in a thread from async code); a file without
    any detection is left out. Raises what :func:`hub.ohlcv.load_bars` raises for a bad file."""
    names = PatternNames.load()
    tracks = []
    for path in files:
        bars = load_bars(path)
        hits: dict[int, list[Detection]] = {}
        for detection in scan(bars, names=names):
            hits.setdefault(detection.index, []).append(detection)
        log.info(
            "demo feed: %s: %s %s, %d bars, %d detections",
            bars.file,
            bars.symbol,
            bars.timeframe,
            len(bars),
            sum(map(len, hits.values())),
        )
        if hits:
            tracks.append(Track(len(bars), {i: tuple(found) for i, found in hits.items()}))
    return tracks


def replay(
    tracks: Sequence[Track], *, loop: bool, start: int = WARMUP_BARS
) -> Iterator[tuple[Detection, int]]:
    """``(detection, lap)`` in replay order: one bar of each file in turn, each file (and each lap
    of it) from bar ``start`` on. A file with no detection from ``start`` on is left out, so with
    ``loop`` the iterator never spins without yielding. Raises :class:`ValueError` if ``start`` < 0."""
    if start < 0:
        raise ValueError(f"start must be a bar index (>= 0), not {start!r}")
    tracks = [t for t in tracks if any(i >= start for i in t.hits)]
    cursors, laps = [start] * len(tracks), [0] * len(tracks)
    active = list(range(len(tracks)))
    while active:
        for k in list(active):
            for detection in tracks[k].hits.get(cursors[k], ()):
                yield detection, laps[k]
            cursors[k] += 1
            if cursors[k] >= tracks[k].length:
                if loop:
                    cursors[k], laps[k] = start, laps[k] + 1
                else:
                    active.remove(k)


class DemoFeed:
    """Publishes TA-Lib detections over replayed OHLCV files to the ingest subjects.

    An async context manager. Entering loads and scans ``files`` (default :func:`default_files`) in a
    worker thread, then starts one task that walks the files round-robin, one bar of each in turn
    from bar ``warmup_bars`` on (see :func:`replay`), and publishes each bar's detections at about ``rate`` events per second. Each publish waits for
    the JetStream ack (``publish_timeout_s``) before the next, so nothing queues up. With ``loop`` a
    file starts over when it ends (event ids then carry the pass number); without, the task ends
    when every file has been replayed.

    Event ids are ``demo-<run_id>-<symbol>-<timeframe>-<bar index>-<function>`` and are sent as
    ``Nats-Msg-Id``, so a restart with the same ``run_id`` is deduplicated by JetStream (within the
    stream's duplicate window). ``run_id`` defaults to a fresh random one: 1-40 of ``A-Za-z0-9_``.

    A failed publish (no stream, timeout, connection closed) adds to :attr:`errors` and is retried,
    after 0.1 s doubling up to ``max_backoff_s``, until it succeeds; one warning is logged per outage
    and one line when publishing recovers. Exiting stops the task between two events, waiting for
    the publish in flight (at most ``publish_timeout_s``) before it cancels the task, and re-raises
    anything unexpected the task died of. The constructor does no I/O and raises :class:`ValueError`
    for a non-positive rate or timeout, a negative ``warmup_bars``, an empty ``files`` or a malformed
    ``run_id``.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        rate: float = DEFAULT_RATE,
        files: Sequence[Path] | None = None,
        loop: bool = True,
        run_id: str | None = None,
        publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        warmup_bars: int = WARMUP_BARS,
    ) -> None:
        for label, value in (
            ("rate", rate),
            ("publish_timeout_s", publish_timeout_s),
            ("max_backoff_s", max_backoff_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number, not {value!r}")
        if files is not None and not files:
            raise ValueError("files is empty")
        if warmup_bars < 0:
            raise ValueError(f"warmup_bars must be >= 0, not {warmup_bars!r}")
        if run_id is not None and not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r} must be 1-40 characters of A-Z a-z 0-9 _")
        self.run_id = run_id or secrets.token_hex(4)
        self._js = js
        self._rate = rate
        self._files = [Path(f) for f in files] if files is not None else None
        self._loop = loop
        self._warmup_bars = warmup_bars
        self._publish_timeout_s = publish_timeout_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._published = self._duplicates = self._errors = 0
        self._outage = 0  # failed attempts since the last successful publish
        self._stop = asyncio.Event()

    @property
    def published(self) -> int:
        """Events JetStream acknowledged as new."""
        return self._published

    @property
    def duplicates(self) -> int:
        """Events JetStream acknowledged as duplicates of an id it already held (not stored again)."""
        return self._duplicates

    @property
    def errors(self) -> int:
        """Failed publish attempts (each is retried)."""
        return self._errors

    async def __aenter__(self) -> DemoFeed:
        if self._task is not None:
            raise RuntimeError("this DemoFeed is already running")
        self._stop = asyncio.Event()
        files = self._files if self._files is not None else default_files()
        tracks = await asyncio.to_thread(load_tracks, files)
        log.info(
            "demo feed: run %s, %d files with detections, %.3g events/s, loop=%s",
            self.run_id,
            len(tracks),
            self._rate,
            self._loop,
        )
        self._task = asyncio.create_task(self._run(tracks), name="tickstock-demo-feed")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Stop between events, so the publish in flight is acknowledged (and counted) or fails.
        self._stop.set()
        await asyncio.wait([task], timeout=self._publish_timeout_s + STOP_GRACE_S)
        while not task.done():
            # Python 3.11's wait_for (in nats-py's request) can swallow a cancellation that races a
            # reply (gh-86296), so cancel until the task is gone; _stop ends it at the next event.
            task.cancel()
            await asyncio.wait([task], timeout=STOP_GRACE_S)
        log.info(
            "demo feed: stopped; %d published, %d duplicates, %d errors",
            self._published,
            self._duplicates,
            self._errors,
        )
        if not task.cancelled():
            task.result()  # re-raises what the task died of, if anything

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: for ever) for the feed to finish by itself (all
        files replayed, with ``loop=False``). Returns whether it has. Raises :class:`RuntimeError`
        if the feed is not running."""
        if self._task is None:
            raise RuntimeError("this DemoFeed is not running")
        done, _ = await asyncio.wait([self._task], timeout=timeout)
        return bool(done)

    async def _run(self, tracks: Sequence[Track]) -> None:
        clock = asyncio.get_running_loop()
        interval = 1 / self._rate
        due = clock.time()
        try:
            for detection, lap in replay(tracks, loop=self._loop, start=self._warmup_bars):
                if self._stop.is_set():
                    return
                if (delay := due - clock.time()) > 0:
                    await self._pause(delay)
                await self._publish(detection, lap)
                due = max(due + interval, clock.time() - MAX_LAG_S)
        except Exception:
            log.exception("demo feed: stopped by an unexpected error")
            raise
        log.info("demo feed: every file replayed; %d published", self._published)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the feed is asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _publish(self, detection: Detection, lap: int) -> None:
        attempt = 0
        while not self._stop.is_set():
            event = detection.to_event(run_id=self.run_id, now=datetime.now(UTC), lap=lap)
            try:
                published = await publish_to_ingest(self._js, event, timeout_s=self._publish_timeout_s)
            except (NatsError, OSError) as exc:  # OSError covers TimeoutError
                self._errors += 1
                if not self._outage:
                    log.warning(
                        "demo feed: publishing failed (%s); retrying with back-off",
                        str(exc) or type(exc).__name__,
                    )
                self._outage += 1
                await self._pause(min(self._max_backoff_s, INITIAL_BACKOFF_S * 2 ** min(attempt, 16)))
                attempt += 1
                continue
            if self._outage:
                log.info("demo feed: publishing again after %d failed attempts", self._outage)
                self._outage = 0
            if published.duplicate:
                self._duplicates += 1
            else:
                self._published += 1
            return


async def run(
    nats_url: str,
    *,
    rate: float = DEFAULT_RATE,
    duration_s: float | None = None,
    loop: bool = True,
    files: Sequence[Path] | None = None,
    run_id: str | None = None,
) -> int:
    """Connect to ``nats_url``, run a :class:`DemoFeed` and return how many events it published.

    Runs for ``duration_s`` seconds, or until every file is replayed (``loop=False``), or, with
    neither, until cancelled; cancellation stops the feed, drains the connection and propagates.
    Raises :class:`hub.broker.BrokerError` (a nats-py error) if NATS cannot be reached, and
    :class:`ValueError` for a negative duration or the arguments :class:`DemoFeed` rejects.
    """
    if duration_s is not None and not duration_s >= 0:
        raise ValueError(f"duration_s must be a non-negative number of seconds, not {duration_s!r}")
    async with open_nats(nats_url, name="tickstock-demo-feed") as client:
        async with DemoFeed(client.jetstream(), rate=rate, files=files, loop=loop, run_id=run_id) as feed:
            await feed.wait(duration_s)
        return feed.published
