"""Stage 3: Parquet parts -> BatchWriteItem into the live destination, within a write budget, checkpointed.

preflight: `etl.load.preflight` (the destination, the budget, the plan said, the confirmation).
plan:      one task per Parquet part of the month without a checkpoint of the month's current transform for
           this very table (its ARN and creation time: a table dropped and created again is another table).
run_task:  `etl.load.pump.run_task`, the writing task catch-up shares: reads its part by record batch, drops
           the collision losers and the already-expired rows (counted), quarantines what DynamoDB would
           refuse, and sends batches through the table's shared budget, saving its low-water mark as it moves.
commit:    sums the checkpoints, so counts reconcile across resumed runs:
           written + skipped_expired + deduplicated + quarantined = rows in the Parquet;
           and keeps every run that wrote to the month (`runs`, `totals`).
"""

from __future__ import annotations

import time
from typing import Any

from etl import staging, times
from etl.config import Config
from etl.engine import MonthPlan
from etl.errors import EtlError, StageNotReady
from etl.freshness import Verdict
from etl.load.preflight import LoadingStage, Setup, _checkpoint, _sample, _todo, not_loaded_here, preflight
from etl.load.pump import run_task
from etl.load.rows import LoadPartTask

NAME = "load"
__all__ = ["NAME", "commit", "plan", "reset_checkpoints", "run_task"]

def reset_checkpoints(cfg: Config, months: list[str]) -> int:
    """Forget the part checkpoints (and the load/verify manifests) of months, so they load again."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    n = 0
    for m in months:
        n += store.delete_prefix(staging.checkpoints_prefix(m))
        store.delete_prefix(staging.progress_prefix(m))
        for stage in ("load", "verify"):
            store.delete(staging.manifest_key(m, stage))
    return n


def plan(cfg: Config, store: staging.Store, month: str, setup: Setup, force: bool = False) -> MonthPlan:
    if force and not setup.dry_run:  # after the confirmation: every part is written again
        reset_checkpoints(cfg, [month])
    elsewhere_note = "" if setup.dry_run else not_loaded_here(store, month, setup.destination)
    todo = _todo(store, month, setup.destination)
    if todo is None:
        raise StageNotReady(f"no committed transform for month {month}",
                            hint=f"run `etl transform --month {month}` first")
    left = todo.left
    if force and setup.dry_run:  # what the real command would write: every part again
        t = staging.read_manifest(store, month, "transform") or {}
        left = list(t.get("parts", []))
    target = setup.target()
    tasks = [LoadPartTask(month=month, part=p["part"], key=p["output"], rows=p["rows"],
                          transform_run=todo.transform_run, target=target,
                          checkpoint=staging.load_part_checkpoint_key(month, p["part"]),
                          progress=staging.load_progress_key(month, p["part"]),
                          rejected=staging.load_rejected_key(month, p["part"])) for p in left]
    rows = sum(p.rows for p in tasks)
    notes = [elsewhere_note] if elsewhere_note else []
    if month in setup.waiting and left:  # transformed after the plan was said: its units and cost now
        est = _sample(cfg, store, month, left[0], setup.now, setup.include_expired, setup.indexes)
        notes += setup.units(rows, est)
    return MonthPlan(tasks, rows, "items", "; ".join(notes))



# --------------------------------------------------------------------------- commit


COUNTS = ("written", "skipped_expired", "deduplicated", "quarantined", "rows", "requests", "retries", "throttles")


def _runs(cps: list[dict[str, Any]], written: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every run that wrote to the month's parts (as far as its checkpoints and progress recorded it), and
    their totals: items acknowledged, rewritten (acknowledged more than once: a resume's overlap), WCU, time."""
    by: dict[str, dict[str, Any]] = {}
    for cp in cps:
        for r in cp.get("runs", []):
            run = by.setdefault(r["run"], {"run": r["run"], "started": r["started"], "last": r["last"], "parts": 0,
                                           "acknowledged": 0, "wcu": 0.0, "requests": 0, "retries": 0,
                                           "throttles": 0})
            run["parts"] += 1
            run["last"] = max(run["last"], r["last"])
            for k in ("acknowledged", "wcu", "requests", "retries", "throttles"):
                run[k] += r[k]
    runs = []
    for r in sorted(by.values(), key=lambda r: r["started"]):
        runs.append({"run": r["run"], "started_at": times.iso_seconds(r["started"]),
                     "last_write_at": times.iso_seconds(r["last"]),
                     "seconds": round(max(0.0, r["last"] - r["started"]), 3), "parts": r["parts"],
                     "acknowledged": r["acknowledged"], "wcu": round(r["wcu"], 1), "requests": r["requests"],
                     "retries": r["retries"], "throttles": r["throttles"]})
    acknowledged = sum(r["acknowledged"] for r in runs)
    totals = {"runs": len(runs), "acknowledged": acknowledged, "rewritten": max(0, acknowledged - written),
              "wcu": round(sum(r["wcu"] for r in runs), 1), "seconds": round(sum(r["seconds"] for r in runs), 3)}
    return runs, totals



