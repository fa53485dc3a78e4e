"""What must hold for the whole campaign: no valid event lost or dead-lettered, publish→stored p99
during the abuse under a second (or, on a machine that is slow in this run, under five times the p99 of
the same flow just before or just after the attacks, whichever is slower), no 500, a clean hub log, and
bounded partition growth."""

from __future__ import annotations

import psycopg
import pytest

from tests.abuse.attacks_nats import FORGED_LOG_MARKER
from tests.abuse.campaign import (
    BASELINE_S,
    CAMPAIGN_BUDGET_S,
    MIN_ABUSE_S,
    PARTITIONS_PER_BATCH,
    RATE_PER_S,
    Campaign,
)
from tests.abuse.harness import log_problems

# The first test of the package carries the campaign in its set-up.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(CAMPAIGN_BUDGET_S)]

P99_BOUND_S = 1.0
# A hostile producer that stalls the writer shows as seconds against a baseline of milliseconds. With two
# test runs and six other jobs on the two cores, the abuse p99 was 3.1-3.7 s (p50 0.21 s) while a quiet
# machine gives 0.1-0.3 s: the bound follows the machine, measured in the same run. Beside another test
# run, a quiet stretch before the attacks (p99 274 ms) was followed by a loaded one during them (1.39 s):
# the flow after the attacks is measured too, and the slower of the two sets the bound.
P99_FACTOR = 5.0


def test_the_valid_flow_ran(campaign: Campaign) -> None:
    producer = campaign.producer
    assert producer.failures == [], producer.failures[:5]
    assert len(producer.published) >= RATE_PER_S * MIN_ABUSE_S * 0.8, len(producer.published)


def test_no_valid_event_is_lost_or_dead_lettered(campaign: Campaign) -> None:
    ids = campaign.producer.ids
    prefix = campaign.producer.prefix + "-%"
    with psycopg.connect(campaign.database_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT id, count(*) FROM pattern_events WHERE id LIKE %s GROUP BY id", (prefix,)
            ).fetchall()
        )
        dead = conn.execute(
            "SELECT event_id, reason FROM dead_letters WHERE event_id LIKE %s", (prefix,)
        ).fetchall()
    missing = [i for i in ids if i not in counts]
    twice = {i: n for i, n in counts.items() if n != 1}
    print(
        f"\nabuse: {len(ids)} valid events published, {len(counts)} stored, {len(missing)} missing, "
        f"{len(twice)} stored more than once, {len(dead)} dead-lettered"
    )
    assert dead == [], dead[:10]
    assert missing == [], missing[:10]
    assert twice == {}, list(twice.items())[:10]
    assert campaign.producer.missing() == [], campaign.producer.missing()[:10]


def test_publish_to_stored_p99_under_a_second_during_the_abuse(campaign: Campaign) -> None:
    stats, before, after = campaign.latency, campaign.baseline, campaign.baseline_after
    bound = max(P99_BOUND_S, P99_FACTOR * max(before.p99_s, after.p99_s))
    context = f"{stats.line()}; baseline before {before.line()}, after {after.line()}"
    print(f"\nabuse: {context}; bound {bound * 1000:.0f} ms")
    assert stats.count >= RATE_PER_S * MIN_ABUSE_S * 0.8, stats
    for baseline in (before, after):
        assert baseline.count >= RATE_PER_S * BASELINE_S * 0.8, baseline
    assert stats.p99_s < bound, context


def test_no_response_with_status_500(campaign: Campaign) -> None:
    errors = campaign.recorder.with_status(500)
    assert errors == [], errors[:20]


@pytest.mark.parametrize("hub", ["hs256", "jwks"])
def test_no_error_or_traceback_in_the_hub_log(campaign: Campaign, hub: str) -> None:
    log = campaign.logs[hub]
    problems = log_problems(log)
    assert problems == [], "\n".join(problems[:40])
    forged = [
        line
        for line in log.splitlines()
        if line.lstrip().startswith(FORGED_LOG_MARKER) or line.lstrip().startswith("X-Injected")
    ]
    assert forged == [], forged[:10]


def test_partition_growth_is_bounded(campaign: Campaign) -> None:
    sampler = campaign.partitions
    growth = sampler.last - sampler.first
    worst_growth, worst_batches = sampler.worst()
    print(
        f"\nabuse: pattern_events partitions before {sampler.first}, after {sampler.last} (+{growth}) over "
        f"{sampler.batches:.0f} writer batches; worst step +{worst_growth} in {worst_batches:.0f} batch(es); "
        f"old in-window months sent: {sorted(campaign.in_window_months)}"
    )
    assert worst_growth <= PARTITIONS_PER_BATCH * max(worst_batches, 1.0), (worst_growth, worst_batches)
    assert growth <= PARTITIONS_PER_BATCH * max(sampler.batches, 1.0)
    assert growth <= len(campaign.in_window_months), (
        f"+{growth} partitions for {sorted(campaign.in_window_months)}"
    )
