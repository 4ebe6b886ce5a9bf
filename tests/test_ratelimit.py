"""The token bucket, on a fake clock: the rate it lets through, debt, settling, throttling and recovery; a
start without a burst; limits per index and on the total; the on-demand ramp."""

from __future__ import annotations

from typing import Any

import pytest

from etl.ratelimit import TABLE, TOTAL, Limit, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-6)  # a real sleep always takes some time


def bucket(rate: float | None = None, **kw: Any) -> tuple[TokenBucket, Clock]:
    clock = Clock()
    return TokenBucket(rate, clock=clock, sleep=clock.sleep, **kw), clock


def test_acquire_lets_through_the_rate_and_no_more() -> None:
    b, clock = bucket(100)
    for _ in range(1000):
        b.acquire(1)
    # 1,000 units at 100/s: ten seconds, but for the last request (taken, never waited for)
    assert 9.9 <= clock.now <= 10.0
    assert b.consumed == 1000


def test_a_cost_above_the_burst_goes_into_debt() -> None:
    b, clock = bucket(10)
    b.acquire(50)  # more than the burst: taken once the bucket holds its burst, the rest is debt
    t = clock.now
    b.acquire(1)
    assert clock.now - t >= 4.0  # the 40 units of debt are paid before the next request


def test_settle_charges_what_was_really_consumed() -> None:
    b, clock = bucket(10)
    for _ in range(10):
        b.acquire(1)
        b.settle(1, 2)  # every request really cost twice the estimate
    b.acquire(1)
    assert b.consumed == 21
    assert clock.now >= 1.9  # 20 units charged at 10/s before the 21st could start, not 10


def test_refund_gives_back_an_unused_acquire() -> None:
    b, _ = bucket(10)
    b.acquire(5)
    b.refund(5)
    assert b.consumed == 0


def test_throttling_halves_the_rate_then_it_recovers_to_the_target() -> None:
    b, clock = bucket(100)
    clock.now = 10.0
    b.throttled()
    assert b.rate == 50 and b.throttles == 1
    b.throttled()  # within half a second: counted once
    assert b.rate == 50
    clock.now += 1
    b.throttled()
    assert b.rate == 25
    for _ in range(100):
        b.succeeded()
    assert b.rate == 100  # additive recovery, never above the target


def test_set_target_follows_a_new_capacity() -> None:
    b, _ = bucket(100)
    b.set_target(40)
    assert b.target == 40 and b.rate == 40


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(limits=[Limit(TABLE, 0)])


def test_the_bucket_starts_empty_at_the_first_acquire_not_when_made() -> None:
    """Planning and the confirmation take time: that time must not turn into a burst in the first second."""
    b, clock = bucket(100)
    clock.now = 60.0  # a minute between making the budget and the first write
    for _ in range(100):
        b.acquire(1)
    assert clock.now - 60.0 >= 0.95  # the first second's 100 units took about a second, not an instant


def test_an_index_of_lower_capacity_governs_and_is_charged_what_it_reports() -> None:
    b, clock = bucket(limits=[Limit(TABLE, 100), Limit("byOrder", 10)])
    for _ in range(20):
        b.acquire(1)
        b.settle(1, 2, {"byOrder": 1})  # one unit on the table, one on the index
    assert clock.now >= 1.8  # 20 index units at 10/s, not 20 table units at 100/s
    assert b.consumed_by == {TABLE: 20, "byOrder": 20}


def test_an_index_no_write_reaches_stops_governing_as_the_reports_say_so() -> None:
    b, clock = bucket(limits=[Limit(TABLE, 100), Limit("sparse", 10)])
    for _ in range(300):
        b.acquire(1)
        b.settle(1, 1, {})  # the index reported nothing: the items do not have its key
    assert b.limits["sparse"].ratio < 0.05 and b.governing() == TABLE
    t = clock.now
    for _ in range(100):
        b.acquire(1)
        b.settle(1, 1, {})
    assert clock.now - t <= 1.1  # the table's 100/s now


def test_a_total_limit_counts_table_and_indexes_together() -> None:
    b, clock = bucket(limits=[Limit(TOTAL, 100, ratio=2.0)])  # one index: about two units per item
    assert b.target == 50
    for _ in range(100):
        b.acquire(1)
        b.settle(1, 2, {"byOrder": 1})
    assert clock.now >= 1.9  # 200 units at 100/s


def test_an_on_demand_limit_ramps_from_its_warm_throughput() -> None:
    b, clock = bucket(limits=[Limit(TOTAL, 40_000), Limit(TABLE, 40_000, ramp_from=4_000)], ramp_doubling_s=1800)
    assert b.rate == 4_000 and b.target == 40_000 and b.ramping()
    b.acquire(1)  # the ramp starts with the first request
    clock.now += 1800
    assert b.rate == pytest.approx(8_000)
    clock.now += 1800 * 3
    assert b.rate == 40_000 and not b.ramping()


def test_acquire_returns_the_rate_for_the_callers_window() -> None:
    b, _ = bucket(200)
    assert b.acquire(1) == 200
    b.throttled()
    assert b.acquire(1) == 100
    b.succeeded(25)  # 25 requests: +2% of the target each
    assert b.acquire(1) == 200


def test_refund_and_partial_settles_charge_only_what_was_consumed() -> None:
    b, clock = bucket(10)
    b.acquire(20)  # 20 sent, 5 of them left unprocessed
    b.refund(5)
    b.settle(15, 15)
    assert b.consumed == 15
