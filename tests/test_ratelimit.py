"""The token bucket, on a fake clock: the rate it lets through, debt, settling, throttling and recovery."""

from __future__ import annotations

import pytest

from etl.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-6)  # a real sleep always takes some time


def bucket(rate: float, **kw: float) -> tuple[TokenBucket, Clock]:
    clock = Clock()
    return TokenBucket(rate, clock=clock, sleep=clock.sleep, **kw), clock


def test_acquire_lets_through_the_rate_and_no_more() -> None:
    b, clock = bucket(100)
    for _ in range(1000):
        b.acquire(1)
    # 1,000 units at 100/s: ten seconds, whatever the burst lets through at the start
    assert 9.0 <= clock.now <= 10.0
    assert b.consumed == 1000


def test_a_cost_above_the_burst_goes_into_debt() -> None:
    b, clock = bucket(10)
    b.acquire(50)  # more than a second's worth: taken once the bucket is full, the rest is debt
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
