"""The dashboard's pictures in a real browser (headless chromium, Playwright), fed by a live hub.

Events go into ingest over NATS and take the whole path (writer → PostgreSQL → clean stream → fan-out
→ page; the stats endpoint reads PostgreSQL through the response cache). Each test leaves screenshots
in ``test-artifacts/``: ``charts-live.png``, ``charts-heat-filter.png``, ``charts-symbol-panel.png`` and
``charts-50-per-second.png``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from api.auth import mint_token
from tests.browser.conftest import ARTIFACTS
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, make_event, publish_events, wait_for

LIVE_S = 2.0  # a picture shows an event this soon after it is published
SYMBOLS = ("AAPL", "MSFT", "XOM", "JPM", "KO")
PATTERNS = ("hammer", "shooting_star", "doji", "engulfing")


def _event(
    i: int, prefix: str, *, symbol: str, pattern: str, timeframe: str = "daily", at: datetime | None = None
) -> dict[str, object]:
    extra: dict[str, object] = {}
    if pattern == "engulfing":  # reported both ways: the producer says which
        extra["data"] = {"direction": ("bullish", "bearish")[i % 2]}
    return make_event(
        i,
        prefix=prefix,
        symbol=symbol,
        pattern=pattern,
        timeframe=timeframe,
        detected_at=(at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        **extra,
    )


async def _open(page: Any, hub: LiveHub) -> None:
    token = mint_token(JWT_SECRET, subject="charts-test", scopes=["patterns:read"])
    await page.goto(f"{hub.url}/#token={token}")
    await page.wait_for_selector('#status[data-subscribed="feed-1"]', state="attached", timeout=15_000)


async def _count(pool: AsyncConnectionPool, prefix: str) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT count(*) AS n FROM pattern_events WHERE id LIKE %s", (prefix + "-%",))
        ).fetchone()
    return int(row["n"])  # type: ignore[index,call-overload]


async def _stored(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    return await _count(pool, prefix) >= n


async def _number(page: Any, selector: str, attribute: str) -> int:
    return int(await page.get_attribute(selector, attribute) or 0)


async def _feed(page: Any) -> list[dict[str, str]]:
    return list(
        await page.eval_on_selector_all(
            "#feed-body tr",
            """rows => rows.map(r => ({id: r.dataset.id, symbol: r.cells[1].textContent,
                pattern: r.cells[2].textContent, direction: r.dataset.direction,
                dir: r.cells[4].textContent.trim(), conf: r.cells[5].textContent.trim()}))""",
        )
    )


async def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def _sector(pool: AsyncConnectionPool, symbol: str) -> str:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT sector FROM symbols WHERE symbol = %s", (symbol,))).fetchone()
    assert row is not None and row["sector"]  # type: ignore[call-overload,index]
    return str(row["sector"])  # type: ignore[call-overload,index]


@pytest.mark.timeout(240)
async def test_pictures_draw_live_data_and_a_heat_map_cell_filters_the_feed_and_the_scan(
    live_hub: LiveHub, ref_pool: AsyncConnectionPool, page: Any
) -> None:
    js = live_hub.hub.js
    # Spread over the last 40 minutes, so the minute chart has history before the live part.
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    seed = [
        _event(
            i,
            "seed",
            symbol=SYMBOLS[i % 5],
            pattern=PATTERNS[(i // 5) % 4],
            timeframe=("daily", "1min", "hourly")[i % 3],
            at=now - timedelta(minutes=(i * 7) % 40),
        )
        for i in range(40)
    ]
    await publish_events(js, seed)
    await wait_for(lambda: _stored(ref_pool, "seed", 40), timeout=30, what="the seed events stored")

    await _open(page, live_hub)
    # Both pictures draw what the stats endpoint reports of the last hour.
    await wait_for(
        lambda: _at_least(page, "#minute-chart", "data-total", 40), timeout=15, what="the minute chart"
    )
    bars = {(e["timeframe"], (i * 7) % 40) for i, e in enumerate(seed)}
    assert await page.locator("#minute-chart rect").count() == len(bars)  # a bar per minute and timeframe
    await wait_for(lambda: _at_least(page, "#heat", "data-events", 40), timeout=15, what="the heat map")
    sectors = {s: await _sector(ref_pool, s) for s in SYMBOLS}
    assert await page.locator(".heat-cell").count() == len(
        {(sectors[str(e["symbol"])], e["pattern"]) for e in seed}
    )
    label = await page.get_attribute(".heat-cell", "aria-label")
    assert label and "events" in label and "bullish" in label and "average confidence" in label
    desc = await page.text_content("#minute-chart-desc") or ""
    assert "40 events in the last 60 minutes" in desc, desc

    # One event: both pictures and the feed show it within LIVE_S.
    total = await _number(page, "#minute-chart", "data-total")
    counted = await _number(page, "#heat", "data-events")
    one = _event(1, "live", symbol="MSFT", pattern="hammer")
    started = time.monotonic()
    await publish_events(js, [one])
    await wait_for(
        lambda: _at_least(page, "#minute-chart", "data-total", total + 1), timeout=LIVE_S, what="chart"
    )
    chart_s = time.monotonic() - started
    await wait_for(
        lambda: _at_least(page, "#heat", "data-events", counted + 1), timeout=LIVE_S, what="heat map"
    )
    heat_s = time.monotonic() - started
    print(
        f"\nlive: the minute chart showed the event after {chart_s:.3f} s, the heat map after {heat_s:.3f} s"
    )
    rows = await wait_for(lambda: _shown(page, str(one["id"])), timeout=LIVE_S, what="the event in the feed")
    row = next(r for r in rows if r["id"] == one["id"])
    assert row["direction"] == "bullish" and row["dir"] == "▲ bullish"  # the catalog's direction for hammer
    assert row["conf"] == f"{one['confidence']:.2f}"
    bar = page.locator(f'#feed-body tr[data-id="{one["id"]}"] .conf-bar')
    assert await bar.get_attribute("aria-hidden") == "true"  # the number is what is read out
    await _shot(page, "charts-live.png")

    # A heat-map cell, chosen with the keyboard, filters the feed and the scan table.
    cell = page.locator(f'.heat-cell[data-sector="{sectors["MSFT"]}"][data-pattern="shooting_star"]')
    await cell.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_selector('#status[data-subscribed="feed-2"]', state="attached", timeout=10_000)
    assert await page.is_visible("#heat-note")
    allowed = set((await page.input_value("#f-symbols")).split())
    assert "MSFT" in allowed and allowed <= {s for s in SYMBOLS if sectors[s] == sectors["MSFT"]}
    assert await page.input_value("#f-pattern") == "shooting_star"
    assert await _feed(page) == []
    later = [
        _event(0, "after", symbol="MSFT", pattern="hammer"),
        _event(1, "after", symbol="XOM", pattern="shooting_star"),
        _event(2, "after", symbol="MSFT", pattern="shooting_star"),
    ]
    await publish_events(js, later)
    await wait_for(lambda: _stored(ref_pool, "after", 3), timeout=30, what="three stored")
    sentinel = _event(3, "after", symbol="MSFT", pattern="shooting_star")
    await publish_events(js, [sentinel])
    rows = await wait_for(
        lambda: _shown(page, str(sentinel["id"])), timeout=30, what="the sentinel in the feed"
    )
    assert {(r["symbol"], r["pattern"]) for r in rows} == {("MSFT", "shooting_star")}
    assert {r["id"] for r in rows} == {later[2]["id"], sentinel["id"]}

    async def scan_filtered() -> list[list[str]] | None:
        await page.click("#scan-refresh")
        await page.wait_for_selector("#scan-body tr", state="attached", timeout=5_000)
        got: list[list[str]] = await page.eval_on_selector_all(
            "#scan-body tr[data-id]",
            """rows => rows.map(r => [r.dataset.id, r.cells[1].textContent, r.cells[2].textContent,
                r.cells[5].textContent.trim()])""",
        )
        return got if sentinel["id"] in {g[0] for g in got} else None

    scanned = await wait_for(scan_filtered, timeout=15, what="the filtered scan")
    assert {(s, p) for _, s, p, _ in scanned} <= {(s, "shooting_star") for s in allowed}
    assert {d for *_, d in scanned} == {"▼ bearish"}  # the catalog's direction, in the stored rows too
    await _shot(page, "charts-heat-filter.png")

    # The symbol panel: a symbol in the feed opens its recent patterns over time, and follows it live.
    await page.click(f'#feed-body tr[data-id="{sentinel["id"]}"] .sym-link')
    await page.wait_for_selector('#symbol-panel[data-symbol="MSFT"]', timeout=10_000)
    msft = sum(1 for e in [*seed, one, *later, sentinel] if e["symbol"] == "MSFT")
    await wait_for(
        lambda: _at_least(page, "#symbol-panel", "data-events", msft), timeout=10, what="MSFT's events"
    )
    assert await page.locator("#symbol-chart circle").count() == msft
    assert await page.evaluate("document.activeElement.id") == "symbol-panel"  # focus moves to the panel
    more = _event(9, "panel", symbol="MSFT", pattern="doji")
    started = time.monotonic()
    await publish_events(js, [more])
    await wait_for(
        lambda: _at_least(page, "#symbol-panel", "data-events", msft + 1), timeout=LIVE_S, what="panel"
    )
    print(f"live: the symbol panel showed the event after {time.monotonic() - started:.3f} s")
    assert "doji" in await page.inner_text("#symbol-list")
    await _shot(page, "charts-symbol-panel.png")


async def _at_least(page: Any, selector: str, attribute: str, n: int) -> bool:
    return await _number(page, selector, attribute) >= n


async def _shown(page: Any, event_id: str) -> list[dict[str, str]] | None:
    rows = await _feed(page)
    return rows if any(r["id"] == event_id for r in rows) else None


RECORDER = """() => {
    window.frames_ = [];
    window.longTasks = [];
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.longTasks.push(e.duration);
    }).observe({ type: "longtask", buffered: false });
    let last = performance.now();
    const tick = (t) => { window.frames_.push(t - last); last = t; requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
}"""


@pytest.mark.timeout(240)
async def test_fifty_events_a_second_keep_the_page_responsive(
    live_hub: LiveHub, ref_pool: AsyncConnectionPool, page: Any
) -> None:
    await _open(page, live_hub)
    await wait_for(lambda: _loaded(page), timeout=15, what="the pictures' first load")
    await page.evaluate(RECORDER)
    rate, seconds, batch = 50, 10, 5
    total = rate * seconds
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(total // batch):  # 5 events every 0.1 s, on a fixed schedule
        events = [
            _event(
                i, "load", symbol=SYMBOLS[i % 5], pattern=PATTERNS[i % 4], timeframe=("1min", "daily")[i % 2]
            )
            for i in range(k * batch, (k + 1) * batch)
        ]
        await publish_events(live_hub.hub.js, events)
        await asyncio.sleep(max(0.0, start + (k + 1) * batch / rate - loop.time()))
    sent_s = loop.time() - start
    await wait_for(lambda: _stored(ref_pool, "load", total), timeout=60, what=f"{total} stored")
    await page.wait_for_function(
        f"() => parseInt(document.getElementById('feed-count').textContent) >= {total}", timeout=30_000
    )
    await wait_for(
        lambda: _at_least(page, "#minute-chart", "data-total", total), timeout=10, what="the chart"
    )
    frames: list[float] = await page.evaluate("window.frames_.slice(1)")
    long_tasks: list[float] = await page.evaluate("window.longTasks")
    work = await page.evaluate("""() => Object.entries(window.tickstockCharts).map(([name, o]) =>
        `${name} ${o.renders ?? o.flushes}× ${(o.renderMs ?? o.flushMs).toFixed(0)} ms `
        + `(longest ${(o.renderMaxMs ?? o.flushMaxMs).toFixed(1)} ms)`).join(", ")""")
    frames.sort()
    p50 = statistics.median(frames)
    p95 = frames[int(0.95 * (len(frames) - 1))]
    print(
        f"\n{total} events in {sent_s:.1f} s ({total / sent_s:.0f}/s): {len(frames)} frames, frame time "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {frames[-1]:.1f} ms; long tasks (> 50 ms): "
        f"{len(long_tasks)}, longest {max(long_tasks, default=0):.0f} ms\npage's own drawing: {work}"
    )
    assert frames, "no animation frame ran while the events arrived"
    assert max(long_tasks, default=0) < 1000, long_tasks  # hygiene: ok - a generous bound, not a benchmark
    await _shot(page, "charts-50-per-second.png")


async def _loaded(page: Any) -> bool:
    return await page.get_attribute("#heat", "data-cells") is not None and await page.evaluate(
        "window.tickstockCharts.minuteChart.renders > 0"
    )
