"""How many BatchWriteItem requests a load task keeps in flight: Little's law over the budget's rate and the
measured round trip, bounded so that a server that cannot take the budget is not flooded."""

from __future__ import annotations

import math
import time

from etl import items

HEADROOM = 1.5  # in-flight window over what Little's law needs: RTT jitter, replies waiting for the loop
QUEUEING = 2.0  # a round trip this many times the recent fastest is a queue forming (at the server or here)
MIN_WINDOW = 2

class Window:
    """How many requests a task keeps in flight.

    Little's law: sending `rate` units/s in requests of `cost` units answered after `rtt` seconds takes
    rate x rtt / cost requests in flight; with headroom, bounded by `ceiling`. It follows the budget's rate
    (throttling, the on-demand ramp) and the measured round trip.
    A second bound keeps a server that cannot take the budget from being flooded: once per round (as many
    answers as the window), it grows while round trips stay near the recent fastest (x4 while under 32,
    then x2), and shrinks in proportion when they grow past QUEUEING times it (more in
    flight would only queue).
    `fixed` (`[load] concurrency`) overrides both."""

    def __init__(self, fixed: int | None, ceiling: int, rtt: float = 0.0, cap: int = 8) -> None:
        """`rtt`, `cap`: where an earlier part in this process left them, to start from."""
        self.fixed = fixed
        self.ceiling = max(ceiling, MIN_WINDOW)
        self.cap = max(MIN_WINDOW, min(cap, self.ceiling))  # the queueing bound
        self.limit = fixed or self.cap
        self.rtt = rtt  # smoothed
        self._fastest = (rtt or math.inf, math.inf)  # (this period, the last), periods of 5 s
        self._period = time.monotonic()
        self._round = 0
        self.cost = float(items.MAX_BATCH)  # units per request, smoothed
        self.rate = 0.0

    def answered(self, rtt: float, cost: float) -> None:
        self.rtt = rtt if not self.rtt else self.rtt + 0.1 * (rtt - self.rtt)
        self.cost += 0.1 * (cost - self.cost)
        now = time.monotonic()
        if now - self._period > 5.0:
            self._fastest, self._period = (rtt, self._fastest[0]), now
        else:
            self._fastest = (min(self._fastest[0], rtt), self._fastest[1])
        self._round += 1
        if self._round >= self.limit:
            self._round = 0
            gradient = min(1.0, QUEUEING * min(self._fastest) / self.rtt)
            # quadruple per round while small (at 100 ms, 8 -> 128 in 0.2 s), then double
            grown = (self.cap * (4 if self.cap < 32 else 2) if gradient >= 1.0
                     else self.cap * max(gradient, 0.5) + math.sqrt(self.cap))
            bound = 2 * self.little() if self.rate else self.ceiling  # no use growing far past what the budget needs
            self.cap = max(MIN_WINDOW, min(self.ceiling, bound, math.ceil(grown)))
        self._resize()

    def budget_rate(self, rate: float) -> None:
        self.rate = rate
        self._resize()

    def little(self) -> int:
        """What Little's law asks for at the budget's rate and the round trip (without queueing)."""
        rtt = min(self.rtt, QUEUEING * min(self._fastest))
        return math.ceil(HEADROOM * self.rate * rtt / self.cost) + 2

    def _resize(self) -> None:
        if self.fixed or not self.rtt or not self.rate:
            return
        self.limit = max(MIN_WINDOW, min(self.ceiling, self.cap, self.little()))