def commit(cfg: Config, store: staging.Store, month: str, tasks: list[LoadPartTask], results: list[dict[str, Any]],
           started: float, setup: Setup) -> dict[str, Any]:
    t = staging.read_manifest(store, month, "transform") or {}
    if setup.dry_run:
        sums = {k: sum(r[k] for r in results) for k in COUNTS}
        units: dict[str, float] = {}
        for r in results:
            for k, v in r.get("wcu_estimated", {}).items():
                units[k] = units.get(k, 0.0) + v
        total = sum(units.values())
        return {"month": month, "dry_run": True, **sums, "wcu_estimated": units, "wcu_estimated_total": total,
                "cost_usd": round(setup.cost(total), 4), "price_per_million_wcu": setup.price_per_million,
                "on_demand": setup.budget.on_demand}
    cps = [_checkpoint(store, month, p["part"], str(t.get("run_id", "")), setup.destination)
           for p in t.get("parts", [])]
    if any(cp is None for cp in cps):
        raise EtlError(f"load {month}: a part has no checkpoint of the current transform after the run")
    done = [cp for cp in cps if cp]
    sums = {k: sum(cp[k] for cp in done) for k in COUNTS}
    wcu = round(sum(cp["wcu"] for cp in done), 1)
    on_indexes: dict[str, float] = {}
    for cp in done:
        for k, v in cp.get("wcu_indexes", {}).items():
            on_indexes[k] = round(on_indexes.get(k, 0.0) + v, 1)
    if sums["written"] + sums["skipped_expired"] + sums["deduplicated"] + sums["quarantined"] != t["written"]:
        raise EtlError(f"load {month}: counts do not reconcile with the Parquet rows: {sums} vs {t['written']}")
    duration = round(time.time() - started, 3)
    this_run = round(sum(r.get("wcu_this_run", r["wcu"]) for r in results), 1)
    average = this_run / max(duration, 1e-9)
    # the budget's rate is in the table's own units (with indexes: what the tightest limit lets the table have)
    table_units = sum(r.get("wcu_this_run", r["wcu"]) - sum(r.get("wcu_indexes", {}).values()) for r in results)
    target = setup.budget.bucket.target
    runs, totals = _runs(done, sums["written"])
    quarantined_by: dict[str, int] = {}
    for cp in done:
        for k, v in cp.get("quarantined_by", {}).items():
            quarantined_by[k] = quarantined_by.get(k, 0) + v
    return staging.commit_manifest(store, month, "load", {
        **sums, "quarantined_by": quarantined_by, "wcu_consumed": wcu, "wcu_consumed_by_index": on_indexes,
        "duration_s": duration, "average_wcu_per_s": round(average, 1),
        "budget": setup.budget.describe, "budget_share": round(table_units / max(duration, 1e-9) / target, 3),
        **setup.destination.record(), "region": setup.region,
        "include_expired": setup.include_expired, "expired_before": setup.now,
        "reconciles": "written + skipped_expired + deduplicated + quarantined = rows in the Parquet",
        "runs": runs, "totals": totals,
        "upstream_run": t.get("run_id"), "transform_run": t.get("run_id"),
        "config_hash": cfg.hash_of("load", "destination"),
    })


class LoadStage(LoadingStage):
    """The load on the Runner: its preflight says the plan and asks before writing; a task per part on the
    engine, within the destination's shared budget, under the destination's writing lease."""

    name = NAME
    pool = "load"
    workers = 2  # no io pool: the load's requests go out on the writer's event loop
    writes_destination = True
    run_task = staticmethod(run_task)


    def skip(self, month: str, verdict: Verdict) -> str | None:
        if not verdict.current or verdict.manifest is None:
            return None
        return f"already loaded into {verdict.manifest.get('table')}, skipped; --force redoes it"

    def preflight(self, months: list[str]) -> None:
        self.setup = preflight(self.cfg, self.store, months, include_expired=self.include_expired, now=self.now,
                               dry_run=self.dry_run, yes=self.yes, force=self.force, confirm=self.confirm,
                               reporter=self.reporter, desc=self.desc)
        self.setup.watch()

    def _setup(self) -> Setup:
        if self.setup is None:
            raise EtlError("load: planned before its preflight")
        return self.setup

    def plan(self, month: str) -> MonthPlan:
        return plan(self.cfg, self.store, month, self._setup(), self.force)

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        return commit(self.cfg, self.store, month, plan.tasks, results, plan.started, self._setup())

    def budget(self) -> Any:
        return self._setup().budget.bucket

    def close(self) -> None:
        if self.setup is not None:
            self.setup.close()
