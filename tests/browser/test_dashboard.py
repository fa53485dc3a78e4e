"""The dashboard (``GET /``) in a real browser: Debian's chromium, headless, driven by Playwright.

The page talks to a live hub (uvicorn on a loopback port) exactly as a user's browser would: REST scans,
``/health/ready`` and the ``/ws`` feed. Events go into ingest over NATS, so they take the whole path
(writer → PostgreSQL → clean stream → fan-out → page).

Without chromium (``ops/install-browser.sh``) or the ``playwright`` package the tests skip, unless
``TICKSTOCK_REQUIRE_BROWSER`` is set (CI sets it): then a missing browser is a failure. Playwright never
downloads a browser here; it drives ``/usr/bin/chromium``. The last test leaves a screenshot in
``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from psycopg_pool import AsyncConnectionPool

from api.auth import mint_token
from tests.browser.conftest import ARTIFACTS
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, make_event, publish_events, wait_for


def _token() -> str:
    return mint_token(JWT_SECRET, subject="dashboard-test", scopes=["patterns:read"])


async def _open(page: Any, hub: LiveHub) -> None:
    """Load the page with a ready link and wait until its first subscription is acknowledged."""
    await page.goto(f"{hub.url}/#token={_token()}")
    await page.wait_for_selector('#status[data-subscribed="feed-1"]', state="attached", timeout=15_000)
    assert "token" not in page.url, "the token must leave the address bar"


async def _feed(page: Any) -> list[tuple[str, int, str]]:
    """The feed's rows top to bottom: (event id, seq, symbol)."""
    rows = await page.eval_on_selector_all(
        "#feed-body tr",
        "rows => rows.map(r => [r.dataset.id, Number(r.dataset.seq), r.cells[1].textContent])",
    )
    return [tuple(r) for r in rows]


async def _scan(page: Any) -> list[tuple[str, str]]:
    rows = await page.eval_on_selector_all(
        "#scan-body tr[data-id]", "rows => rows.map(r => [r.dataset.id, r.cells[1].textContent])"
    )
    return [tuple(r) for r in rows]


async def _stored(pool: AsyncConnectionPool, prefix: str) -> dict[str, int]:
    """Ids with ``prefix`` that are stored and on the clean stream, with their stream seq."""
    async with pool.connection() as conn:
        rows: list[dict[str, Any]] = await (
            await conn.execute(  # type: ignore[assignment]  # dict rows
                "SELECT id, stream_seq FROM pattern_events WHERE id LIKE %s AND stream_seq IS NOT NULL",
                (prefix + "-%",),
            )
        ).fetchall()
    return {r["id"]: r["stream_seq"] for r in rows}


def _newest_first(rows: list[tuple[str, int, str]]) -> None:
    seqs = [seq for _, seq, _ in rows]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs), seqs


