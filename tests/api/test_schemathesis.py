"""Schemathesis against a live hub: every documented operation, generated inputs (valid and invalid),
no 5xx, and every response conforming to ``/openapi.json`` (status code, content type, schema).

The CLI runs as a subprocess so that the hub, served by uvicorn on this test's event loop, keeps
answering while schemathesis sends requests. The run is bounded and repeatable: at most
``MAX_EXAMPLES`` generated cases per operation in the fuzzing phase (plus the coverage phase's edge
cases and the stateful phase's walks along the document's links), a fixed seed, a request rate under
the per-token limit, and a wall-clock limit well under the per-test timeout. One stored event and one
dead letter are seeded first so that the operations on ids meet real data.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from api.auth import SCOPES, mint_token
from tests.conftest import JWT_SECRET
from tests.support import LiveHub, wait_for

pytestmark = pytest.mark.timeout(300)

SEED = 20261128
MAX_EXAMPLES = 25
RUN_LIMIT_S = 180
RATE_LIMIT = "100/s"  # below the per-token rate limit, so that requests reach the routes
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
_CLI = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"


def _cases(report: Path) -> tuple[int, set[str]]:
    """The number of test cases the run generated and the operations they covered, from its ndjson report."""
    cases, operations = 0, set()
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if finished and finished["status"] != "skip":
            cases += len(finished["recorder"].get("cases", {}))
            if finished["phase"] != "stateful":  # stateful scenarios are labelled as a whole
                operations.add(finished["recorder"]["label"])
    return cases, operations


async def _seed(live_hub: LiveHub, token: str) -> None:
    """One stored event and one dead letter, so that the operations on ids (and the links to them) meet
    real data, not only 404s."""
    await live_hub.hub.js.publish("tickstock.ingest.daily.AAPL", b"not json", timeout=5)
    event = {
        "id": "st-seed-1",
        "type": "pattern_detected",
        "symbol": "AAPL",
        "pattern": "hammer",
        "timeframe": "daily",
        "confidence": 0.8,
        "detected_at": datetime.now(UTC).isoformat(),
    }
    async with httpx.AsyncClient(
        base_url=live_hub.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.post("/api/patterns", json={"events": [event]})
        assert response.json()["accepted"] == 1, response.text

        async def arrived() -> bool:
            letters = (await client.get("/api/admin/dlq")).json()["items"]
            return bool(letters) and (await client.get("/api/patterns/st-seed-1")).status_code == 200

        await wait_for(arrived, timeout=30, interval=0.1, what="the seed event and dead letter")


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_or_schema_mismatch(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    token = mint_token(JWT_SECRET, subject="st", scopes=SCOPES)
    await _seed(live_hub, token)
    report = tmp_path / "events.ndjson"
    command = [
        sys.executable,
        "-c",
        _CLI,
        "run",
        f"{live_hub.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--rate-limit",
        RATE_LIMIT,
        "--request-timeout",
        "10",
        "--header",
        f"Authorization: Bearer {token}",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_LIMIT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    document = live_hub.app.state.openapi if live_hub.app is not None else {}
    # Schemathesis leaves out the operation that serves the schema itself.
    documented = {
        f"{method.upper()} {path}"
        for path, ops in document["paths"].items()
        for method in ops
        if path != "/openapi.json"
    }
    cases, operations = _cases(report)
    print(f"schemathesis: {cases} cases over {len(operations)} operations")
    assert operations == documented, text
    assert cases >= MAX_EXAMPLES * len(documented) // 2, text


# Inputs that were 500s, found by schemathesis or while describing the routes, pinned so that a change
# of seed or of schemathesis cannot lose them: (method, url, JSON body) -> the status now answered.
FOUND = [
    ("PUT", "/api/symbols", {"symbols": [{"symbol": "ZZNUL", "name": "a\u0000b"}]}, 400),
    ("PUT", "/api/symbols", {"symbols": [{"symbol": "ZZNUL", "name": "x", "sector": "\u0000"}]}, 400),
    ("POST", "/api/users/filters", {"name": "nul", "filter": {"sector": "a\u0000"}}, 400),
    ("POST", "/api/users/filters", {"name": "a\u0000", "filter": {}}, 400),
    ("GET", "/api/symbols?q=a%00", None, 400),
    ("GET", "/api/symbols?sector=a%00", None, 400),
    ("GET", "/api/patterns/scan?sector=a%00", None, 400),
    ("GET", "/api/patterns/a%00b", None, 404),
    ("GET", "/api/patterns/scan?confidence_min=2.2250738585072014e-308", None, 200),
    ("GET", "/api/patterns/scan?confidence_max=1e-300", None, 200),
    ("GET", "/api/patterns/scan?page=999999999999999999999999", None, 400),
    ("GET", "/api/admin/dlq?reason=a%00", None, 400),
    ("DELETE", "/api/admin/dlq?reason=a%00&all=true", None, 400),
    ("GET", "/api/admin/dlq?before=99999999999999999999", None, 400),
    ("GET", "/api/admin/dlq/%C2%B2", None, 404),  # "²".isdigit() is True, int("²") raises
]


@pytest.mark.parametrize(("method", "url", "body", "status"), FOUND, ids=[f"{m} {u}" for m, u, _, _ in FOUND])
async def test_inputs_that_were_server_errors(
    live_hub: LiveHub, method: str, url: str, body: object, status: int
) -> None:
    token = mint_token(JWT_SECRET, subject="st-found", scopes=SCOPES)
    async with httpx.AsyncClient(
        base_url=live_hub.url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        response = await client.request(method, url, json=body)
    assert response.status_code == status, response.text


async def test_readiness_survives_a_p95_above_the_largest_bucket(live_hub: LiveHub) -> None:
    latency = live_hub.hub.metrics.store_latency
    for _ in range(max(100, latency.count * 20)):  # +Inf at p95, which JSON cannot carry
        latency.observe(1e6)
    async with httpx.AsyncClient(base_url=live_hub.url) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["pipeline"]["ingest_to_stored_p95_s"] is None
