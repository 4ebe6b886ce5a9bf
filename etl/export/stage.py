"""Stage 1: each monthly table to `export/month=YYYYMM/AWSDynamoDB/<exportId>/` under the staging root.

Three ways in, one result (a committed `_state/month=M/export.json` listing validated data files):
  pitr          ExportTableToPointInTime (no read capacity used); S3 staging roots only (`etl.export.pitr`)
  scan          a parallel segment Scan within a read budget, writing the exact AWS export layout
                (`etl.export.scan`)
  use-existing  adopt an export folder that already exists, after validating it (`etl.export.inspect`)

plan: one task per month. run_task: the export (its wait stays on the driver: DynamoDB does the work).
commit: the manifest, then the pending record of a PITR export is cleared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etl import staging
from etl.commands import render
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.export.pitr import adopt_existing, export_pitr
from etl.export.scan import export_scan
from etl.freshness import Verdict
from etl.progress import QUIET, Reporter
from etl.runner import StageBase

NAME = "export"


@dataclass(frozen=True)
class ExportTask:
    month: str
    mode: str  # pitr | scan | adopt
    use_existing: str | None = None
    force: bool = False
    enable_pitr: bool = False
    adopt_other_table: bool = False  # adopt: an export of another table than the month's, on purpose


def plan(cfg: Config, store: staging.Store, month: str, *, mode: str | None = None, use_existing: str | None = None,
         force: bool = False, enable_pitr: bool = False, adopt_other_table: bool = False) -> MonthPlan:
    how = "adopt" if use_existing else (mode or cfg.export.mode)
    return MonthPlan([ExportTask(month, how, use_existing, force, enable_pitr, adopt_other_table)], None, "s")


def run_task(cfg: Config, task: ExportTask, ctx: TaskContext) -> dict[str, Any]:
    """The month's export, as the body of its manifest (runs on the driver: an export is a wait)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    reporter: Reporter = ctx.reporter or QUIET
    if task.mode == "adopt":
        assert task.use_existing is not None
        return adopt_existing(cfg, store, task.month, task.use_existing, reporter, task.adopt_other_table)
    if task.mode == "scan":
        return export_scan(cfg, store, task.month, reporter, ctx, task.force)
    return export_pitr(cfg, store, task.month, task.force, task.enable_pitr, reporter, ctx)


def commit(cfg: Config, store: staging.Store, month: str, tasks: list[ExportTask], results: list[dict[str, Any]],
           started: float) -> dict[str, Any]:
    [body] = results
    manifest = staging.commit_manifest(store, month, "export", body)
    store.delete(staging.pending_export_key(month))
    store.delete_prefix(staging.scan_state_prefix(month))  # a scan's checkpoints: the export is committed
    return manifest


class ExportStage(StageBase):
    """The export on the Runner: a task per month, a wait on DynamoDB on the month's driver thread."""

    name = NAME
    pool = "export"
    on_driver = True
    run_task = staticmethod(run_task)

    def __init__(self, cfg: Config, store: staging.Store, *, mode: str | None = None,
                 use_existing: str | None = None, force: bool = False, enable_pitr: bool = False,
                 adopt_other_table: bool = False) -> None:
        super().__init__(cfg, store, force=force)
        self.mode, self.use_existing, self.enable_pitr = mode, use_existing, enable_pitr
        self.adopt_other_table = adopt_other_table

    def skip(self, month: str, verdict: Verdict) -> str | None:
        if not verdict.current or verdict.manifest is None:
            return None
        return f"already committed ({verdict.manifest.get('mode')}), skipped; --force redoes it"

    def plan(self, month: str) -> MonthPlan:
        return plan(self.cfg, self.store, month, mode=self.mode, use_existing=self.use_existing, force=self.force,
                    enable_pitr=self.enable_pitr, adopt_other_table=self.adopt_other_table)

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        return commit(self.cfg, self.store, month, plan.tasks, results, plan.started)

    def command(self, months: list[str]) -> str:
        scan = ("--mode", "scan") if (self.mode or self.cfg.export.mode) == "scan" else ()
        return render("export", *[w for m in months for w in ("--month", m)], *scan)
