"""`etl verify`: read every loaded key back with BatchGetItem (within a read budget) and compare values.

plan:     one task per Parquet part of the month's committed load; after a catch-up of that load, one more for
          the keys its windows touched (`_state/month=M/catchup/final.parquet`): those hold their final winner,
          or are absent (deleted), and the parts' rows of those keys are not expected any more.
run_task: the rows the load meant to write (the part minus collision losers, and minus expired rows when
          those were skipped), read back 100 keys at a time; counts of missing and different items.
commit:   the sums and a few examples of each.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from etl import aws, capacity, expected, items, mapping, staging
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.freshness import Verdict
from etl.runner import StageBase

NAME = "verify"
EXAMPLES = 5


def read_budget(cfg: Config, desc: dict[str, Any]) -> capacity.BudgetPlan:
    return capacity.budget_for(desc, unit="RCU", fraction=cfg.load.read_capacity_fraction or 0.5,
                               absolute=cfg.load.max_rcu, fraction_key="[load] read_capacity_fraction",
                               absolute_key="[load] max_rcu")


def preflight(cfg: Config) -> capacity.BudgetPlan:
    ddb = aws.client(cfg.destination, "dynamodb")
    return read_budget(cfg, ddb.describe_table(TableName=cfg.destination_table())["Table"])


@dataclass(frozen=True, kw_only=True)
class VerifyPartTask:
    """The rows one Parquet part of the month's load meant to write: read back and compared."""

    month: str
    part: int
    key: str
    table: str
    include_expired: bool
    expired_before: int
    upstream_run: str
    catchup: str = ""  # the catch-up's final state of its touched keys, when windows were applied after the load


@dataclass(frozen=True, kw_only=True)
class VerifyCatchupFinalTask:
    """The keys the month's catch-up windows touched, in their final state: winners read back and compared,
    deleted keys checked absent."""

    month: str
    key: str  # the catch-up's final.parquet
    table: str
    include_expired: bool
    expired_before: int
    upstream_run: str


Task = VerifyPartTask | VerifyCatchupFinalTask


def plan(cfg: Config, store: staging.Store, month: str, destination: staging.Destination | None = None) -> MonthPlan:
    """`destination`: the table as described now; a load made into another table (or into this name before it
    was dropped and created again) is no load of this one."""
    load = expected.loaded_into(store, month, destination)
    t = staging.read_manifest(store, month, "transform") or {}
    final = expected.catchup_final(store, month, load)
    common: dict[str, Any] = {"month": month, "table": cfg.destination_table(),
                              "include_expired": bool(load.get("include_expired")),
                              "expired_before": int(load.get("expired_before", 0)),
                              "upstream_run": str(load.get("run_id", ""))}
    parts = t.get("parts", [])
    tasks: list[Task] = [VerifyPartTask(part=p["part"], key=p["output"], catchup=final, **common) for p in parts]
    if final:
        tasks.append(VerifyCatchupFinalTask(key=final, **common))
    return MonthPlan(tasks, sum(p["rows"] for p in parts), "items")


def _source(task: Task) -> expected.Source:
    part = task.part if isinstance(task, VerifyPartTask) else None
    return expected.Source(month=task.month, key=task.key, part=part,
                           catchup=task.catchup if isinstance(task, VerifyPartTask) else "",
                           include_expired=task.include_expired, expired_before=task.expired_before)


def expected_rows(cfg: Config, store: staging.Store, task: Task) -> tuple[list[dict[str, Any]], int]:
    """The rows the load (and the catch-up after it) meant to write from the part, and how many rows it has
    (`etl.expected`'s rule)."""
    rows, _, total = expected.expected(cfg, store, _source(task))
    return rows.to_pylist(), total


def expected_absent(cfg: Config, store: staging.Store, task: Task) -> list[tuple[Any, ...]]:
    """The keys a catch-up deleted (its final state's deletes): they must not be in the table."""
    if not isinstance(task, VerifyCatchupFinalTask):
        return []
    _, gone, _ = expected.expected(cfg, store, _source(task))
    keys = mapping.key_columns(cfg)
    return list(zip(*(gone[k].to_pylist() for k in keys), strict=True)) if gone.num_rows else []


