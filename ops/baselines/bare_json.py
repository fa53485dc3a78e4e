"""Baseline for ops/bench_hotpath.py: a bare Starlette JSON endpoint on uvicorn, as the hub serves HTTP.

    python ops/baselines/bare_json.py --port 9002 [--workers 2]
    GET /json          -> a fixed JSON document of about 1.2 KB (six rows of a scan page)
    GET /json/{bytes}  -> rows of the same kind, about that many bytes (the body size of a hub answer),
                          encoded once and served as bytes: the floor for moving a body of that size

Same stack as ``tickstock serve``: uvicorn with uvloop and httptools, no access log, no server header;
the body is encoded on every request by ``JSONResponse`` (as a plain Starlette app would). No auth, no
rate limit, no cache, no middleware: the floor the framework and this machine allow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROW = {
    "id": "bare-0000000000",
    "type": "pattern_detected",
    "symbol": "AAPL",
    "pattern": "hammer",
    "timeframe": "daily",
    "confidence": 0.82,
    "detected_at": "2026-11-28T15:30:00Z",
    "expires_at": None,
    "price": 187.5,
}
DOCUMENT = {"items": [{**ROW, "id": f"bare-{i:010d}"} for i in range(6)], "next_cursor": None}


MAX_BYTES = 4 * 1024 * 1024
_SIZED: dict[int, bytes] = {}


async def document(request: Request) -> JSONResponse:
    return JSONResponse(DOCUMENT)


async def sized(request: Request) -> Response:
    size = min(int(request.path_params["size"]), MAX_BYTES)
    if size not in _SIZED:
        rows = max(1, round(size / (len(json.dumps(ROW, separators=(",", ":"))) + 1)))
        doc = {"items": [{**ROW, "id": f"bare-{i:010d}"} for i in range(rows)], "next_cursor": None}
        _SIZED[size] = json.dumps(doc, separators=(",", ":")).encode()
    return Response(_SIZED[size], media_type="application/json")


app = Starlette(routes=[Route("/json", document), Route("/json/{size:int}", sized)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes on the port (uvicorn's own supervisor, as the hub's)",
    )
    args = parser.parse_args()
    uvicorn.run(
        app if args.workers == 1 else "bare_json:app",
        app_dir=str(Path(__file__).resolve().parent),
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
