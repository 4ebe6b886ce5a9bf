"""Budgets from a table description: one rule for reads and writes; a write budget counts every global secondary
index; an on-demand table starts within its warm throughput and the plan says how to pre-warm it."""

from __future__ import annotations

import pytest

from etl.capacity import budget_for, ramp_seconds
from etl.errors import EtlError
from etl.ratelimit import TABLE, TOTAL

PROVISIONED = {"TableName": "T", "ProvisionedThroughput": {"ReadCapacityUnits": 200, "WriteCapacityUnits": 1000}}
ON_DEMAND = {"TableName": "T", "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
             "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0}}
KEYS = {"fraction_key": "[load] write_capacity_fraction", "absolute_key": "[load] max_wcu"}


def test_a_fraction_of_the_provisioned_units_and_its_refresh() -> None:
    b = budget_for(PROVISIONED, unit="WCU", fraction=0.25, absolute=None, **KEYS,
                   describe=lambda: {"ProvisionedThroughput": {"WriteCapacityUnits": 4000}})
    assert b.bucket.target == 250 and "25% of 1000 provisioned WCU" in b.describe and not b.on_demand
    assert b.refresh is not None and b.refresh() == {TABLE: 1000}
    b.bucket.set_targets(b.refresh())
    assert b.bucket.target == 1000
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


GSI = {"IndexName": "byOrder", "KeySchema": [{"AttributeName": "OrderID", "KeyType": "HASH"}],
       "Projection": {"ProjectionType": "KEYS_ONLY"},
       "ProvisionedThroughput": {"ReadCapacityUnits": 50, "WriteCapacityUnits": 100}}


def test_a_fraction_is_of_each_indexs_own_capacity_and_the_tightest_governs() -> None:
    desc = {**PROVISIONED, "GlobalSecondaryIndexes": [GSI]}
    b = budget_for(desc, unit="WCU", fraction=0.5, absolute=None, **KEYS,
                   describe=lambda: {**desc, "GlobalSecondaryIndexes": [{**GSI, "ProvisionedThroughput": {
                       "WriteCapacityUnits": 400}}]})
    assert b.indexes == ["byOrder"] and b.bucket.governing() == "byOrder" and b.bucket.target == 50
    assert any("index byOrder: 100 WCU provisioned -> 50 WCU/s" in n and "(governs)" in n for n in b.notes)
    assert b.refresh is not None and b.refresh() == {TABLE: 500, "byOrder": 200}
    r = budget_for(desc, unit="RCU", fraction=0.5, absolute=None, fraction_key="f", absolute_key="a")
    assert r.bucket.target == 100 and not r.indexes  # reads of the table itself: its own RCU only


def test_an_absolute_budget_is_the_total_over_table_and_indexes() -> None:
    b = budget_for({**PROVISIONED, "GlobalSecondaryIndexes": [GSI]}, unit="WCU", fraction=None, absolute=900,
                   **KEYS)
    assert list(b.bucket.limits) == [TOTAL] and b.bucket.limits[TOTAL].ratio == 2.0
    assert b.bucket.target == 450 and "over the table and its 1 global secondary index(es) together" in b.describe


WARM = {**ON_DEMAND, "WarmThroughput": {"ReadUnitsPerSecond": 12000, "WriteUnitsPerSecond": 4000,
                                        "Status": "ACTIVE"},
        "GlobalSecondaryIndexes": [{**GSI, "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0},
                                    "WarmThroughput": {"ReadUnitsPerSecond": 12000, "WriteUnitsPerSecond": 3000,
                                                       "Status": "ACTIVE"}}]}


def test_on_demand_starts_within_the_warm_throughput_and_says_how_to_pre_warm() -> None:
    b = budget_for(WARM, unit="WCU", fraction=None, absolute=40_000, **KEYS)
    limits = b.bucket.limits
    assert limits[TABLE].ramp_from == 4000 and limits["byOrder"].ramp_from == 3000 and limits[TOTAL].rate == 40_000
    assert b.bucket.rate == 3000 and b.bucket.ramping()  # the index is the coldest
    text = "\n".join(b.notes)
    assert "warm throughput of T: 4,000 write units/s" in text and "index byOrder: 3,000" in text
    # 40,000 WCU/s over the table and one index: about 20,000 on each
    assert ("the budget puts about 20,000 write units/s on T, index byOrder, above its warm throughput: the load "
            "starts at 3,000 and at most doubles every 30 min (full budget after about 82 min)") in text
    assert ("aws dynamodb update-table --table-name T --warm-throughput WriteUnitsPerSecond=20000 "
            "--global-secondary-index-updates "
            '\'[{"Update":{"IndexName":"byOrder","WarmThroughput":{"WriteUnitsPerSecond":20000}}}]\'') in text
    assert round(ramp_seconds(3000, 24_000) / 60) == 90


def test_on_demand_within_its_warm_throughput_needs_no_ramp() -> None:
    b = budget_for({**ON_DEMAND, "WarmThroughput": {"WriteUnitsPerSecond": 50_000}}, unit="WCU", fraction=None,
                   absolute=40_000, **KEYS)
    assert not b.bucket.ramping() and b.bucket.rate == 40_000 and not any("pre-warm" in n for n in b.notes)
    emulated = budget_for(ON_DEMAND, unit="WCU", fraction=None, absolute=40_000, **KEYS)  # no WarmThroughput
    assert not emulated.bucket.ramping() and any("no warm throughput reported" in n for n in emulated.notes)
