"""The NATS service against REST on one ``tickstock serve`` process: the same rows, and what each costs.

    python ops/bench_service.py                     # fresh embedded stack, 5,000 events, 2 rounds of 10 s
    python ops/bench_service.py --seconds 20 --concurrency 32 --rounds 3

Starts an embedded stack and one hub process, stores ``--events`` events through ingest, then:

1. **Same rows**: for each scan shape, pages 1-3 over REST (``GET /api/patterns/scan``) and over NATS
   (``tickstock.svc.scan``) with the same token, following each transport's own ``next_cursor``;
   ``/api/symbols`` and ``/api/universes`` once each. Prints how many pages were compared, and fails
   (exit 1) on any difference.
2. **Throughput**: after a warm-up (every answer cached, as a polling service would mostly see),
   ``--concurrency`` requests in flight for ``--seconds`` per transport, the transports alternating for
   ``--rounds`` rounds, rotating over the shapes and 20 tokens (each within its rate limit). Prints
   requests/s, p50/p99 and errors per transport and round. Both clients are Python (httpx, nats-py) in
   one process: their own cost is in the figures.

Client, hub, NATS, PostgreSQL and Redis share this machine's cores. Results go to ``ops/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import nats
from harness import embedded_stack, make_events, publish, start_hub, wait_stored

from api.auth import mint_token
from hub.subjects import SCAN_SUBJECT, SYMBOLS_SUBJECT, UNIVERSES_SUBJECT

OPS_SECRET = "ops-only-secret-not-for-production-0123456789"
RESULTS = Path(__file__).resolve().parent / "results"
USERS = 20
SHAPES: list[dict[str, Any]] = [
    {"limit": 50},
    {"symbol": ["AAPL", "MSFT"], "limit": 20},
    {"universe": "dow30", "confidence_min": 0.5, "limit": 25},
    {"pattern": "hammer", "timeframe": "daily", "sort": "confidence"},
    {"timeframe": ["1min", "hourly"], "order": "asc", "limit": 10},
]


def _query(shape: dict[str, Any]) -> list[tuple[str, str]]:
    """A shape as REST query pairs (arrays repeat; JSON numbers and booleans as their text)."""
    pairs = []
    for name, value in shape.items():
        for v in value if isinstance(value, list) else [value]:
            pairs.append((name, json.dumps(v) if not isinstance(v, str) else v))
    return pairs


def _rows(body: dict[str, Any]) -> dict[str, Any]:
    return {"items": body["items"], "next_cursor": body.get("next_cursor")}


async def same_rows(http: httpx.AsyncClient, nc: Any, token: str) -> tuple[int, int]:
    """Pages compared and pages that differed."""
    auth = {"Authorization": f"Bearer {token}"}
    compared = differed = 0
    checks: list[tuple[str, str, dict[str, Any]]] = [("/api/patterns/scan", SCAN_SUBJECT, s) for s in SHAPES]
    checks += [
        ("/api/symbols", SYMBOLS_SUBJECT, {"universe": "dow30"}),
        ("/api/universes", UNIVERSES_SUBJECT, {}),
    ]
    for path, subject, shape in checks:
        rest_cursor = nats_cursor = None
        for _ in range(3 if subject == SCAN_SUBJECT else 1):
            rest_params = _query(shape) + ([("cursor", rest_cursor)] if rest_cursor else [])
            rest = (await http.get(path, params=rest_params, headers=auth)).json()
            request = {**shape, **({"cursor": nats_cursor} if nats_cursor else {})}
            msg = await nc.request(subject, json.dumps(request).encode(), timeout=10, headers=auth)
            answer = json.loads(msg.data)
            compared += 1
            if _rows(rest) != _rows(answer):
                differed += 1
                print(f"DIFFERENT: {subject} {request}", file=sys.stderr)
            rest_cursor, nats_cursor = rest.get("next_cursor"), answer.get("next_cursor")
            if not rest_cursor:
                break
    return compared, differed


async def load(
    call: Callable[[dict[str, Any], str], Awaitable[bool]],
    tokens: list[str],
    *,
    seconds: float,
    concurrency: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    plan = itertools.cycle(itertools.product(SHAPES, tokens))

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            shape, token = next(plan)
            started = time.perf_counter()
            ok = await call(shape, token)
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "errors": errors,
    }


async def run(args: argparse.Namespace) -> int:
    tokens = [
        mint_token(OPS_SECRET, subject=f"bench-svc-{i}", scopes=["patterns:read"]) for i in range(USERS)
    ]
    with embedded_stack() as stack:
        _, port = start_hub(stack)
        nc = await nats.connect(stack.nats_url, name="bench-service")
        try:
            await publish(nc, make_events(args.events, run="svc"), stamp=False)
            await wait_stored(stack.database_url, "svc", args.events)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                compared, differed = await same_rows(http, nc, tokens[0])
                print(f"same rows: {compared} pages compared over REST and NATS, {differed} different")

                async def over_rest(shape: dict[str, Any], token: str) -> bool:
                    r = await http.get(
                        "/api/patterns/scan",
                        params=_query(shape),
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    return r.status_code == 200

                async def over_nats(shape: dict[str, Any], token: str) -> bool:
                    msg = await nc.request(
                        SCAN_SUBJECT,
                        json.dumps(shape).encode(),
                        timeout=10,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    return "Nats-Service-Error" not in (msg.headers or {})

                for shape, token in itertools.product(SHAPES, tokens):  # warm-up: every answer cached
                    await over_rest(shape, token)
                    await over_nats(shape, token)
                figures: dict[str, list[dict[str, Any]]] = {"rest": [], "nats": []}
                for round_ in range(1, args.rounds + 1):  # alternating, so a busy moment hits both
                    for name, call in (("rest", over_rest), ("nats", over_nats)):
                        f = await load(call, tokens, seconds=args.seconds, concurrency=args.concurrency)
                        figures[name].append(f)
                        print(
                            f"round {round_} {name:>4}: {f['per_s']:,} scans/s, p50 {f['p50_ms']} ms, "
                            f"p99 {f['p99_ms']} ms, {f['requests']:,} requests, {f['errors']} errors "
                            f"(concurrency {args.concurrency})"
                        )
        finally:
            await nc.close()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_service.json"
    out.write_text(json.dumps({"compared": compared, "differed": differed, **figures}, indent=2))
    print(f"written {out}")
    return 1 if differed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
