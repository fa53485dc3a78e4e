"""Pattern definitions written at run time: merge, idempotence, the one-key-one-definition rule under
concurrency, the notice every node hears, and the reference loader's check against them."""

from __future__ import annotations

import asyncio
import json
import shutil
from importlib import resources
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from store.definitions import (
    DefinitionConflict,
    DefinitionError,
    key_conflicts,
    list_definitions,
    match_key,
    put_definition,
)
from store.lookups import DEFINITIONS_NOTICE, REFERENCE_CHANNEL
from store.reference import ReferenceDataError, load_reference_data


def test_match_key_and_key_conflicts() -> None:
    assert match_key("High_Volume-Surge ") == match_key("highvolumesurge") == "highvolumesurge"
    entries = [
        ("bull_flag", ["BullFlag", "Bull Flag"]),
        ("flag", ["FLAG"]),
        ("bullflag2", ["bull-flag", "_-"]),
    ]
    assert key_conflicts(entries) == [("bullflag2", "bull-flag", "bull_flag"), ("bullflag2", "_-", "")]


async def test_create_change_and_repeat(ref_pool: AsyncConnectionPool) -> None:
    async with ref_pool.connection() as conn:
        stored, created, changed = await put_definition(
            conn, "zz_surge", {"aliases": ["ZZ_Surge", "ZZSurge", "ZZ_Surge"], "category": "indicator"}
        )
        assert (created, changed) == (True, True)
        assert stored["aliases"] == ["ZZ_Surge", "ZZSurge"]  # repeated spellings once
        assert (stored["direction"], stored["description"], stored["enabled"]) == ("neutral", "", True)
        assert len(stored["timeframes"]) == 8
        again = await put_definition(
            conn, "zz_surge", {"aliases": ["ZZ_Surge", "ZZSurge"], "category": "indicator"}
        )
        assert again == (stored, False, False)
        # A field left out keeps its stored value; the ones given replace theirs.
        stored, created, changed = await put_definition(
            conn, "zz_surge", {"description": "volume above 3x", "timeframes": ["daily"], "enabled": False}
        )
        assert (created, changed) == (False, True)
        assert (stored["aliases"], stored["category"], stored["timeframes"], stored["enabled"]) == (
            ["ZZ_Surge", "ZZSurge"],
            "indicator",
            ["daily"],
            False,
        )
        assert [d for d in await list_definitions(conn) if d["name"] == "zz_surge"] == [stored]


async def test_refusals_change_nothing(ref_pool: AsyncConnectionPool) -> None:
    async with ref_pool.connection() as conn:
        with pytest.raises(DefinitionError, match="needs a category") as needs:
            await put_definition(conn, "zz_new_one", {"aliases": ["ZZNewOne"]})
        assert needs.value.field == "category"
        with pytest.raises(DefinitionError, match="letter or a digit"):
            await put_definition(conn, "zz_blank", {"aliases": [" _ "], "category": "chart"})
        # "Hammer" names hammer; "bull flag" matches bull_flag ignoring case and separators.
        with pytest.raises(DefinitionConflict) as clash:
            await put_definition(
                conn, "zz_clash", {"aliases": ["ok_one", "HAMMER", "bull flag"], "category": "chart"}
            )
        assert clash.value.conflicts == [("HAMMER", "hammer"), ("bull flag", "bull_flag")]
        with pytest.raises(DefinitionConflict) as by_name:
            await put_definition(conn, "bullflag", {"category": "chart"})  # its own name is bull_flag's
        assert by_name.value.conflicts == [("bullflag", "bull_flag")]
        names = {d["name"] for d in await list_definitions(conn)}
    assert not names & {"zz_new_one", "zz_blank", "zz_clash", "bullflag"}


async def test_concurrent_writers_cannot_both_take_one_spelling(ref_pool: AsyncConnectionPool) -> None:
    async def define(name: str) -> object:
        async with ref_pool.connection() as conn:
            try:
                return await put_definition(conn, name, {"aliases": ["ZZ Contested"], "category": "chart"})
            except DefinitionConflict as exc:
                return exc

    results = await asyncio.gather(*(define(f"zz_contender_{i}") for i in range(4)))
    assert sum(isinstance(r, DefinitionConflict) for r in results) == 3
    catalog = CatalogCache()
    await catalog.refresh(ref_pool)  # would raise on a spelling with two owners
    assert catalog.current.canonical("zzcontested").startswith("zz_contender_")


async def test_every_write_is_announced(ref_pool: AsyncConnectionPool, ref_database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(ref_database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {REFERENCE_CHANNEL}")
        async with ref_pool.connection() as conn:
            await put_definition(conn, "zz_announced", {"category": "chart"})
        notice = await anext(listener.notifies(timeout=10))
    assert notice.payload == DEFINITIONS_NOTICE


async def test_the_reference_loader_refuses_a_file_that_clashes_with_a_run_time_definition(
    ref_pool: AsyncConnectionPool, tmp_path: Path
) -> None:
    async with ref_pool.connection() as conn:
        await put_definition(conn, "zz_operator_gap", {"aliases": ["ZZ Gap Up"], "category": "chart"})
    source = resources.files("store") / "reference_data"
    folder = tmp_path / "reference_data"
    shutil.copytree(str(source), folder)
    doc = json.loads((folder / "patterns.json").read_text())
    doc["patterns"].append({"name": "zz_release_gap", "category": "chart", "aliases": ["zz_gap_up"]})
    (folder / "patterns.json").write_text(json.dumps(doc))
    with pytest.raises(
        ReferenceDataError, match="'zz_gap_up' of 'zz_release_gap' also names 'zz_operator_gap'"
    ):
        await load_reference_data(ref_pool, source_dir=folder)
    async with ref_pool.connection() as conn:
        assert not [d for d in await list_definitions(conn) if d["name"] == "zz_release_gap"]  # rolled back
