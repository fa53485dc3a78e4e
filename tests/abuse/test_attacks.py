"""Each hostile input of issue #11 (and more), sent while 500 valid events/s flow: answered with its
documented status, error frame, close code or dead-letter reason (see ``attacks_*.py``)."""

from __future__ import annotations

import pytest

from tests.abuse.campaign import CAMPAIGN_BUDGET_S, Campaign
from tests.abuse.conftest import ATTACKS, failure_of

# The first test of the package carries the campaign in its set-up.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(CAMPAIGN_BUDGET_S)]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_input_is_answered(campaign: Campaign, name: str) -> None:
    failure_of(campaign, name)
