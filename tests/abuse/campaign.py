"""One abuse campaign: two hub processes (HS256, and a JWKS-only one whose key set is missing at first),
a steady valid flow, every attack of ``attacks_*.py`` run concurrently while it flows, then the figures
the suite's tests judge. Each attack is an ``async def (ctx) -> None`` that asserts; the campaign keeps
its failure (the assertion text) instead of stopping, so each attack is reported as its own test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from psycopg.rows import dict_row

from tests.abuse.harness import (
    HubProcess,
    LatencyStats,
    Loopback,
    PartitionSampler,
    StatusRecorder,
    SteadyProducer,
)
from tests.conftest import JWT_SECRET
from tests.support import free_port, wait_for

__all__ = ["Attack", "Campaign", "Ctx", "ingest_key_pattern", "run_campaign"]

Attack = Callable[["Ctx"], Awaitable[None]]

WARMUP_S = 2.0  # valid flow before the baseline
# Valid flow, no attack, before the attacks and again after them: the machine's own latency in this run,
# for the invariant's bound. Measured on both sides, so a neighbour's load that starts or stops in between
# (another test run on the same cores) is seen by the bound too.
BASELINE_S = 8.0
MIN_ABUSE_S = 20.0  # the flow lasts at least this long after the warm-up, however fast the attacks are
ATTACK_TIMEOUT_S = 40.0  # one attack that hangs is a failure of that attack, not of the campaign
DRAIN_S = 30.0  # after the flow stops: deadline for the last valid events to reach the clean stream
RATE_PER_S = 500.0
HUB_READY_S = 60.0  # HubProcess.wait_ready's default
HUB_STOP_S = 30.0  # HubProcess.stop's default
# The campaign runs in the set-up of the package's first test, under that test's pytest-timeout: its
# worst case is every phase at its own bound (plus the producer's join slack of 30 s, and 30 s more), not
# the suite's 120 s per test (a loaded machine once took longer than that to reach the drain).
CAMPAIGN_BUDGET_S = (
    HUB_READY_S
    + WARMUP_S
    + 2 * BASELINE_S
    + max(MIN_ABUSE_S, ATTACK_TIMEOUT_S)
    + 2 * DRAIN_S
    + 30
    + HUB_STOP_S
    + 30
)
PARTITIONS_PER_BATCH = 4  # TICKSTOCK_PARTITIONS_PER_BATCH, set explicitly on both hubs


def ingest_key_pattern(seq: int) -> str:
    """A LIKE pattern for the dead-letter source key of ingest stream sequence ``seq`` (any payload)."""
    return f"ingest:{seq}:%"


@dataclass
class Ctx:
    """What an attack may use. Every HTTP client it makes is bound to its own loopback address and
    recorded in ``recorder``; ``in_window_months`` collects the 'YYYY-MM' of every in-window event an
    attack sends with an old date (each may cost one partition)."""

    hub: HubProcess
    jwks_hub: HubProcess
    jwks_path: Path
    jwks_key: RSAKey
    database_url: str
    nats_url: str
    js: JetStreamContext
    recorder: StatusRecorder
    loopback: Loopback
    in_window_months: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def token(
        self,
        sub: str = "attacker",
        scopes: Iterable[str] = ("patterns:write",),
        *,
        ttl_s: int = 3600,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An HS256 token signed with the hub's secret; ``claims`` override (None removes one)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": sub,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + ttl_s,
            "iss": "tickstock-hub",
            "aud": "tickstock",
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(header or {"alg": "HS256"}, body, OctKey.import_key(JWT_SECRET))

    def rs_token(self, sub: str = "jwks-user", scopes: Iterable[str] = ("patterns:read",)) -> str:
        """An RS256 token signed with ``jwks_key`` (kid ``abuse-1``) for the JWKS hub."""
        now = int(time.time())
        return jwt.encode(
            {"alg": "RS256", "kid": "abuse-1"},
            {
                "sub": sub,
                "scope": " ".join(scopes),
                "iat": now,
                "exp": now + 600,
                "iss": "tickstock-hub",
                "aud": "tickstock",
            },
            self.jwks_key,
        )

    async def client(
        self,
        token: str | None = None,
        *,
        hub: HubProcess | None = None,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> httpx.AsyncClient:
        """An httpx client on ``hub`` (default: the HS256 hub) from a fresh loopback address (or
        ``source``), with ``Authorization: Bearer token`` when given."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        transport = httpx.AsyncHTTPTransport(local_address=source or self.loopback.take())
        client = httpx.AsyncClient(
            base_url=(hub or self.hub).url,
            headers=all_headers,
            timeout=30,
            transport=transport,
            event_hooks={"response": [self.recorder.hook]},
        )
        return await self._stack.enter_async_context(client)

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            return await (await conn.execute(sql, args)).fetchall()

    async def wait_rows(
        self, sql: str, *args: Any, timeout_s: float = 12.0, what: str = "rows"
    ) -> list[dict[str, Any]]:
        """Poll ``sql`` until it returns a row; AssertionError naming ``what`` after ``timeout_s``."""
        return await wait_for(lambda: self.rows(sql, *args), timeout=timeout_s, interval=0.1, what=what)

    async def dead_letter_of(self, seq: int, *, timeout_s: float = 12.0) -> dict[str, Any]:
        """The dead letter of the ingest message with stream sequence ``seq`` (its source key is
        ``ingest:<seq>:<digest of the payload>``, :func:`hub.deadletters.ingest_source_key`; the campaign's
        streams are fresh, so the sequence alone names one message)."""
        [row] = await self.wait_rows(
            "SELECT * FROM dead_letters WHERE source_key LIKE %s",
            ingest_key_pattern(seq),
            timeout_s=timeout_s,
            what=f"a dead letter for ingest seq {seq}",
        )
        return row

    async def stored(self, event_id: str, *, timeout_s: float = 12.0) -> dict[str, Any]:
        [row] = await self.wait_rows(
            "SELECT * FROM pattern_events WHERE id = %s",
            event_id,
            timeout_s=timeout_s,
            what=f"event {event_id} stored",
        )
        return row

    async def tickstock(self, *args: str) -> tuple[int, str, str]:
        """The ``tickstock`` command as a process against the test servers: (status, stdout, stderr)."""
        import os
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKSTOCK_")}
        env.update(TICKSTOCK_DATABASE_URL=self.database_url, TICKSTOCK_NATS_URL=self.nats_url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "api.cli",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()


@dataclass
class Campaign:
    """What a campaign measured. ``failures[name]`` is None for an attack whose assertions held."""

    failures: dict[str, str | None]
    latency: LatencyStats
    baseline: LatencyStats
    baseline_after: LatencyStats
    producer: SteadyProducer
    partitions: PartitionSampler
    recorder: StatusRecorder
    logs: dict[str, str]
    in_window_months: set[str]
    database_url: str
    notes: list[str]

    def summary(self) -> str:
        worst_growth, worst_batches = self.partitions.worst()
        failed = sorted(n for n, f in self.failures.items() if f)
        lines = [
            "abuse: baseline (valid flow, no attack): " + self.baseline.line(),
            "abuse: baseline after the attacks: " + self.baseline_after.line(),
            "abuse: "
            + self.latency.line()
            + f" (during the abuse; {len(self.producer.published)} published, "
            f"{len(self.producer.missing())} not seen on the clean stream, {self.producer.repeats} repeats)",
            (
                f"abuse: pattern_events partitions before {self.partitions.first}, after {self.partitions.last}, "
                f"over {self.partitions.batches:.0f} writer batches (worst step +{worst_growth} in "
                f"{worst_batches:.0f} batch(es); bound {PARTITIONS_PER_BATCH} per batch)"
            ),
            f"abuse: {len(self.recorder.responses)} hostile HTTP responses, "
            f"{len(self.recorder.with_status(500))} with status 500; attacks {len(self.failures) - len(failed)}/"
            f"{len(self.failures)} held" + (f" (failed: {', '.join(failed)})" if failed else ""),
        ]
        return "\n".join(lines + [f"abuse: note: {n}" for n in self.notes])


async def _guarded(name: str, attack: Attack, ctx: Ctx) -> str | None:
    # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for's cancellation is lost when the
    # attack's own inner await completes at that moment (a busy websocket), and the attack runs on.
    try:
        async with asyncio.timeout(ATTACK_TIMEOUT_S):
            await attack(ctx)
    except TimeoutError:
        return f"{name}: did not finish within {ATTACK_TIMEOUT_S} s"
    except AssertionError as exc:
        return f"{name}: {exc}"
    except Exception:
        return f"{name} raised:\n{traceback.format_exc()}"
    return None


@contextlib.asynccontextmanager
async def _hubs(
    database_url: str, nats_url: str, redis_url: str, folder: Path
) -> AsyncIterator[tuple[HubProcess, HubProcess, Path]]:
    common = {
        "TICKSTOCK_DATABASE_URL": database_url,
        "TICKSTOCK_NATS_URL": nats_url,
        "TICKSTOCK_REDIS_URL": redis_url,
        "TICKSTOCK_MAINTENANCE_INTERVAL_S": "3600",
        "TICKSTOCK_POOL_MAX_SIZE": "6",
        "TICKSTOCK_PARTITIONS_PER_BATCH": str(PARTITIONS_PER_BATCH),
        "TICKSTOCK_LOG_LEVEL": "INFO",
    }
    jwks_path = folder / "keys" / "jwks.json"  # absent until the JWKS attack writes it
    hub = HubProcess(
        "hs256",
        free_port(),
        {**common, "TICKSTOCK_JWT_SECRET": JWT_SECRET, "TICKSTOCK_DATA_DIR": str(folder / "a")},
        folder / "hub-hs256.log",
    )
    jwks_hub = HubProcess(
        "jwks",
        free_port(),
        {**common, "TICKSTOCK_JWKS_URL": jwks_path.as_uri(), "TICKSTOCK_DATA_DIR": str(folder / "b")},
        folder / "hub-jwks.log",
    )
    hub.start()
    jwks_hub.start()
    try:
        await asyncio.gather(hub.wait_ready(HUB_READY_S), jwks_hub.wait_ready(HUB_READY_S))
        yield hub, jwks_hub, jwks_path
    finally:
        await asyncio.gather(hub.stop(HUB_STOP_S), jwks_hub.stop(HUB_STOP_S))


async def run_campaign(
    attacks: dict[str, Attack], *, database_url: str, nats_url: str, redis_url: str, folder: Path
) -> Campaign:
    """Start the hubs and the flow, run ``attacks`` concurrently after the warm-up, keep the flow going
    for at least :data:`MIN_ABUSE_S`, stop it, wait for the valid events, stop the hubs, and return the
    figures."""
    nc = NATS()
    await nc.connect(nats_url, name="abuse-attackers", connect_timeout=5)
    recorder = StatusRecorder()
    notes: list[str] = []
    try:
        async with _hubs(database_url, nats_url, redis_url, folder) as (hub, jwks_hub, jwks_path):
            sampler = PartitionSampler(database_url, [hub, jwks_hub])
            async with httpx.AsyncClient(timeout=5) as probe:
                await sampler.sample(probe)
            sampler.start()
            producer = SteadyProducer(nats_url, rate_per_s=RATE_PER_S)
            producer.start()
            ctx = Ctx(
                hub=hub,
                jwks_hub=jwks_hub,
                jwks_path=jwks_path,
                jwks_key=RSAKey.generate_key(2048),
                database_url=database_url,
                nats_url=nats_url,
                js=nc.jetstream(),
                recorder=recorder,
                loopback=Loopback(),
                notes=notes,
            )
            try:
                await asyncio.sleep(WARMUP_S)
                baseline_from = time.monotonic()
                await asyncio.sleep(BASELINE_S)
                abuse_from = time.monotonic()
                async with ctx._stack:
                    results = await asyncio.gather(*(_guarded(n, a, ctx) for n, a in attacks.items()))
                    remaining = MIN_ABUSE_S - (time.monotonic() - abuse_from)
                    if remaining > 0:
                        await asyncio.sleep(remaining)
                abuse_until = time.monotonic()
                await asyncio.sleep(BASELINE_S)
                after_until = time.monotonic()
            finally:
                await asyncio.to_thread(producer.stop, DRAIN_S)
                await sampler.stop()
            notes.append(f"abuse window {abuse_until - abuse_from:.1f} s")
    finally:
        await nc.close()
    return Campaign(
        failures=dict(zip(attacks, results, strict=True)),
        latency=producer.stats(abuse_from, abuse_until),
        baseline=producer.stats(baseline_from, abuse_from),
        baseline_after=producer.stats(abuse_until, after_until),
        producer=producer,
        partitions=sampler,
        recorder=recorder,
        logs={hub.name: hub.log(), jwks_hub.name: jwks_hub.log()},
        in_window_months=ctx.in_window_months,
        database_url=database_url,
        notes=notes,
    )


def jwks_document(key: RSAKey) -> str:
    """The public key set with ``key`` as kid ``abuse-1``."""
    public = key.as_dict(private=False)
    return json.dumps({"keys": [{**public, "kid": "abuse-1", "use": "sig", "alg": "RS256"}]})
