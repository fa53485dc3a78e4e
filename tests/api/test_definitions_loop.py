"""Issue #12, acceptance 3: an unknown pattern name is dead-lettered with its reason, the operator
defines it, one replay command stores what was dead-lettered; and the scan's answer for a pattern
instance's updates and expiry, through the real ingest path."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from api.cli import main
from hub.model import EventError
from tests.api.conftest import TokenClients
from tests.support import LiveHub, make_event, wait_for

REPLAY = "/api/admin/dlq/replay"


def legacy(symbol: str, pattern: str, at: datetime) -> dict[str, Any]:
    """A TickStock envelope (layout A) with the tier and the detection time in ``data``."""
    epoch = at.timestamp()
    return {
        "event_type": "pattern_detected",
        "source": "TickStockPL",
        "timestamp": epoch,
        "data": {
            "symbol": symbol,
            "pattern": pattern,
            "confidence": 0.81,
            "current_price": 101.25,
            "timestamp": epoch,
            "timeframe": "1d",
            "tier": "daily",
        },
    }


async def letters(pool: AsyncConnectionPool, reason: str, *, replayed: bool) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, reason, detail, subject, replay_count, last_seen FROM dead_letters "
            f"WHERE reason = %s AND replayed_at IS {'NOT ' if replayed else ''}NULL ORDER BY id",
            (reason,),
        )
        return list(await cur.fetchall())


async def stored_patterns(pool: AsyncConnectionPool, pattern: str) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT id, symbol, pattern, timeframe, confidence FROM pattern_events WHERE pattern = %s ORDER BY symbol",
            (pattern,),
        )
        return list(await cur.fetchall())


async def test_unknown_name_dead_lettered_defined_replayed_stored(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    pool, js = live_hub.hub.pool, live_hub.hub.js
    admin = token_clients("ops", scopes=("admin",))
    writer = token_clients("producer", scopes=("patterns:write",))
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    v1 = make_event(7, prefix="zz-loop", symbol="AAPL", pattern="ZZ Loop Gap", detected_at=at.isoformat())
    # Step 1: published to ingest over NATS (v1 and TickStock's envelope), plus a name nobody defines.
    await js.publish("tickstock.ingest.daily.AAPL", json.dumps(v1).encode())
    await js.publish("tickstock.ingest.daily.MSFT", json.dumps(legacy("MSFT", "ZZ_Loop_Gap", at)).encode())
    await js.publish("tickstock.ingest.daily.KO", json.dumps(legacy("KO", "ZZ_Never_Defined", at)).encode())
    # Over HTTP the producer hears the verdict at once instead: nothing to dead-letter.
    refused = (await writer.post("/api/patterns", json={"events": [{**v1, "id": "zz-loop-http"}]})).json()
    assert (
        refused["results"][0]["status"] == "rejected" and refused["results"][0]["reason"] == "unknown_pattern"
    )

    # Step 2: dead-lettered with the reason.
    dead = await wait_for(
        lambda: _three(letters(pool, "unknown_pattern", replayed=False)),
        timeout=30,
        what="three dead letters",
    )
    assert [d["subject"] for d in dead] == [
        "tickstock.ingest.daily.AAPL",
        "tickstock.ingest.daily.MSFT",
        "tickstock.ingest.daily.KO",
    ]
    assert "'ZZ Loop Gap'" in dead[0]["detail"] and "'ZZ_Loop_Gap'" in dead[1]["detail"]
    assert await stored_patterns(pool, "zz_loop_gap") == []

    # Step 3: the operator defines the name.
    defined = await admin.put("/api/patterns/definitions/zz_loop_gap", json={"category": "chart"})
    assert defined.status_code == 201, defined.text

    # Step 4: one replay.
    response = await admin.post(REPLAY, params={"reason": "unknown_pattern"})
    assert response.status_code == 200, response.text
    done = response.json()
    print("replay:", json.dumps({k: v for k, v in done.items() if k != "items"}))
    assert (done["replayed"], done["failed"], done["beyond"]) == (2, 1, 0)
    assert done["failed_by_reason"] == {"unknown_pattern": 1}
    assert [r["dead_letter_id"] for r in done["items"]] == [dead[0]["id"], dead[1]["id"]]
    [failure] = done["failures"]
    assert failure["dead_letter_id"] == dead[2]["id"] and "ZZ_Never_Defined" in failure["detail"]

    # Step 5: stored, with the canonical name; the undefined one is still a dead letter, not lost.
    rows = await wait_for(
        lambda: _two(stored_patterns(pool, "zz_loop_gap")), timeout=30, what="the replayed events stored"
    )
    assert [(r["symbol"], r["timeframe"]) for r in rows] == [("AAPL", "daily"), ("MSFT", "daily")]
    assert {r["id"] for r in rows} == {r["event_id"] for r in done["items"]}
    [still] = await letters(pool, "unknown_pattern", replayed=False)
    assert still["id"] == dead[2]["id"] and still["last_seen"] > dead[2]["last_seen"]

    # Run again: nothing is replayed twice, the undefined one fails again the same way.
    again = (await admin.post(REPLAY, params={"reason": "unknown_pattern"})).json()
    assert (again["replayed"], again["failed"], again["beyond"]) == (0, 1, 0)
    assert len(await letters(pool, "unknown_pattern", replayed=True)) == 2
    assert len(await stored_patterns(pool, "zz_loop_gap")) == 2
    # The producer's HTTP post, sent again, is accepted now.
    accepted = (await writer.post("/api/patterns", json={"events": [{**v1, "id": "zz-loop-http"}]})).json()
    assert accepted["accepted"] == 1


async def _three(rows: Any) -> list[dict[str, Any]] | None:
    found = await rows
    return found if len(found) == 3 else None


async def _two(rows: Any) -> list[dict[str, Any]] | None:
    found = await rows
    return found if len(found) == 2 else None


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ({}, "query.reason"),
        ({"reason": "Unknown Pattern"}, "query.reason"),
        ({"reason": "x", "limit": "0"}, "query.limit"),
    ],
)
async def test_a_replay_needs_a_reason_and_a_bounded_batch(
    live_hub: LiveHub, token_clients: TokenClients, query: dict[str, str], loc: str
) -> None:
    admin = token_clients("ops", scopes=("admin",))
    response = await admin.post(REPLAY, params=query)
    assert response.status_code == 400 and loc in [e["loc"] for e in response.json()["errors"]]
    reader = token_clients("r", scopes=("patterns:read",))
    assert (await reader.post(REPLAY, params={"reason": "unknown_pattern"})).status_code == 403


async def test_the_cli_replays_in_bounded_batches_and_says_what_happened(
    live_hub: LiveHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool, js = live_hub.hub.pool, live_hub.hub.js
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    for symbol in ("IBM", "INTC", "CSCO"):
        await js.publish(
            f"tickstock.ingest.daily.{symbol}", json.dumps(legacy(symbol, "ZZ_Cli_Burst", at)).encode()
        )

    async def recorded() -> list[dict[str, Any]] | None:
        found = [
            d for d in await letters(pool, "unknown_pattern", replayed=False) if "ZZ_Cli_Burst" in d["detail"]
        ]
        return found if len(found) == 3 else None

    dead = await wait_for(recorded, timeout=30, what="three dead letters")
    for key, value in (
        ("TICKSTOCK_DATABASE_URL", live_hub.settings.database_url or ""),
        ("TICKSTOCK_NATS_URL", live_hub.settings.nats_url or ""),
        ("TICKSTOCK_DATA_DIR", str(tmp_path)),
    ):
        monkeypatch.setenv(key, value)

    async def tickstock(*args: str) -> tuple[int, str, list[str]]:
        capsys.readouterr()
        status = await asyncio.to_thread(main, list(args))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return (
            status,
            captured.out,
            [line for line in captured.err.splitlines() if line.startswith("tickstock:")],
        )

    assert (await tickstock("patterns", "define", "zz_cli_burst", "--category", "indicator"))[0] == 0
    # The hub's writer hears of the definition from PostgreSQL; one that had not yet would dead-letter a
    # replayed event again (a new dead letter, not a loss): the test waits so that the run is exact.
    await wait_for(lambda: _knows(live_hub, "ZZ_Cli_Burst"), timeout=10, what="the hub's catalog")
    pending = len(await letters(pool, "unknown_pattern", replayed=False))
    status, out, err = await tickstock("dlq", "replay", "--reason", "unknown_pattern", "--limit", "1")
    assert status == 0
    older = pending - 3  # letters other tests left (names nobody defined), replayed first: oldest first
    assert err[-1].startswith("tickstock: unknown_pattern: ")
    assert f"{pending - 1} more left: run it again" in err[-1]
    status, out, err = await tickstock("dlq", "replay", "--reason", "unknown_pattern")
    assert status == 0
    replayed = [line for line in out.splitlines() if line.startswith("replayed")]
    rejected = [line for line in out.splitlines() if line.startswith("rejected")]
    assert {int(line.split()[1]) for line in replayed} == {d["id"] for d in dead}
    assert all("unknown_pattern" in line for line in rejected) and len(rejected) == older
    assert err[-1] == (
        f"tickstock: unknown_pattern: {len(replayed)} replayed, {older} rejected again"
        + (f" ({older} unknown_pattern; they stay dead letters)" if older else "")
        + ", none left"
    )
    await wait_for(lambda: _count(stored_patterns(pool, "zz_cli_burst"), 3), timeout=30, what="three stored")
    status, out, err = await tickstock("dlq", "replay", "--reason", "unknown_pattern")  # idempotent
    assert status == 0 and not [line for line in out.splitlines() if line.startswith("replayed")]
    for bad in (
        ["dlq", "replay"],
        ["dlq", "replay", "1", "--reason", "x"],
        ["dlq", "replay", "--reason", "x", "--payload", "f"],
    ):
        status, _, err = await tickstock(*bad)
        assert status == 1 and len(err) == 1, (bad, err)
    status, _, err = await tickstock("dlq", "replay", "--reason", "x", "--limit", "0")
    assert status == 1 and "limit must be between 1 and 10000" in err[0]


def _knows(hub: LiveHub, spelling: str) -> bool:
    try:
        hub.hub.catalog.current.canonical(spelling)
    except EventError:
        return False
    return True


async def _count(rows: Any, n: int) -> bool:
    return len(await rows) == n


# -- pattern instances through the writer ----------------------------------------------------------


async def test_the_scan_shows_each_instance_latest_event_and_history_on_request(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    writer = token_clients("producer", scopes=("patterns:write", "patterns:read"))
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    ahead = (datetime.now(UTC) + timedelta(days=2)).isoformat()

    def ev(event_id: str, kind: str, symbol: str, confidence: float) -> dict[str, Any]:
        return make_event(
            0,
            prefix=event_id,
            symbol=symbol,
            type=kind,
            confidence=confidence,
            detected_at=at.isoformat(),
            expires_at=ahead,
        ) | {"id": event_id}

    batches = [
        [ev("inst-wmt-1", "pattern_detected", "WMT", 0.6), ev("inst-pep-1", "pattern_detected", "PEP", 0.6)],
        [ev("inst-wmt-2", "pattern_updated", "WMT", 0.9), ev("inst-pep-2", "pattern_updated", "PEP", 0.7)],
        [ev("inst-pep-3", "pattern_expired", "PEP", 0.7), ev("inst-wmt-0", "pattern_detected", "WMT", 0.6)],
    ]
    for batch in batches:  # in order: each batch stored before the next is sent
        assert (await writer.post("/api/patterns", json={"events": batch})).json()["accepted"] == 2
        await wait_for(lambda b=batch: _all_stored(writer, b), timeout=30, what="the batch stored")

    async def scan(**params: str) -> list[tuple[str, bool]]:
        body = (
            await writer.get(
                "/api/patterns/scan", params={"symbol": ["WMT", "PEP"], "pattern": "hammer", **params}
            )
        ).json()
        return sorted((i["id"], i["superseded"]) for i in body["items"])

    assert await scan() == [("inst-pep-3", False), ("inst-wmt-2", False)]
    assert await scan(active_only="true") == [("inst-wmt-2", False)]
    assert await scan(history="true") == [
        ("inst-pep-1", True),
        ("inst-pep-2", True),
        ("inst-pep-3", False),
        ("inst-wmt-0", True),  # a late detection stays history
        ("inst-wmt-1", True),
        ("inst-wmt-2", False),
    ]
    assert await scan(history="true", active_only="true") == [
        ("inst-wmt-0", True),
        ("inst-wmt-1", True),
        ("inst-wmt-2", False),
    ]
    assert await scan(confidence_min="0.8") == [("inst-wmt-2", False)]  # filters judge the latest event
    assert await scan(type="pattern_detected") == []
    symbol = (await writer.get("/api/symbols/WMT")).json()
    assert [p["id"] for p in symbol["latest_patterns"] if p["id"].startswith("inst-")] == ["inst-wmt-2"]


async def _all_stored(client: Any, batch: list[dict[str, Any]]) -> bool:
    for event in batch:
        if (await client.get(f"/api/patterns/{event['id']}")).status_code != 200:
            return False
    return True
