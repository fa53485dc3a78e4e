"""``PUT /api/patterns/definitions/{name}`` and ``tickstock patterns define`` on live hubs: validation,
idempotence, the 409 for a spelling another definition holds, and a second node that accepts a new name
without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from api.cli import main
from api.settings import Settings
from hub.model import EventError
from tests.api.conftest import TokenClients
from tests.support import LiveHub, make_event, wait_for

PROBLEM = "application/problem+json"
URL = "/api/patterns/definitions/{}"


def knows(hub: LiveHub, spelling: str) -> str | None:
    try:
        return hub.hub.catalog.current.canonical(spelling)
    except EventError:
        return None


async def test_put_creates_then_answers_the_same_request_unchanged(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    admin = token_clients("ops", scopes=("admin",))
    assert knows(live_hub, "ZZ_Vol_Burst") is None
    body = {"aliases": ["ZZ_Vol_Burst", "ZZVB"], "category": "indicator", "description": "volume burst"}
    first = await admin.put(URL.format("zz_volume_burst"), json=body)
    assert first.status_code == 201, first.text
    assert first.json() | {"timeframes": None} == {
        "name": "zz_volume_burst",
        "aliases": ["ZZ_Vol_Burst", "ZZVB"],
        "category": "indicator",
        "direction": "neutral",
        "description": "volume burst",
        "timeframes": None,
        "enabled": True,
        "created": True,
        "changed": True,
    }
    assert knows(live_hub, "zzvb") == "zz_volume_burst"  # this node at once
    again = await admin.put(URL.format("zz_volume_burst"), json=body)
    assert again.status_code == 200 and (again.json()["created"], again.json()["changed"]) == (False, False)
    changed = await admin.put(URL.format("zz_volume_burst"), json={"direction": "bullish"})
    assert changed.status_code == 200 and changed.json()["changed"] is True
    assert changed.json()["aliases"] == ["ZZ_Vol_Burst", "ZZVB"]  # left out: kept
    reader = token_clients("reader", scopes=("patterns:read",))
    listed = (await reader.get("/api/patterns/definitions")).json()["items"]
    assert [d["direction"] for d in listed if d["name"] == "zz_volume_burst"] == ["bullish"]


BAD = [
    ("Not-A-Name", {"category": "chart"}, 400, "path.name"),
    ("x" * 65, {"category": "chart"}, 400, "path.name"),
    ("zz_bad", {"category": "shape"}, 400, "body.category"),
    ("zz_bad", {"category": "chart", "aliases": ["-leading"]}, 400, "body.aliases[0]"),
    ("zz_bad", {"category": "chart", "aliases": ["a\u0000b"]}, 400, "body.aliases[0]"),
    ("zz_bad", {"category": "chart", "aliases": ["x" * 65]}, 400, "body.aliases[0]"),
    ("zz_bad", {"category": "chart", "aliases": [f"a{i}" for i in range(33)]}, 400, "body.aliases"),
    ("zz_bad", {"category": "chart", "description": "x" * 1001}, 400, "body.description"),
    ("zz_bad", {"category": "chart", "timeframes": []}, 400, "body.timeframes"),
    ("zz_bad", {"category": "chart", "timeframes": ["2min"]}, 400, "body.timeframes[0]"),
    ("zz_bad", {"category": "chart", "colour": "red"}, 400, "body.colour"),
    ("zz_bad", {"aliases": ["ZZBad"]}, 400, "body.category"),  # new: needs a category
    ("zz_bad", ["not", "an", "object"], 400, "body"),
    ("zz_bad", {"category": "chart", "aliases": ["Hammer"]}, 409, "body.aliases"),
    ("doji_star_like", {"category": "chart", "aliases": ["CDLDOJI"]}, 409, "body.aliases"),
    ("hammer_", {"category": "chart"}, 409, "path.name"),  # "hammer_" matches hammer's spelling
]


@pytest.mark.parametrize(("name", "body", "status", "loc"), BAD, ids=[f"{s}-{loc}" for _, _, s, loc in BAD])
async def test_bad_definitions_are_problems_and_change_nothing(
    live_hub: LiveHub, token_clients: TokenClients, name: str, body: object, status: int, loc: str
) -> None:
    admin = token_clients("ops", scopes=("admin",))
    response = await admin.put(URL.format(name), json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    assert loc in [e["loc"] for e in problem["errors"]], problem
    listed = (await admin.get("/api/patterns/definitions")).json()["items"]
    assert name not in {d["name"] for d in listed}


async def test_the_409_names_what_holds_the_spelling(live_hub: LiveHub, token_clients: TokenClients) -> None:
    admin = token_clients("ops", scopes=("admin",))
    response = await admin.put(
        URL.format("zz_taken"), json={"category": "chart", "aliases": ["ok", "Hammer"]}
    )
    assert response.status_code == 409
    assert response.json()["errors"] == [{"loc": "body.aliases", "msg": "'Hammer' already names 'hammer'"}]


async def test_only_admin_may_define_and_bodies_are_bounded(
    live_hub: LiveHub, token_clients: TokenClients
) -> None:
    writer = token_clients("w", scopes=("patterns:write", "patterns:read"))
    assert (await writer.put(URL.format("zz_nope"), json={"category": "chart"})).status_code == 403
    async with httpx.AsyncClient(base_url=live_hub.url) as anonymous:
        assert (await anonymous.put(URL.format("zz_nope"), json={"category": "chart"})).status_code == 401
    admin = token_clients("ops", scopes=("admin",))
    huge = (
        b'{"category": "chart", "description": "'
        + b"x" * (live_hub.settings.admin_max_body_bytes + 1)
        + b'"}'
    )
    response = await admin.put(
        URL.format("zz_nope"), content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    deep = '{"aliases": ' + "[" * 40 + "]" * 40 + "}"
    response = await admin.put(
        URL.format("zz_nope"), content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_a_second_node_accepts_the_new_name_without_restart(
    live_hub: LiveHub, settings: Settings, token_clients: TokenClients
) -> None:
    admin = token_clients("ops", scopes=("admin",))
    async with LiveHub(settings) as second:
        assert knows(second, "ZZ_Two_Nodes") is None
        defined = await admin.put(URL.format("zz_two_nodes"), json={"category": "chart", "aliases": ["ZZ2N"]})
        assert defined.status_code == 201
        started = time.monotonic()
        await wait_for(
            lambda: knows(second, "ZZ2N"), timeout=10, interval=0.01, what="the second node's catalog"
        )
        print(
            f"second node knew the new name {1000 * (time.monotonic() - started):.0f} ms after the PUT answered"
        )
        event = make_event(1, prefix="zz-two-nodes", pattern="ZZ_Two_Nodes")
        writer = token_clients("w", scopes=("patterns:write", "patterns:read"))
        writer.base_url = httpx.URL(second.url)
        posted = await writer.post("/api/patterns", json={"events": [event]})
        assert posted.json()["accepted"] == 1, posted.text

        async def stored() -> bool:
            return (await writer.get("/api/patterns/zz-two-nodes-1")).status_code == 200

        await wait_for(stored, timeout=30, what="the event with the new name stored")
        assert (await writer.get("/api/patterns/zz-two-nodes-1")).json()["pattern"] == "zz_two_nodes"


async def test_the_cli_defines_against_the_database_and_the_hub_follows(
    live_hub: LiveHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKSTOCK_DATABASE_URL", live_hub.settings.database_url or "")
    monkeypatch.setenv("TICKSTOCK_DATA_DIR", str(tmp_path))
    capsys.readouterr()
    args = ["patterns", "define", "zz_cli_gap", "--alias", "ZZ_CLI_Gap", "--category", "chart"]
    assert (
        await asyncio.to_thread(main, [*args, "--timeframe", "daily", "--timeframe", "daily", "--no-enabled"])
        == 0
    )
    out = capsys.readouterr()
    assert out.out.strip() == (
        "zz_cli_gap: created; category chart, direction neutral, aliases ZZ_CLI_Gap, timeframes daily, disabled"
    )
    assert "tickstock dlq replay --reason unknown_pattern" in out.err
    await wait_for(lambda: knows(live_hub, "zzcligap"), timeout=10, what="the hub's catalog")
    assert await asyncio.to_thread(main, args) == 0
    assert capsys.readouterr().out.startswith("zz_cli_gap: unchanged;")
    for bad, message in (
        (["patterns", "define", "Bad Name", "--category", "chart"], "1-64 of a-z"),
        (["patterns", "define", "zz_cli_new", "--alias", "ZZCliNew"], "needs a category"),
        (["patterns", "define", "zz_cli_gap", "--direction", "up"], "direction"),
        (
            ["patterns", "define", "zz_cli_other", "--category", "chart", "--alias", "HAMMER"],
            "names 'hammer'",
        ),
    ):
        assert await asyncio.to_thread(main, bad) == 1, bad
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tickstock:")]
        assert len(err) == 1 and message in err[0], (bad, err)
