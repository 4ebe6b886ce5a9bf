"""A token bucket per table, shared by every worker of every month in a run.

Capacity units (RCU or WCU) are the tokens. Callers `acquire` their estimate before a request and
`settle` what DynamoDB reports as consumed once it answers, so the long-run rate follows what the table
was charged. Throttling halves the rate; it recovers gradually.

A bucket holds one or more limits, all enforced at once (the tightest governs):
- `TOTAL` ("*"): everything a write consumed, table and indexes together (an absolute `max_wcu`);
- `TABLE` ("$table"): the base table's own units (a fraction of its provisioned capacity);
- an index name: that global secondary index's units (a fraction of the index's own capacity).
Index names match `[a-zA-Z0-9_.-]+`, so they never collide with the two reserved names.

Callers estimate in base-table units (ceil(size / 1 KB) per item). What one estimated unit costs a limit
(1 on the table, about 1 on an index every item reaches, about 1 + indexes on the total) is learned from
the reports, starting from the limit's `ratio`.

An on-demand table's limit may `ramp`: it starts at the table's warm throughput and doubles at most every
`ramp_doubling_s` seconds (see `capacity`). The bucket starts empty at the first acquire, not when it is
made, so the time spent planning or asking for confirmation never turns into a burst.

The interface a task sees (`acquire`, `settle`, `refund`, `throttled`, `succeeded`) takes and returns plain
numbers and a dict of str -> float, so a proxy to a bucket in another process can forward it as is.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

TOTAL = "*"
TABLE = "$table"
RATIO_LEARNING = 0.05  # weight of one report in the learned cost per estimated unit


@dataclass
class Limit:
    name: str  # TOTAL, TABLE or an index name
    rate: float  # units/s at full speed
    ramp_from: float | None = None  # on-demand: start at this rate (warm throughput) and ramp up
    ratio: float = 1.0  # units of this limit per estimated unit (learned)
    tokens: float = 0.0


class TokenBucket:
    def __init__(self, rate: float | None = None, burst_seconds: float = 0.05,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep, *,
                 limits: list[Limit] | None = None, ramp_doubling_s: float = 1800.0) -> None:
        """`rate`: one TOTAL limit (the simple case); or `limits`."""
        if limits is None:
            if rate is None or rate <= 0:
                raise ValueError("rate must be > 0")
            limits = [Limit(TOTAL, float(rate))]
        if not limits or any(lim.rate <= 0 for lim in limits):
            raise ValueError("every limit's rate must be > 0")
        self.limits = {lim.name: lim for lim in limits}
        self.burst_seconds = burst_seconds
        self.ramp_doubling_s = ramp_doubling_s
        self.factor = 1.0  # throttling's multiplicative decrease, recovered additively
        self._clock = clock
        self._sleep = sleep
        self._started: float | None = None  # the first acquire
        self._last = 0.0
        self._cond = threading.Condition()
        self.consumed = 0.0  # estimated units taken, corrected by what was reported
        self.consumed_by: dict[str, float] = {name: 0.0 for name in self.limits}
        self.throttles = 0
        self._last_throttle = -math.inf

    # ------------------------------------------------------------------ rates

    def _limit_rate(self, lim: Limit, now: float) -> float:
        rate = lim.rate
        if lim.ramp_from is not None and self._started is not None:
            rate = min(rate, lim.ramp_from * 2 ** ((now - self._started) / self.ramp_doubling_s))
        elif lim.ramp_from is not None:
            rate = min(rate, lim.ramp_from)
        return rate * self.factor

    def _rate(self, now: float) -> float:
        """Estimated units per second the tightest limit lets through now."""
        return min(self._limit_rate(lim, now) / lim.ratio for lim in self.limits.values())

    @property
    def rate(self) -> float:
        with self._cond:
            return self._rate(self._clock())

    @property
    def target(self) -> float:
        """Estimated units per second at full speed (no throttling, the ramp done)."""
        with self._cond:
            return min(lim.rate / lim.ratio for lim in self.limits.values())

    def governing(self) -> str:
        """Which limit holds the rate now (the tightest)."""
        with self._cond:
            now = self._clock()
            return min(self.limits.values(), key=lambda lim: self._limit_rate(lim, now) / lim.ratio).name

    def ramping(self) -> bool:
        with self._cond:
            now = self._clock()
            return any(lim.ramp_from is not None and self._limit_rate(lim, now) < lim.rate * self.factor
                       for lim in self.limits.values())

    # ------------------------------------------------------------------ the task's interface

    def _refill(self, now: float) -> None:
        dt = now - self._last
        self._last = now
        for lim in self.limits.values():
            r = self._limit_rate(lim, now)
            lim.tokens = min(max(r * self.burst_seconds, lim.ratio), lim.tokens + dt * r)

    def acquire(self, n: float) -> float:
        """Block until every limit has room for `n` estimated units, then take them (a cost above the burst
        goes into debt). Returns the rate (estimated units/s) the budget lets through now, for sizing the
        caller's window of requests in flight."""
        with self._cond:
            if self._started is None:  # starts empty now: no burst from the time before the first request
                self._started = self._last = self._clock()
            while True:
                now = self._clock()
                self._refill(now)
                wait = 0.0
                for lim in self.limits.values():
                    # wait for half the burst at most: a late wake-up then finds its tokens still there
                    need = min(n * lim.ratio, max(self._limit_rate(lim, now) * self.burst_seconds, lim.ratio) / 2)
                    if lim.tokens < need:
                        wait = max(wait, (need - lim.tokens) / self._limit_rate(lim, now))
                if wait <= 0:
                    for lim in self.limits.values():
                        lim.tokens -= n * lim.ratio
                    self.consumed += n
                    return self._rate(now)
                self._cond.release()
                try:
                    self._sleep(min(wait, 0.5))
                finally:
                    self._cond.acquire()

    def settle(self, estimated: float, actual: float, per_index: dict[str, float] | None = None) -> None:
        """Charge what DynamoDB reported for requests acquired as `estimated` units: `actual` is the total
        (table and indexes, its `CapacityUnits`), `per_index` the global secondary indexes' shares of it by
        index name (None: not reported)."""
        with self._cond:
            indexes = per_index or {}
            for name, lim in self.limits.items():
                if name == TOTAL:
                    used = actual
                elif name == TABLE:
                    used = actual - sum(indexes.values())
                elif per_index is None:
                    used = estimated * lim.ratio  # not reported: assume the estimate
                else:
                    used = indexes.get(name, 0.0)
                lim.tokens -= used - estimated * lim.ratio
                self.consumed_by[name] += used
                if estimated > 0:
                    lim.ratio += RATIO_LEARNING * (max(used / estimated, 0.01) - lim.ratio)
            self.consumed += actual - estimated

    def refund(self, n: float) -> None:
        """Give back `n` estimated units acquired but not consumed (a request refused or left unprocessed)."""
        with self._cond:
            now = self._clock()
            for lim in self.limits.values():
                cap = max(self._limit_rate(lim, now) * self.burst_seconds, lim.ratio)
                lim.tokens = min(cap, lim.tokens + n * lim.ratio)
            self.consumed -= n

    def throttled(self) -> None:
        """Multiplicative decrease on a throttling error (at most once per half second)."""
        with self._cond:
            now = self._clock()
            if now - self._last_throttle > 0.5:
                self.factor = max(0.05, self.factor * 0.5)
                for lim in self.limits.values():
                    lim.tokens = min(lim.tokens, 0.0)
                self.throttles += 1
                self._last_throttle = now

    def succeeded(self, n: int = 1) -> None:
        """Additive recovery towards full speed after `n` successful requests."""
        with self._cond:
            if self.factor < 1.0:
                self.factor = min(1.0, self.factor + 0.02 * n)

    # ------------------------------------------------------------------ the budget's owner

    def set_target(self, rate: float) -> None:
        """A new full-speed rate for a bucket of one limit."""
        [name] = self.limits
        self.set_targets({name: rate})

    def set_targets(self, rates: dict[str, float]) -> None:
        """New full-speed rates by limit (e.g. re-read provisioned capacity)."""
        with self._cond:
            for name, rate in rates.items():
                if name in self.limits and rate > 0:
                    self.limits[name].rate = float(rate)
