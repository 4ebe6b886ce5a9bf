"""Capacity budgets from a table's description: a fraction of its provisioned capacity or an absolute rate.

One decision for the scan export (reads), the load (writes) and verify (reads): a fraction means the
table's own provisioned units (refreshed while it runs, since an operator may change them); an
on-demand table has none, so it needs the absolute setting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from etl.errors import EtlError
from etl.ratelimit import TokenBucket

REREAD_CAPACITY_S = 300.0


@dataclass
class Budget:
    """A table's shared token bucket and what it was made from."""

    bucket: TokenBucket
    describe: str
    on_demand: bool
    refresh: Callable[[], float] | None = None  # the current rate, re-read from DescribeTable
    _last: float = field(default_factory=time.monotonic)

    def maybe_refresh(self) -> None:
        if self.refresh and time.monotonic() - self._last > REREAD_CAPACITY_S:
            self._last = time.monotonic()
            with contextlib.suppress(Exception):  # keep the old rate if DescribeTable fails
                self.bucket.set_target(self.refresh())


def on_demand(desc: dict[str, Any]) -> bool:
    return desc.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"


def budget_for(desc: dict[str, Any], *, unit: str, fraction: float | None, absolute: float | None,
               fraction_key: str, absolute_key: str, describe: Callable[[], dict[str, Any]] | None = None) -> Budget:
    """The budget for `unit` ("WCU" or "RCU") on the described table.

    `absolute` wins when set; else `fraction` of the provisioned units (refreshed through `describe`);
    an on-demand table, or no setting at all, is refused with the setting to use."""
    table = desc.get("TableName", "the table")
    if absolute:
        return Budget(TokenBucket(absolute), f"{absolute:g} {unit}/s ({absolute_key.split()[-1]})",
                      on_demand(desc))
    if fraction is None:
        raise EtlError(f"no {'write' if unit == 'WCU' else 'read'} budget configured",
                       hint=f"set {fraction_key} (0 < f <= 1 of provisioned {unit}) or {absolute_key} "
                            f"(absolute {unit}/s)")
    field_name = "WriteCapacityUnits" if unit == "WCU" else "ReadCapacityUnits"
    provisioned = float(desc.get("ProvisionedThroughput", {}).get(field_name, 0) or 0)
    if on_demand(desc) or not provisioned:
        raise EtlError(f"{table} is on-demand: a fraction of its {'write' if unit == 'WCU' else 'read'} capacity "
                       f"means nothing (it has no provisioned {unit})",
                       hint=f"set {absolute_key} to an absolute {unit}/s for an on-demand table")

    def current() -> float:
        assert describe is not None
        return float(describe()["ProvisionedThroughput"][field_name]) * fraction

    rate = provisioned * fraction
    return Budget(TokenBucket(rate), f"{fraction:.0%} of {provisioned:g} provisioned {unit} = {rate:g} {unit}/s",
                  False, current if describe is not None else None)