async def test_feed_scan_health_and_a_filter_change(
    live_hub: LiveHub, ref_pool: AsyncConnectionPool, page: Any
) -> None:
    await _open(page, live_hub)
    await page.wait_for_selector('#health-overall[data-status="ok"]', timeout=15_000)
    health = await page.inner_text("#health")
    assert "PostgreSQL" in health and "Consumer lag" in health and "Dead letters" in health

    # Live: twelve events through ingest appear in the feed, newest on top.
    events = [make_event(i, prefix="feed", symbol=("AAPL", "MSFT")[i % 2]) for i in range(12)]
    await publish_events(live_hub.hub.js, events)
    ids = {str(e["id"]) for e in events}

    async def all_shown() -> list[tuple[str, int, str]] | None:
        rows = await _feed(page)
        return rows if ids <= {r[0] for r in rows} else None

    rows = await wait_for(all_shown, timeout=30, what="the twelve events in the feed")
    _newest_first(rows)
    stored = await wait_for(lambda: _all_stored(ref_pool, "feed", 12), timeout=10, what="twelve stored")
    assert {i: s for i, s, _ in rows} == stored
    assert await page.inner_text("#conn-seq") == str(max(stored.values()))

    # The scan table pages through the same events 10 at a time (newest detected first).
    await page.select_option("#scan-limit", "10")
    newest = sorted(events, key=lambda e: str(e["detected_at"]), reverse=True)

    async def scan_is(expected: list[str]) -> bool:
        return [i for i, _ in await _scan(page)] == expected

    await wait_for(lambda: scan_is([str(e["id"]) for e in newest[:10]]), timeout=10, what="scan page 1")
    assert await page.is_disabled("#scan-prev")
    await page.click("#scan-next")
    await wait_for(lambda: scan_is([str(e["id"]) for e in newest[10:]]), timeout=10, what="scan page 2")
    assert await page.is_disabled("#scan-next")
    assert await page.inner_text("#scan-page") == "page 2"

    # A filter change re-subscribes without reloading: from now on only MSFT.
    await page.fill("#f-symbols", "msft")
    await page.press("#f-symbols", "Enter")  # the keyboard submits the form
    await page.wait_for_selector('#status[data-subscribed="feed-2"]', state="attached", timeout=10_000)
    assert await _feed(page) == []  # the feed restarts with the new filter
    filtered = [make_event(100 + i, prefix="filt", symbol=("AAPL", "MSFT")[i % 2]) for i in range(6)]
    await publish_events(live_hub.hub.js, filtered)
    await wait_for(lambda: _count_at_least(ref_pool, "filt", 6), timeout=30, what="the six stored")
    # Stored after every AAPL one, so once it is shown any AAPL event would have been shown before it.
    sentinel = make_event(200, prefix="filt", symbol="MSFT")
    await publish_events(live_hub.hub.js, [sentinel])

    async def sentinel_shown() -> list[tuple[str, int, str]] | None:
        rows = await _feed(page)
        return rows if any(r[0] == sentinel["id"] for r in rows) else None

    rows = await wait_for(sentinel_shown, timeout=30, what="the MSFT sentinel in the feed")
    assert {r[2] for r in rows} == {"MSFT"}
    stored = await wait_for(lambda: _all_stored(ref_pool, "filt", 7), timeout=10, what="seven stored")
    msft = {i: s for i, s in stored.items() if i == sentinel["id"] or int(i.split("-")[1]) % 2}
    assert {i: s for i, s, _ in rows} == msft
    _newest_first(rows)

    # The scan table follows the same filter (it went back to page 1). Scans may be served from the
    # cache up to its staleness bound (1 s by default) after a commit, so refresh until it shows.
    async def scan_msft() -> list[tuple[str, str]] | None:
        await page.click("#scan-refresh")
        await asyncio.sleep(0.3)
        scanned = await _scan(page)
        return scanned if sentinel["id"] in {i for i, _ in scanned} else None

    scanned = await wait_for(scan_msft, timeout=10, what="the filtered scan")
    assert {s for _, s in scanned} == {"MSFT"}
    assert set(msft) <= {i for i, _ in scanned}


async def test_a_burst_of_events_keeps_the_feed_bounded(
    live_hub: LiveHub, ref_pool: AsyncConnectionPool, page: Any
) -> None:
    await _open(page, live_hub)
    total = 1200
    await publish_events(
        live_hub.hub.js, [make_event(i, prefix="burst", symbol="NVDA") for i in range(total)]
    )
    stored = await wait_for(lambda: _all_stored(ref_pool, "burst", total), timeout=60, what=f"{total} stored")
    await page.wait_for_function(
        f"() => document.getElementById('feed-count').textContent.startsWith('{total} received')",
        timeout=30_000,
    )
    rows = await _feed(page)
    _newest_first(rows)
    newest = sorted(stored.items(), key=lambda kv: kv[1], reverse=True)[:500]
    assert [(i, s) for i, s, _ in rows] == newest  # the 500 newest, in order; the DOM holds no more
    assert "500 shown" in await page.inner_text("#feed-count")


async def _count_at_least(pool: AsyncConnectionPool, prefix: str, n: int) -> bool:
    return len(await _stored(pool, prefix)) >= n


