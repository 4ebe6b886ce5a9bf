"""Budgets from a table description: one rule for reads and writes."""

from __future__ import annotations

import pytest

from etl.capacity import budget_for
from etl.errors import EtlError

PROVISIONED = {"TableName": "T", "ProvisionedThroughput": {"ReadCapacityUnits": 200, "WriteCapacityUnits": 1000}}
ON_DEMAND = {"TableName": "T", "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
             "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0}}
KEYS = {"fraction_key": "[load] write_capacity_fraction", "absolute_key": "[load] max_wcu"}


def test_a_fraction_of_the_provisioned_units_and_its_refresh() -> None:
    b = budget_for(PROVISIONED, unit="WCU", fraction=0.25, absolute=None, **KEYS,
                   describe=lambda: {"ProvisionedThroughput": {"WriteCapacityUnits": 4000}})
    assert b.bucket.target == 250 and "25% of 1000 provisioned WCU" in b.describe and not b.on_demand
    assert b.refresh is not None and b.refresh() == 1000
    r = budget_for(PROVISIONED, unit="RCU", fraction=0.5, absolute=None, fraction_key="f", absolute_key="a")
    assert r.bucket.target == 100


def test_an_absolute_rate_wins_and_works_on_demand() -> None:
    b = budget_for(ON_DEMAND, unit="WCU", fraction=None, absolute=3000, **KEYS)
    assert b.bucket.target == 3000 and b.on_demand and "3000 WCU/s (max_wcu)" in b.describe


def test_refusals_name_the_setting_to_use() -> None:
    with pytest.raises(EtlError, match="on-demand") as e:
        budget_for(ON_DEMAND, unit="WCU", fraction=0.5, absolute=None, **KEYS)
    assert "[load] max_wcu" in (e.value.hint or "")
    with pytest.raises(EtlError, match="no write budget configured") as e:
        budget_for(PROVISIONED, unit="WCU", fraction=None, absolute=None, **KEYS)
    assert "[load] write_capacity_fraction" in (e.value.hint or "")
