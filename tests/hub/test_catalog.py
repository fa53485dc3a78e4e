"""The catalog cache: overlapping loads, an empty table, definitions that would not build a catalog."""

from __future__ import annotations

import logging

import pytest
from psycopg_pool import AsyncConnectionPool

from hub.catalog import CatalogCache
from hub.model import EventError


def test_a_load_never_replaces_the_catalog_of_a_load_begun_after_it() -> None:
    cache = CatalogCache()
    older, newer = cache.begin(), cache.begin()
    assert cache.install(newer, [("new_name", ["NewSpelling"])])
    assert not cache.install(older, [("old_name", ["OldSpelling"])])  # finished last, begun first
    assert cache.current.canonical("newspelling") == "new_name"
    with pytest.raises(EventError):
        cache.current.canonical("OldSpelling")
    assert cache.refreshes == 1 and cache.loaded


def test_an_empty_table_or_a_broken_one_keeps_what_is_in_use(caplog: pytest.LogCaptureFixture) -> None:
    cache = CatalogCache()
    assert not cache.install(cache.begin(), [])
    assert cache.current.canonical("Anything Goes") == "anything_goes"  # permissive until loaded
    assert cache.install(cache.begin(), [("hammer", ["CDLHAMMER"])])
    with caplog.at_level(logging.ERROR, logger="tickstock.catalog"):
        assert not cache.install(cache.begin(), [("hammer", []), ("hammer_two", ["HAMMER"])])
    assert "catalog in use stays" in caplog.text
    assert cache.current.canonical("cdlhammer") == "hammer"


async def test_refresh_keeps_the_catalog_when_the_table_was_edited_into_a_clash(
    ref_pool: AsyncConnectionPool,
) -> None:
    cache = CatalogCache()
    assert await cache.refresh(ref_pool) > 80
    before = cache.current
    async with ref_pool.connection() as conn:  # by hand: the writers refuse this
        await conn.execute(
            "INSERT INTO pattern_definitions (name, aliases, category) VALUES ('hammer_copy', '{Hammer}', 'chart')"
        )
    await cache.refresh(ref_pool)
    assert cache.current is before
    async with ref_pool.connection() as conn:
        await conn.execute("DELETE FROM pattern_definitions WHERE name = 'hammer_copy'")
    await cache.refresh(ref_pool)
    assert cache.current is not before and cache.current.canonical("HAMMER") == "hammer"
