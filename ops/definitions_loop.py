"""Issue #12, acceptance 3, as an operator sees it: an unknown pattern name is dead-lettered, the
operator defines it, one command replays what was dead-lettered, and it is stored.

    python -m ops.definitions_loop

Starts fresh embedded NATS, PostgreSQL and Redis and one ``tickstock serve`` process, then prints each
step with its ids and counts: two messages with the made-up name ``ZZ_Demo_Surge`` (one v1 event, one
TickStock envelope) and one with a name nobody defines are published to ingest; the dead letters; the
``PUT /api/patterns/definitions/zz_demo_surge``; ``tickstock dlq replay --reason unknown_pattern`` (its
output as it prints it); the stored rows; the same command once more (nothing replayed twice). Exit
status 1 when a step does not come out as described.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from api.auth import mint_token
from ops.harness import ROOT, Stack, connected, embedded_stack, start_hub

NAME = "zz_demo_surge"
WAIT_S = 30


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise SystemExit(f"FAILED: {what} within {WAIT_S} s")


async def _rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await (await conn.execute(sql, params)).fetchall()


def _replay(stack: Stack, port: int) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "dlq", "replay", "--reason", "unknown_pattern"],
        env=stack.env(port),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout + result.stderr


def _say(step: str, *lines: str) -> None:
    print(f"\n{step}")
    for line in lines:
        print(f"    {line}")


async def run(stack: Stack, port: int) -> None:
    url = stack.database_url
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    v1 = {
        "id": "demo-surge-1",
        "type": "pattern_detected",
        "symbol": "NVDA",
        "pattern": "ZZ_Demo_Surge",
        "timeframe": "hourly",
        "confidence": 0.77,
        "detected_at": at.isoformat(),
    }

    def envelope(symbol: str, pattern: str) -> dict[str, Any]:
        data = {"symbol": symbol, "pattern": pattern, "confidence": 0.82, "timestamp": at.timestamp()}
        return {
            "event_type": "pattern_detected",
            "source": "TickStockPL",
            "timestamp": at.timestamp(),
            "data": {**data, "timeframe": "1d", "tier": "daily"},
        }

    sent = [
        ("tickstock.ingest.hourly.NVDA", v1),
        ("tickstock.ingest.daily.AMD", envelope("AMD", "ZZ_Demo_Surge")),
        ("tickstock.ingest.daily.KO", envelope("KO", "ZZ_Nobody_Defines")),
    ]
    async with connected(stack.nats_url) as nc:
        js = nc.jetstream()
        acks = [await js.publish(subject, json.dumps(body).encode()) for subject, body in sent]
    _say(
        "1. published to ingest over NATS",
        *(
            f"{subject}  ingest seq {ack.seq}  pattern {body.get('pattern') or body['data']['pattern']!r}"
            for (subject, body), ack in zip(sent, acks, strict=True)
        ),
    )

    async def dead() -> list[tuple[Any, ...]]:
        found = await _rows(
            url, "SELECT id, reason, subject, detail FROM dead_letters WHERE replayed_at IS NULL ORDER BY id"
        )
        return found if len(found) == 3 else []

    letters = await _until(dead, "three dead letters")
    _say(
        "2. dead-lettered",
        *(f"dead letter {i}: {reason} on {subject}: {detail}" for i, reason, subject, detail in letters),
    )
    if {row[1] for row in letters} != {"unknown_pattern"}:
        raise SystemExit("FAILED: every dead letter should say unknown_pattern")

    token = mint_token(stack.env(port)["TICKSTOCK_JWT_SECRET"], subject="ops", scopes=["admin"])
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as http:
        response = await http.put(
            f"/api/patterns/definitions/{NAME}",
            json={
                "category": "indicator",
                "direction": "bullish",
                "aliases": ["ZZDemoSurge"],
                "description": "demo",
            },
        )
    _say(f"3. PUT /api/patterns/definitions/{NAME}", f"{response.status_code} {response.text}")
    if response.status_code != 201:
        raise SystemExit("FAILED: the definition was not created")

    _say("4. tickstock dlq replay --reason unknown_pattern", *_replay(stack, port).strip().splitlines())

    async def stored() -> list[tuple[Any, ...]]:
        found = await _rows(
            url,
            "SELECT id, symbol, pattern, timeframe, confidence FROM pattern_events WHERE pattern = %s ORDER BY symbol",
            NAME,
        )
        return found if len(found) == 2 else []

    rows = await _until(stored, "the two replayed events stored")
    still = await _rows(url, "SELECT id, reason, detail FROM dead_letters WHERE replayed_at IS NULL")
    _say(
        "5. stored",
        *(
            f"{i}  {symbol} {pattern} {timeframe} confidence {confidence:.2f}"
            for i, symbol, pattern, timeframe, confidence in rows
        ),
        *(f"still a dead letter: {i} {reason}: {detail}" for i, reason, detail in still),
    )
    _say("6. the same command again", *_replay(stack, port).strip().splitlines())
    count = await _rows(url, "SELECT count(*) FROM pattern_events WHERE pattern = %s", NAME)
    if count[0][0] != 2 or len(still) != 1:
        raise SystemExit("FAILED: the loop did not end with two stored events and one dead letter")
    print("\nOK: dead-lettered, defined, replayed with one command, stored; run twice, nothing twice.")


def main() -> int:
    with embedded_stack() as stack:
        _, port = start_hub(stack)
        asyncio.run(run(stack, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
