"""Capacity budgets from a table's description: a fraction of its provisioned capacity or an absolute rate.

One decision for the scan export (reads), the load (writes) and verify (reads): a fraction means the
table's own provisioned units (refreshed while it runs, since an operator may change them); an
on-demand table has none, so it needs the absolute setting.

Writes also consume capacity on every global secondary index (GSI) they reach, so a write budget is:
- with a fraction: that fraction of the table's own provisioned WCU for the table's units, and that
  fraction of each GSI's own provisioned WCU for the index's units; the tightest one governs;
- with an absolute `max_wcu`: the total over the table and its indexes (what DynamoDB's `CapacityUnits`
  reports), e.g. 1,000 WCU/s with one GSI that every item reaches is about 500 items/s.
On an on-demand table the rate also starts within the table's (and each index's) warm throughput, which
it takes at once, and ramps from there: doubling at most every 30 minutes, the pace DynamoDB documents
for traffic above twice the previous peak. `warm_advice` says how to pre-warm when the budget is above it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from etl.errors import EtlError
from etl.ratelimit import TABLE, TOTAL, Limit, TokenBucket

REREAD_CAPACITY_S = 300.0
RAMP_DOUBLING_S = 1800.0  # on-demand: at most double the rate every 30 minutes


@dataclass
class BudgetPlan:
    """A table's budget as planned: the token bucket its tasks share (the `engine.Budget` they see), what it was
    made from (for the printed plan) and how to refresh its rates."""

    bucket: TokenBucket
    describe: str
    on_demand: bool
    refresh: Callable[[], dict[str, float]] | None = None  # the current full-speed rates by limit
    notes: list[str] = field(default_factory=list)  # for the plan: each index's share, the ramp, pre-warming
    indexes: list[str] = field(default_factory=list)  # the table's global secondary indexes
    _last: float = field(default_factory=time.monotonic)

    def maybe_refresh(self) -> None:
        if self.refresh and time.monotonic() - self._last > REREAD_CAPACITY_S:
            self._last = time.monotonic()
            with contextlib.suppress(Exception):  # keep the old rates if DescribeTable fails
                self.bucket.set_targets(self.refresh())


def on_demand(desc: dict[str, Any]) -> bool:
    return desc.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"


def gsis(desc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(desc.get("GlobalSecondaryIndexes") or [])


def warm_writes(d: dict[str, Any]) -> float | None:
    """The write units/s a table or index takes at once (DescribeTable `WarmThroughput`; None: not reported,
    e.g. by an emulator)."""
    w = (d.get("WarmThroughput") or {}).get("WriteUnitsPerSecond")
    return float(w) if w else None


def _provisioned(d: dict[str, Any], field_name: str) -> float:
    return float((d.get("ProvisionedThroughput") or {}).get(field_name, 0) or 0)


def budget_for(desc: dict[str, Any], *, unit: str, fraction: float | None, absolute: float | None,
               fraction_key: str, absolute_key: str,
               describe: Callable[[], dict[str, Any]] | None = None) -> BudgetPlan:
    """The budget for `unit` ("WCU" or "RCU") on the described table.

    `absolute` wins when set; else `fraction` of the provisioned units (refreshed through `describe`);
    an on-demand table, or no setting at all, is refused with the setting to use. Writes count the
    table's global secondary indexes too (see the module's docstring)."""
    table = desc.get("TableName", "the table")
    writes = unit == "WCU"
    indexes = gsis(desc) if writes else []
    names = [g["IndexName"] for g in indexes]
    if absolute:
        return _absolute(desc, unit, absolute, absolute_key, indexes)
    if fraction is None:
        raise EtlError(f"no {'write' if writes else 'read'} budget configured",
                       hint=f"set {fraction_key} (0 < f <= 1 of provisioned {unit}) or {absolute_key} "
                            f"(absolute {unit}/s)")
    field_name = "WriteCapacityUnits" if writes else "ReadCapacityUnits"
    provisioned = _provisioned(desc, field_name)
    if on_demand(desc) or not provisioned:
        raise EtlError(f"{table} is on-demand: a fraction of its {'write' if writes else 'read'} capacity "
                       f"means nothing (it has no provisioned {unit})",
                       hint=f"set {absolute_key} to an absolute {unit}/s for an on-demand table")

    def rates(d: dict[str, Any]) -> dict[str, float]:
        out = {TABLE if writes else TOTAL: _provisioned(d, field_name) * fraction}
        for g in (gsis(d) if writes else []):
            out[g["IndexName"]] = _provisioned(g, field_name) * fraction
        return out

    def current() -> dict[str, float]:
        assert describe is not None
        return rates(describe())

    now = rates(desc)
    limits = [Limit(name, rate) for name, rate in now.items() if rate > 0]
    text = f"{fraction:.0%} of {provisioned:g} provisioned {unit} = {provisioned * fraction:g} {unit}/s"
    notes = []
    bucket = TokenBucket(limits=limits)
    if indexes:
        governing = min(limits, key=lambda lim: lim.rate).name
        text += f" on the table, and {fraction:.0%} of each global secondary index's own"
        notes.append(f"table {table}: {provisioned:g} WCU provisioned -> {now[TABLE]:g} WCU/s"
                     + (" (governs)" if governing == TABLE else ""))
        for g in indexes:
            name = g["IndexName"]
            notes.append(f"index {name}: {_provisioned(g, field_name):g} WCU provisioned -> {now[name]:g} WCU/s "
                         f"for its share of each write" + (" (governs)" if governing == name else ""))
    return BudgetPlan(bucket, text, False, current if describe is not None else None, notes, names)


def _absolute(desc: dict[str, Any], unit: str, absolute: float, absolute_key: str,
              indexes: list[dict[str, Any]]) -> BudgetPlan:
    table = desc.get("TableName", "the table")
    names = [g["IndexName"] for g in indexes]
    text = f"{absolute:g} {unit}/s ({absolute_key.split()[-1]})"
    notes: list[str] = []
    if indexes:
        text += f" over the table and its {len(indexes)} global secondary index(es) together"
        notes.append(f"each write reaches up to {1 + len(indexes)} places (table, {', '.join(names)}): "
                     f"about {absolute / (1 + len(indexes)):,.0f} items/s of 1 WCU while every item has "
                     "every index's key")
    limits = [Limit(TOTAL, absolute, ratio=1.0 + len(indexes))]
    if unit == "WCU" and on_demand(desc):
        ramps = [(TABLE, table, warm_writes(desc))] + [(g["IndexName"], f"index {g['IndexName']}", warm_writes(g))
                                                         for g in indexes]
        share = absolute / (1 + len(indexes))  # what each of them takes when every item reaches every index
        for name, _, warm in ramps:
            if warm is not None and warm < share:
                limits.append(Limit(name, absolute, ramp_from=warm))
        notes += warm_advice(table, share, [(label, warm) for _, label, warm in ramps])
    elif unit == "WCU":
        room = _provisioned(desc, "WriteCapacityUnits") + sum(_provisioned(g, "WriteCapacityUnits") for g in indexes)
        if room and absolute > room:
            notes.append(f"{absolute_key} = {absolute:g} is above the {room:g} WCU provisioned on {table}"
                         + (" and its indexes" if indexes else "") + ": expect throttling (the load backs off)")
    bucket = TokenBucket(limits=limits, ramp_doubling_s=RAMP_DOUBLING_S)
    return BudgetPlan(bucket, text, on_demand(desc), None, notes, names)


def ramp_seconds(start: float, target: float) -> float:
    """How long the on-demand ramp takes from `start` to `target` units/s."""
    return 0.0 if start >= target else RAMP_DOUBLING_S * math.log2(target / start)


def warm_advice(table: str, need: float, warm: list[tuple[str, float | None]]) -> list[str]:
    """Plan lines for an on-demand table: where the load starts and how to pre-warm when what the budget puts
    on the table (or an index), `need` write units/s, is above its warm throughput."""
    lines = []
    cold = [(label, w) for label, w in warm if w is not None and w < need]
    unknown = [label for label, w in warm if w is None]
    for label, w in warm:
        if w is not None:
            lines.append(f"warm throughput of {label}: {w:,.0f} write units/s")
    if unknown:
        lines.append(f"no warm throughput reported for {', '.join(unknown)} (an emulator?): no ramp; in AWS a new "
                     "on-demand table takes about 4,000 write units/s at once")
    if cold:
        start = min(w for _, w in cold)
        where = ", ".join(label for label, _ in cold)
        lines.append(f"the budget puts about {need:,.0f} write units/s on {where}, above its warm throughput: the "
                     f"load starts at {start:,.0f} and at most doubles every {RAMP_DOUBLING_S / 60:.0f} min (full "
                     f"budget after about {ramp_seconds(start, need) / 60:.0f} min)")
        target = int(math.ceil(need))
        cmd = f"aws dynamodb update-table --table-name {table}"
        if any(label == table for label, _ in cold):
            cmd += f" --warm-throughput WriteUnitsPerSecond={target}"
        idx = [label.removeprefix("index ") for label, _ in cold if label.startswith("index ")]
        if idx:
            updates = ",".join(json.dumps({"Update": {"IndexName": name, "WarmThroughput": {
                "WriteUnitsPerSecond": target}}}, separators=(",", ":")) for name in idx)
            cmd += f" --global-secondary-index-updates '[{updates}]'"
        lines.append(f"to start at the full budget, pre-warm first (billed once; check the account's table "
                     f"quota): {cmd}")
    return lines