def _read_back(ddb: Any, task: Task, ctx: TaskContext, keys: list[str],
               wanted: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """BatchGetItem of up to 100 keys, UnprocessedKeys retried; the items found, by key."""
    assert ctx.budget is not None
    request = [{k: items.attr_value(v) for k, v in zip(keys, key, strict=True)} for key in wanted]
    got: dict[tuple[Any, ...], dict[str, Any]] = {}
    attempt = 0
    while request:
        ctx.budget.acquire(len(request) * 0.5)
        r = ddb.batch_get_item(RequestItems={task.table: {"Keys": request, "ConsistentRead": False}},
                               ReturnConsumedCapacity="TOTAL")
        for item in r["Responses"].get(task.table, []):
            plain = items.decode_item(item)
            got[tuple(plain[k] for k in keys)] = plain
        request = r.get("UnprocessedKeys", {}).get(task.table, {}).get("Keys", [])
        if request:
            attempt += 1
            ctx.budget.throttled()
            time.sleep(random.uniform(0, min(10.0, 0.05 * 2**attempt)))
    return got


def compare(expected: dict[str, Any], actual: dict[str, Any] | None) -> list[str] | None:
    """None when the item is missing, else the columns whose value differs (empty: equal). A null in the
    Parquet is an attribute the load left out, so it is not compared."""
    if actual is None:
        return None
    return sorted(c for c, v in expected.items() if v is not None and actual.get(c) != v)


def run_task(cfg: Config, task: Task, ctx: TaskContext) -> dict[str, Any]:
    store = staging.open_store(cfg.staging.root, cfg.staging)
    ddb = aws.client(cfg.destination, "dynamodb")
    keys = mapping.key_columns(cfg)
    rows, total = expected_rows(cfg, store, task)
    ctx.progress(total - len(rows))
    assert ctx.budget is not None
    missing: list[dict[str, Any]] = []
    different: list[dict[str, Any]] = []
    n_missing = n_different = 0
    for i in range(0, len(rows), 100):
        ctx.check()
        chunk = rows[i : i + 100]
        want = {tuple(r[k] for k in keys): r for r in chunk}
        got = _read_back(ddb, task, ctx, keys, list(want))
        for key, row in want.items():
            diff = compare(row, got.get(key))
            if diff is None:
                n_missing += 1
                if len(missing) < EXAMPLES:
                    missing.append(dict(zip(keys, key, strict=True)))
            elif diff:
                n_different += 1
                if len(different) < EXAMPLES:
                    different.append({**dict(zip(keys, key, strict=True)), "columns": diff})
        ctx.progress(len(chunk))
    absent = expected_absent(cfg, store, task)
    undeleted: list[dict[str, Any]] = []
    for i in range(0, len(absent), 100):
        ctx.check()
        found = _read_back(ddb, task, ctx, keys, absent[i : i + 100])
        undeleted += [dict(zip(keys, key, strict=True)) for key in found]
    part = task.part if isinstance(task, VerifyPartTask) else "catch-up final state"
    return {"part": part, "checked": len(rows) + len(absent), "missing": n_missing, "different": n_different,
            "undeleted": len(undeleted), "missing_examples": missing, "different_examples": different,
            "undeleted_examples": undeleted[:EXAMPLES]}


def commit(cfg: Config, store: staging.Store, month: str, tasks: list[Task], results: list[dict[str, Any]],
           started: float) -> dict[str, Any]:
    load = staging.read_manifest(store, month, "load") or {}
    sums = {k: sum(r.get(k, 0) for r in results) for k in ("checked", "missing", "different", "undeleted")}
    examples = {k: [e for r in results for e in r.get(k, [])][:EXAMPLES]
                for k in ("missing_examples", "different_examples", "undeleted_examples")}
    return staging.commit_manifest(store, month, "verify", {
        "ok": sums["missing"] == 0 and sums["different"] == 0 and sums["undeleted"] == 0, **sums, **examples,
        "table": cfg.destination_table(), "upstream_run": load.get("run_id"),
        "duration_s": round(time.time() - started, 3),
    })


class VerifyStage(StageBase):
    """The read-back verify on the Runner: a task per part (and one for the catch-up's final state), within a
    read budget. Asked for alone it always reads the table again (the table may have changed since)."""

    name = NAME
    pool = "verify"
    workers = 2
    run_task = staticmethod(run_task)

    def __init__(self, cfg: Config, store: staging.Store, *, force: bool = False,
                 destination: staging.Destination | None = None) -> None:
        super().__init__(cfg, store, force=force)
        self.destination = destination
        self._budget: capacity.BudgetPlan | None = None

    def skip(self, month: str, verdict: Verdict) -> str | None:
        return "already verified, skipped" if verdict.current else None

    def preflight(self, months: list[str]) -> None:
        self._budget = preflight(self.cfg)

    def plan(self, month: str) -> MonthPlan:
        return plan(self.cfg, self.store, month, self.destination)

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        return commit(self.cfg, self.store, month, plan.tasks, results, plan.started)

    def budget(self) -> Any:
        return self._budget.bucket if self._budget is not None else None