@pytest.mark.timeout(240)
async def test_a_hub_restart_is_followed_by_a_resume_with_no_missing_event(
    live_hub: LiveHub, ref_pool: AsyncConnectionPool, nats_client: NATS, page: Any
) -> None:
    await _open(page, live_hub)
    # Every state the status line goes through, recorded in the page.
    await page.evaluate("""() => {
        const status = document.getElementById("status");
        window.states = [status.dataset.state];
        new MutationObserver(() => window.states.push(status.dataset.state))
            .observe(status, { attributes: true, attributeFilter: ["data-state"] });
    }""")
    js = nats_client.jetstream()  # the test's own connection: it outlives the hub's
    total = 80
    published = 0
    hub_down = asyncio.Event()

    async def publish() -> None:
        """A steady trickle into ingest; from event 40 on, only once the hub is down, so that some
        events surely arrive while nothing serves the page and the rest while it restarts."""
        nonlocal published
        for i in range(total):
            if i == total // 2:
                await hub_down.wait()
            await publish_events(js, [make_event(i, prefix="rs", symbol=("AAPL", "MSFT", "NVDA")[i % 3])])
            published += 1
            await asyncio.sleep(0.04)

    publisher = asyncio.create_task(publish())
    try:
        await wait_for(lambda: _feed_has_at_least(page, 10), timeout=30, what="ten events before the restart")
        # Restart the whole hub (fan-out, writer, uvicorn) on the same port while events keep coming.
        # LiveHub keeps its port across exit and re-entry.
        await live_hub.__aexit__(None, None, None)
        hub_down.set()
        await asyncio.sleep(0.5)
        await live_hub.__aenter__()
        await asyncio.wait_for(publisher, timeout=30)
    finally:
        publisher.cancel()
    assert published == total

    stored = await wait_for(lambda: _all_stored(ref_pool, "rs", total), timeout=60, what=f"{total} stored")

    async def all_shown() -> list[tuple[str, int, str]] | None:
        rows = await _feed(page)
        return rows if len(rows) >= total else None

    rows = await wait_for(all_shown, timeout=60, what=f"{total} events in the feed")
    _newest_first(rows)
    assert {i: s for i, s, _ in rows} == stored  # none missing, none twice, the stored seqs
    states = await page.evaluate("window.states")
    assert "reconnecting" in states and states[-1] == "resumed", states

    # After the resume the feed is live again.
    after = [make_event(total + i, prefix="rs", symbol="AAPL") for i in range(5)]
    await publish_events(js, after)
    total += len(after)
    stored = await wait_for(lambda: _all_stored(ref_pool, "rs", total), timeout=30, what=f"{total} stored")
    rows = await wait_for(all_shown, timeout=30, what=f"{total} events in the feed")
    _newest_first(rows)
    assert {i: s for i, s, _ in rows} == stored
    assert await page.inner_text("#conn-seq") == str(max(stored.values()))
    await page.wait_for_selector('#health-overall[data-status="ok"]', timeout=15_000)

    await page.click("#scan-refresh")  # the screenshot shows the stored events too
    await wait_for(lambda: _scan_has_rows(page), timeout=10, what="scan rows")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


async def _feed_has_at_least(page: Any, n: int) -> bool:
    return len(await _feed(page)) >= n


async def _scan_has_rows(page: Any) -> bool:
    return bool(await _scan(page))


async def _all_stored(pool: AsyncConnectionPool, prefix: str, n: int) -> dict[str, int] | None:
    stored = await _stored(pool, prefix)
    return stored if len(stored) >= n else None


async def test_sign_in_by_pasting_a_token(live_hub: LiveHub, page: Any) -> None:
    await page.goto(live_hub.url + "/")
    assert await page.get_attribute("#status", "data-state") == "signed-out"
    assert await page.is_visible("#sign-in") and not await page.is_visible("#filters")
    assert await page.evaluate("document.activeElement.id") == "token-input"  # ready to paste

    # A token the hub did not sign: back to the form, with the reason.
    forged = mint_token("another-secret-0123456789abcdef0123456789", subject="x", scopes=["patterns:read"])
    await page.fill("#token-input", forged)
    await page.press("#token-input", "Enter")
    await page.wait_for_selector("#sign-in-error:not(:empty)", timeout=10_000)
    assert await page.is_visible("#sign-in")
    assert await page.evaluate("sessionStorage.getItem('tickstock.token')") is None

    await page.fill("#token-input", f"Bearer {_token()}")  # pasted with its scheme: accepted
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for_function(
        "() => { const s = document.getElementById('status').dataset; return s.sub && s.subscribed === s.sub; }",
        timeout=15_000,
    )
    assert await page.inner_text("#who") == "Signed in as dashboard-test"
    assert not await page.is_visible("#sign-in")

    await page.click("#sign-out")
    assert await page.get_attribute("#status", "data-state") == "signed-out"
    assert await page.evaluate("sessionStorage.getItem('tickstock.token')") is None
