"""A token bucket per table, shared by every worker of every month in a run.

Capacity units (RCU or WCU) are the tokens. Callers `acquire` their estimate before a request and
`settle` the difference once DynamoDB reports what it really consumed, so the long-run rate follows
what the table was charged (indexes included). Throttling halves the rate; it recovers gradually.
"""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, rate: float, burst_seconds: float = 1.0, clock=time.monotonic, sleep=time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.target = float(rate)
        self.rate = float(rate)
        self.burst_seconds = burst_seconds
        self.tokens = 0.0
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._cond = threading.Condition()
        self.consumed = 0.0
        self.throttles = 0
        self._last_throttle = 0.0

    @property
    def capacity(self) -> float:
        return max(self.rate * self.burst_seconds, 1.0)

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self, n: float) -> None:
        """Block until `n` tokens are available, then take them (a cost above the burst goes into debt)."""
        with self._cond:
            while True:
                self._refill()
                need = min(n, self.capacity)
                if self.tokens >= need:
                    self.tokens -= n
                    self.consumed += n
                    return
                wait = (need - self.tokens) / self.rate
                self._cond.release()
                try:
                    self._sleep(min(wait, 0.5))
                finally:
                    self._cond.acquire()

    def settle(self, estimated: float, actual: float) -> None:
        """Correct the bucket with what DynamoDB reported as consumed."""
        with self._cond:
            self.tokens -= actual - estimated
            self.consumed += actual - estimated

    def refund(self, n: float) -> None:
        with self._cond:
            self.tokens = min(self.capacity, self.tokens + n)
            self.consumed -= n

    def set_target(self, rate: float) -> None:
        with self._cond:
            self.target = float(rate)
            self.rate = min(self.rate, self.target) if self.throttles else self.target

    def throttled(self) -> None:
        """Multiplicative decrease on a throttling error (at most once per half second)."""
        with self._cond:
            now = self._clock()
            if now - self._last_throttle > 0.5:
                self.rate = max(self.target * 0.05, self.rate * 0.5)
                self.tokens = min(self.tokens, 0.0)
                self.throttles += 1
                self._last_throttle = now

    def succeeded(self) -> None:
        """Additive recovery towards the target after successful requests."""
        with self._cond:
            if self.rate < self.target:
                self.rate = min(self.target, self.rate + self.target * 0.02)
