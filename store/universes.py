"""Universes: the list with member counts, one universe (or a union of several) with its members."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = [
    "UNIVERSE_KINDS",
    "get_universe",
    "is_universe_key",
    "list_universes",
    "universe_members",
    "unknown_universes",
]

# Mirror the CHECK constraints on universes in migrations/0001_reference.sql.
UNIVERSE_KINDS = ("index", "sector", "etf", "theme", "custom")
_KEY = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


def is_universe_key(key: str) -> bool:
    """Whether ``key`` is spelled as a universe key can be (it may still not exist)."""
    return bool(_KEY.fullmatch(key))


async def list_universes(
    conn: psycopg.AsyncConnection[Any], *, kind: str | None = None
) -> list[dict[str, Any]]:
    """Every universe (of ``kind``, if given) with ``count``, its number of members, ordered by key."""
    cur = await conn.execute(
        "SELECT u.key, u.name, u.kind, u.description, u.updated_at,"
        " (SELECT count(*) FROM universe_members m WHERE m.universe = u.key) AS count"
        " FROM universes u WHERE %s::text IS NULL OR u.kind = %s ORDER BY u.key",
        (kind, kind),
    )
    return [dict(r) for r in await cur.fetchall()]


async def unknown_universes(conn: psycopg.AsyncConnection[Any], keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that name no universe."""
    if not keys:
        return set()
    cur = await conn.execute(
        "SELECT k FROM unnest(%s::text[]) AS k WHERE NOT EXISTS (SELECT 1 FROM universes u WHERE u.key = k)",
        (list(keys),),
    )
    return {r["k"] for r in await cur.fetchall()}


async def universe_members(conn: psycopg.AsyncConnection[Any], keys: Sequence[str]) -> dict[str, list[str]]:
    """The member symbols of each of ``keys`` that names a universe (absent keys are left out)."""
    if not keys:
        return {}
    cur = await conn.execute(
        "SELECT u.key, coalesce(array_agg(m.symbol ORDER BY m.symbol) FILTER (WHERE m.symbol IS NOT NULL), '{}')"
        " AS members FROM universes u LEFT JOIN universe_members m ON m.universe = u.key"
        " WHERE u.key = ANY(%s) GROUP BY u.key",
        (list(keys),),
    )
    return {r["key"]: list(r["members"]) for r in await cur.fetchall()}


async def get_universe(conn: psycopg.AsyncConnection[Any], keys: Sequence[str]) -> dict[str, Any] | None:
    """One universe, or the union of several: ``key``, ``name``, ``kind``, ``description``, ``members``
    (``symbol``, ``name``, ``sector``, ``weight``, in symbol order) and ``count``.

    ``keys`` are distinct existing-or-not keys; ``None`` when any of them names no universe. A union
    has kind ``"union"``, a name listing its parts, and ``weight`` null (weights belong to one index).
    """
    cur = await conn.execute(
        "SELECT key, name, kind, description, updated_at FROM universes WHERE key = ANY(%s)", (list(keys),)
    )
    found = {r["key"]: r for r in await cur.fetchall()}
    if len(found) != len(keys):
        return None
    cur = await conn.execute(
        "SELECT DISTINCT ON (s.symbol) s.symbol, s.name, s.sector, m.weight"
        " FROM universe_members m JOIN symbols s ON s.symbol = m.symbol"
        " WHERE m.universe = ANY(%s) ORDER BY s.symbol",
        (list(keys),),
    )
    members = [dict(r) for r in await cur.fetchall()]
    if len(keys) == 1:
        universe = dict(found[keys[0]])
    else:
        for member in members:
            member["weight"] = None
        parts = [found[k] for k in keys]
        universe = {
            "key": ":".join(keys),
            "name": " + ".join(p["name"] for p in parts),
            "kind": "union",
            "description": "Symbols in any of: "
            + ", ".join(f"{p['key']} ({p['name']})" for p in parts)
            + ".",
            "updated_at": max(p["updated_at"] for p in parts),
            "parts": list(keys),
        }
    universe["members"] = members
    universe["count"] = len(members)
    return universe
