"""Entity tags and 304 Not Modified on every cacheable GET (RFC 9110 §8.8.3, §13.1.2)."""

from __future__ import annotations

import httpx
import pytest

from api.etags import CACHE_CONTROL, entity_tag, none_match
from tests.api.conftest import TokenClients

CACHEABLE = [
    "/api/patterns/scan?limit=5",
    "/api/patterns/definitions",
    "/api/universes",
    "/api/universes/dow30",
    "/api/symbols?q=AA",
    "/api/symbols/AAPL",
]
STRONG = '"abc"'
WEAK = 'W/"abc"'


@pytest.mark.parametrize(
    ("header", "etag", "matches"),
    [
        ('"abc"', STRONG, True),
        ('W/"abc"', STRONG, True),  # weak comparison: W/ on either side does not matter
        ('"abc"', WEAK, True),
        ('W/"abc"', WEAK, True),
        ('"abd"', STRONG, False),
        ("*", STRONG, True),
        (" * ", WEAK, True),
        ('"x", "abc"', STRONG, True),
        ('"x",W/"abc"  ,', STRONG, True),  # empty list elements are allowed
        (', ,"abc"', STRONG, True),
        ('"x", "y"', STRONG, False),
        ('"a,b"', 'W/"a,b"', True),  # a comma inside a tag is part of it
        ('"a,b"', STRONG, False),
        ("abc", STRONG, False),  # not a quoted tag: the header matches nothing
        ('"abc', STRONG, False),
        ('"x" "abc"', STRONG, False),  # two tags without a comma: malformed
        ('w/"abc"', STRONG, False),  # W/ is case-sensitive
        ('"ab"c"', STRONG, False),
        ('*, "abc"', STRONG, False),  # "*" only alone
        ("", STRONG, False),
        (None, STRONG, False),
        ('"abc", ' * 2000, STRONG, False),  # longer than the parser reads
    ],
)
def test_if_none_match_uses_the_weak_comparison(header: str | None, etag: str, matches: bool) -> None:
    assert none_match(header, etag) is matches


def test_entity_tags() -> None:
    assert entity_tag("abc") == STRONG and entity_tag("abc", weak=True) == WEAK


@pytest.mark.parametrize("path", CACHEABLE)
async def test_cacheable_gets_carry_a_tag_and_answer_304_when_it_matches(
    token_clients: TokenClients, path: str
) -> None:
    client = token_clients("etag-reader")
    first = await client.get(path)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == CACHE_CONTROL
    assert etag.startswith('W/"' if "/scan" in path else '"')
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag and "content-length" not in again.headers
    assert again.headers["ratelimit-limit"] and again.headers["x-cache"]
    # Weak comparison: the other form of the same tag, a list holding it, and "*" all match.
    other_form = etag[2:] if etag.startswith("W/") else "W/" + etag
    for header in (other_form, f'"nothing", {etag}', "*"):
        assert (await client.get(path, headers={"If-None-Match": header})).status_code == 304
    # Another tag, or a header that does not parse, gets the whole answer.
    for header in ('"nothing"', "garbage", etag[:-1]):
        response = await client.get(path, headers={"If-None-Match": header})
        assert response.status_code == 200 and response.headers["etag"] == etag


async def test_a_scan_tag_names_its_rows_not_its_timings(token_clients: TokenClients) -> None:
    """A scan's body carries query_ms and the cache's age: the (weak) tag stays while the rows do."""
    client = token_clients("etag-scan")
    tags = set()
    for _ in range(3):
        response = await client.get("/api/patterns/scan", params={"limit": "3", "timeframe": "weekly"})
        assert response.status_code == 200
        tags.add(response.headers["etag"])
    assert len(tags) == 1


async def test_errors_and_uncached_routes_carry_no_tag(token_clients: TokenClients) -> None:
    client = token_clients("etag-errors")
    bad = await client.get("/api/patterns/scan", params={"limit": "0"}, headers={"If-None-Match": "*"})
    assert bad.status_code == 400 and "etag" not in bad.headers
    missing = await client.get("/api/universes/no-such-universe", headers={"If-None-Match": "*"})
    assert missing.status_code == 404 and "etag" not in missing.headers
    async with httpx.AsyncClient(base_url=str(client.base_url)) as nobody:
        anonymous = await nobody.get("/api/universes", headers={"If-None-Match": "*"})
    assert anonymous.status_code == 401 and "etag" not in anonymous.headers
