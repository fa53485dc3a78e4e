"""Authentication attacks over HTTP: hostile tokens, token lifetime, a failing JWKS (and, once it loads,
cursors forged with the constant the JWKS-only hub used to sign them), a burst of failures from one
address."""

from __future__ import annotations

import asyncio
import hashlib

import httpx

from tests.abuse.attacks_http import assert_cursors_refused, forged_scan_cursors
from tests.abuse.attacks_ws import BURST, REFILL_PER_S, hostile_tokens
from tests.abuse.campaign import Attack, Ctx, jwks_document
from tests.abuse.harness import assert_problem
from tests.support import wait_for

JWKS_LOAD_DEADLINE_S = 25.0  # a fixed hub may wait its minimum refetch interval (10 s) after a failure


async def hostile_tokens_over_http(ctx: Ctx) -> None:
    """Each a 401 problem (never a 500), whose detail echoes none of the token."""
    source = ctx.loopback.take()
    for name, (token, secret) in hostile_tokens(ctx).items():
        client = await ctx.client(token, source=source)
        body = assert_problem(await client.get("/api/patterns/scan", params={"limit": "1"}), 401)
        assert secret not in str(body.get("detail", "")), (name, body)


async def sub_at_the_limit_is_accepted(ctx: Ctx) -> None:
    """256 characters is still a subject (the bound is not off by one)."""
    client = await ctx.client(ctx.token("s" * 256, ("patterns:read",)))
    response = await client.get("/api/patterns/scan", params={"limit": "1"})
    assert response.status_code == 200, response.text[:300]


async def token_lifetime_is_capped(ctx: Ctx) -> None:
    """exp − iat over TICKSTOCK_JWT_MAX_LIFETIME_S (1 day), or no iat: 401."""
    source = ctx.loopback.take()
    for token in (
        ctx.token("long-lived", ("patterns:read",), ttl_s=10 * 86400),
        ctx.token("no-iat", ("patterns:read",), iat=None),
        ctx.token("iat-string", ("patterns:read",), iat="yesterday"),
    ):
        client = await ctx.client(token, source=source)
        assert_problem(await client.get("/api/patterns/scan", params={"limit": "1"}), 401)


async def jwks_failure_and_forged_cursor(ctx: Ctx) -> None:
    """A JWKS-only hub whose key set file is missing: 503 with a generic detail (no path, no OS error).
    Once the file exists: cursors forged with the public constant the JWKS-only hub signed with before
    #11 (HMAC key sha256("tickstock-scan-cursor\\0")) are a 400 naming the cursor."""
    client = await ctx.client(ctx.rs_token(), hub=ctx.jwks_hub)
    response = await client.get("/api/patterns/scan", params={"limit": "1"})
    body = assert_problem(response, 503)
    for leak in (str(ctx.jwks_path), ctx.jwks_path.name, str(ctx.jwks_path.parent), "Errno", "No such file"):
        assert leak not in response.text, (leak, body)
    ctx.jwks_path.parent.mkdir(parents=True, exist_ok=True)
    ctx.jwks_path.write_text(jwks_document(ctx.jwks_key))

    async def loaded() -> httpx.Response | None:
        response = await client.get("/api/patterns/scan", params={"limit": "1"})
        return None if response.status_code == 503 else response

    page = await wait_for(
        loaded, timeout=JWKS_LOAD_DEADLINE_S, interval=0.5, what="the key set loaded after it appeared"
    )
    assert page.status_code == 200, page.text[:300]
    real = page.json()["next_cursor"]
    assert real, "nothing stored to page through"
    public_constant = hashlib.sha256(b"tickstock-scan-cursor\0").digest()
    await assert_cursors_refused(
        client, forged_scan_cursors(real, public_constant), what="signed with the old public constant"
    )


MAX_BURST_REQUESTS = 400  # a limiter that never refuses fails here, however slow the machine
VOLLEY = 10  # requests sent at once after the first 429


def _now() -> float:
    return asyncio.get_running_loop().time()


def _refills_since(since: float) -> float:
    """Tokens the failure bucket has refilled since ``since`` (the loop's clock) at its documented rate. A
    slower machine only raises what the oracle allows: the clock is the refill, never a deadline."""
    return REFILL_PER_S * (_now() - since)


async def failed_authentication_burst(ctx: Ctx) -> None:
    """Failed authentications from one address: 401 while the burst lasts, then 429 with Retry-After, and
    the address stays refused while it goes on failing. The bucket holds ``BURST`` and refills
    ``REFILL_PER_S`` a second (as documented), so the oracle is the bucket itself: after ``t`` seconds at
    most ``BURST + REFILL_PER_S * t`` failures may be answered 401 (on a loaded machine a request can take
    half a second, and the refills count). The requests after the first 429 go as one volley, which only the
    tokens refilled since that 429 may answer with 401."""
    source = ctx.loopback.take()
    started = _now()
    statuses: list[int] = []
    first_refusal = None
    while len(statuses) < MAX_BURST_REQUESTS:  # hygiene: ok - sends the burst, one request a turn; not a poll
        client = await ctx.client(f"not.a.token{len(statuses)}", source=source)
        response = await client.get("/api/patterns/scan")
        statuses.append(response.status_code)
        if response.status_code == 429:
            first_refusal, refused_at = response, _now()
            break
        allowed = BURST + _refills_since(started) + 1
        assert statuses.count(401) <= allowed, f"the bucket allows {allowed:.0f}: {statuses}"
    assert first_refusal is not None, f"no 429 after {len(statuses)} failed authentications: {statuses}"
    assert statuses[: BURST // 2] == [401] * (BURST // 2), statuses
    assert_problem(first_refusal, 429)
    assert first_refusal.headers.get("retry-after", "").isdigit(), first_refusal.headers
    clients = [await ctx.client(f"not.a.token.v{i}", source=source) for i in range(VOLLEY)]
    volley = await asyncio.gather(*(c.get("/api/patterns/scan") for c in clients))
    codes = [r.status_code for r in volley]
    assert set(codes) <= {401, 429}, (statuses, codes)
    # The tokens refilled since the first 429 may each let one more failure through, no more.
    refills = int(_refills_since(refused_at)) + 1
    assert codes.count(401) <= refills, (statuses, codes, refills)
    assert codes.count(429) >= VOLLEY - refills, (statuses, codes, refills)
    for response in volley:
        if response.status_code == 429:
            assert_problem(response, 429)
            assert response.headers.get("retry-after", "").isdigit(), response.headers


ATTACKS: dict[str, Attack] = {
    f.__name__: f
    for f in (
        hostile_tokens_over_http,
        sub_at_the_limit_is_accepted,
        token_lifetime_is_capped,
        jwks_failure_and_forged_cursor,
        failed_authentication_burst,
    )
}
