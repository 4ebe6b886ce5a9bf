"""Runs stages over months: the skip rules of every stage, and how months overlap.

Each month goes through its stages in order (export -> transform -> load -> verify, or the one stage a
command names), on its own driver thread: a month's next stage starts as soon as its previous stage has
committed, so one month loads while the next transforms and a third exports, and a run over many months
takes about as long as its slowest stage. The stages' tasks run on the engine's pools, shared by every
month; commits of one stage run one at a time (the transform's collision check is the memory peak).
One month's failure stops only that month: it is recorded in the store with the command that reruns it,
and reported with the others at the end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from etl import aws, export, lease, load, staging, verify
from etl.config import Config
from etl.engine import Engine, LocalEngine, TaskContext, make_engine
from etl.errors import EtlError, Interrupted, PartlyDone
from etl.progress import QUIET, Reporter
from etl.transform import stage as transform

STAGES: dict[str, Any] = {"export": export, "transform": transform, "load": load, "verify": verify}
ORDER = tuple(STAGES)


def rerun_command(stage: str, month: str, extra: str = "") -> str:
    return f"etl {stage} --month {month}{' ' + extra if extra else ''}"


def skip_reason(cfg: Config, store: staging.Store, stage: str, month: str, force: bool = False,
                destination: staging.Destination | None = None) -> str | None:
    """Why a stage need not run again for a month (None: it must run). The one place for these rules:
    a stage is skipped when its manifest is committed and was made from the previous stage's current
    output, with what shapes its output unchanged. A load is done only into the very table it was made for
    (`destination`: its ARN and creation time; a table dropped and created again is another table)."""
    if force:
        return None
    done = staging.read_manifest(store, month, stage)
    if done is None:
        return None
    if stage == "export":
        return f"already committed ({done.get('mode')}), skipped; --force redoes it"
    upstream = staging.read_manifest(store, month, ORDER[ORDER.index(stage) - 1])
    if upstream is None or done.get("upstream_run") != upstream.get("run_id"):
        return None
    if stage == "transform" and done.get("config_hash") != cfg.hash_of("transform"):
        return None
    if stage == "load" and (done.get("table") != cfg.destination_table()
                            or (destination is not None and not destination.holds(done))):
        return None
    if stage == "verify" and not done.get("ok"):
        return None
    what = {"load": f"already loaded into {done.get('table')}", "verify": "already verified"}.get(stage,
                                                                                                "already committed")
    return f"{what}, skipped; --force redoes it" if stage != "verify" else f"{what}, skipped"


@dataclass
class Options:
    force: bool = False
    mode: str | None = None  # export
    use_existing: str | None = None
    enable_pitr: bool = False
    yes: bool = False  # load
    dry_run: bool = False
    include_expired: bool | None = None
    now: int | None = None
    confirm: Callable[[str], bool] | None = None
    break_lease: bool = False  # take over a lease another run left behind


@dataclass
class _Failure:
    stage: str
    month: str
    exc: BaseException


@dataclass
class Runner:
    cfg: Config
    store: staging.Store
    reporter: Reporter
    opts: Options
    engine: Engine = field(default_factory=LocalEngine)
    load_setup: load.Setup | None = None
    destination: staging.Destination | None = None  # the destination table as described at the start
    read_budget: Any = None
    _commit_locks: dict[str, threading.Lock] = field(default_factory=lambda: {s: threading.Lock() for s in ORDER})
    _export_slots: threading.Semaphore | None = None
    _contexts: list[TaskContext] = field(default_factory=list)
    _interrupted: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.engine.task_retries = self.cfg.engine.task_retries
        self._export_slots = threading.Semaphore(self.cfg.export.concurrency)

    def _plan(self, stage: str, month: str) -> Any:
        o = self.opts
        if stage == "export":
            return export.plan(self.cfg, self.store, month, mode=o.mode, use_existing=o.use_existing,
                               force=o.force, enable_pitr=o.enable_pitr)
        if stage == "load":
            assert self.load_setup is not None
            return load.plan(self.cfg, self.store, month, self.load_setup, o.force)
        if stage == "verify":
            return verify.plan(self.cfg, self.store, month, self.destination)
        if stage == "transform":
            return transform.plan(self.cfg, self.store, month, o.force)
        return STAGES[stage].plan(self.cfg, self.store, month)

    def _run_tasks(self, stage: str, plan: Any, ctx: TaskContext) -> list[dict[str, Any]]:
        cfg = self.cfg
        if stage == "export":  # a wait on DynamoDB: on this driver thread, a few months at a time
            assert self._export_slots is not None
            with self._export_slots:
                return [export.run_task(cfg, t, ctx, self.reporter) for t in plan.tasks]
        if stage == "transform":
            return self.engine.run("transform", cfg.transform.concurrency, transform.run_task, cfg, plan.tasks, ctx)
        if stage == "load":
            assert self.load_setup is not None
            # no ctx.io: the load's requests go out on the writer's event loop
            ctx.budget = self.engine.shared_budget(self.load_setup.budget.bucket)
            return self.engine.run("load", 2, load.run_task, cfg, plan.tasks, ctx)
        ctx.budget = self.engine.shared_budget(self.read_budget.bucket)
        return self.engine.run("verify", 2, verify.run_task, cfg, plan.tasks, ctx)

    def stage_month(self, stage: str, month: str) -> dict[str, Any]:
        """Run one stage for one month: skip it, or plan, run its tasks and commit."""
        cfg, store = self.cfg, self.store
        reason = skip_reason(cfg, store, stage, month, self.opts.force, self.destination)
        if reason is not None:
            self.reporter.info(f"{stage} {month}: {reason}")
            return {**(staging.read_manifest(store, month, stage) or {}), "skipped": True}
        dry = stage == "load" and self.opts.dry_run
        with contextlib.ExitStack() as held:
            if not dry:  # one run per month and stage at a time
                held.enter_context(lease.acquire(store, staging.lease_key(month, stage), f"{stage} {month}",
                                                 rerun_command(stage, month, self._extra(stage)),
                                                 break_lease=self.opts.break_lease))
            return self._stage_month(stage, month)

    def _stage_month(self, stage: str, month: str) -> dict[str, Any]:
        cfg, store = self.cfg, self.store
        started = time.time()
        plan = self._plan(stage, month)
        if plan.note:
            self.reporter.info(f"{stage} {month}: {plan.note}")
        dry = stage == "load" and self.opts.dry_run
        if not dry and store.exists(staging.manifest_key(month, stage)):  # while it runs again, it is not done
            store.delete(staging.manifest_key(month, stage))
        ctx = TaskContext()
        self._contexts.append(ctx)
        if self._interrupted.is_set():  # interrupted while this stage was starting
            ctx.halt(INTERRUPTED)
        if stage != "export":  # the export reports its own wait
            task = self.reporter.task(f"{stage} {month}", plan.total, plan.unit)
            ctx.progress = task.advance
        try:
            results = self._run_tasks(stage, plan, ctx)
        finally:
            if stage != "export":
                task.finish()
            for line in self.engine.notices(ctx):
                self.reporter.warn(f"{stage} {month}: {line}")
        with self._commit_locks[stage]:
            extra = {"setup": self.load_setup} if stage == "load" else {}
            return dict(STAGES[stage].commit(cfg, store, month, plan.tasks, results, started, **extra))

    def month(self, month: str, stages: tuple[str, ...], out: dict[str, dict[str, Any]],
              failures: list[_Failure]) -> None:
        for stage in stages:
            if self._interrupted.is_set():
                return
            try:
                out[stage] = self.stage_month(stage, month)
            except Exception as exc:  # recorded per month; the others go on
                exc = aws.explain(exc, self.cfg) or exc
                if self._interrupted.is_set():
                    exc = Interrupted(INTERRUPTED)
                failures.append(_Failure(stage, month, exc))
                if not isinstance(exc, lease.LeaseHeld):  # the month is not failing: another run has it
                    self._record(stage, month, exc)
                return

    def _record(self, stage: str, month: str, exc: BaseException) -> None:
        try:
            staging.record_failure(self.store, month, stage, _message(exc),
                                   rerun_command(stage, month, self._extra(stage)))
        except Exception as rec_exc:  # the store itself may be what failed
            self.reporter.warn(f"could not record the failure of {stage} {month}: {_message(rec_exc)}")

    def _extra(self, stage: str) -> str:
        return "--mode scan" if stage == "export" and (self.opts.mode or self.cfg.export.mode) == "scan" else ""

    def run(self, months: list[str], stages: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
        results: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in months}
        failures: list[_Failure] = []
        months_pool = ThreadPoolExecutor(max(1, len(months)), thread_name_prefix="month")
        futures = []
        try:
            futures = [months_pool.submit(self.month, m, stages, results[m], failures) for m in months]
            for f in futures:
                f.result()
        except BaseException as exc:
            # interrupted (Ctrl-C, SIGTERM) or failing: every task stops at its next check, saving its progress
            self._interrupted.set()
            for ctx in list(self._contexts):
                ctx.halt(INTERRUPTED)
            wait(futures)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(INTERRUPTED) from None
            raise
        finally:
            months_pool.shutdown(wait=True)
            self.engine.close()
        if failures:
            raise self._failed(failures, months)
        return {s: [results[m][s] for m in months] for s in stages}

    def _failed(self, failures: list[_Failure], months: list[str]) -> BaseException:
        if len(failures) == 1 and len(months) == 1:
            f = failures[0]
            rerun = rerun_command(f.stage, f.month, self._extra(f.stage))
            if isinstance(f.exc, EtlError):
                if rerun not in (f.exc.hint or ""):
                    resume = " (finished parts are skipped)" if f.stage == "load" else ""
                    f.exc.hint = (f"{f.exc.hint}; then " if f.exc.hint else "") + f"`{rerun}` resumes{resume}"
                return f.exc
        failures.sort(key=lambda f: (f.month, ORDER.index(f.stage)))
        stages = sorted({f.stage for f in failures}, key=ORDER.index)
        listed = "; ".join(f"{f.month}: {_message(f.exc)}" for f in failures)
        first = failures[0]
        partly = len({f.month for f in failures}) < len(months)
        return (PartlyDone if partly else EtlError)(
            f"{'/'.join(stages)} failed for {len(failures)} of {len(months)} month(s): {listed}",
            hint=f"fix the cause, then rerun e.g. `{rerun_command(first.stage, first.month, self._extra(first.stage))}`"
                 " (committed months are skipped); `etl status` shows every month")


INTERRUPTED = "interrupted (SIGINT or SIGTERM): what was acknowledged is kept"


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"


def _months_needed(months: list[str], what: str) -> None:
    if not months:
        raise EtlError(f"no month given to {what}", hint="pass --month YYYYMM or --months FIRST-LAST")


def run(cfg: Config, months: list[str], stages: tuple[str, ...] = ORDER, *, reporter: Reporter = QUIET,
        **options: Any) -> dict[str, list[dict[str, Any]]]:
    """The stages for the months, each month on as soon as its previous stage committed; returns every
    stage's manifests (skipped ones marked), in month order."""
    _months_needed(months, "/".join(stages))
    opts = Options(**options)
    if opts.use_existing and len(months) != 1:
        raise EtlError("--use-existing adopts one export: give exactly one --month")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    store.check()
    runner = Runner(cfg, store, reporter, opts, engine=make_engine(cfg))
    desc = None
    if "load" in stages or "verify" in stages:  # which table: a month loaded into another one is not loaded here
        desc = load.describe_destination(cfg)
        runner.destination = staging.destination_of(desc)
    with contextlib.ExitStack() as held:
        if "load" in stages:  # the destination, the budget and the confirmation before anything runs
            todo = [m for m in months if skip_reason(cfg, store, "load", m, opts.force, runner.destination) is None]
            if todo:
                runner.load_setup = load.preflight(cfg, store, todo, include_expired=opts.include_expired,
                                                   now=opts.now, dry_run=opts.dry_run, yes=opts.yes,
                                                   force=opts.force, confirm=opts.confirm, reporter=reporter,
                                                   desc=desc)
                held.callback(runner.load_setup.close)
                if not opts.dry_run:  # one budget per destination: one loading run at a time
                    table = runner.load_setup.table
                    held.enter_context(lease.acquire(store, staging.destination_lease_key(table), f"loading {table}",
                                                     "etl load " + " ".join(f"--month {m}" for m in todo),
                                                     break_lease=opts.break_lease))
                runner.load_setup.watch()
        if "verify" in stages and any(skip_reason(cfg, store, "verify", m, opts.force) is None for m in months):
            runner.read_budget = verify.preflight(cfg)
        return runner.run(months, stages)


def run_export(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, **options: Any) -> list[dict[str, Any]]:
    return run(cfg, months, ("export",), reporter=reporter, **options)["export"]


def run_transform(cfg: Config, months: list[str], *, reporter: Reporter = QUIET,
                  **options: Any) -> list[dict[str, Any]]:
    return run(cfg, months, ("transform",), reporter=reporter, **options)["transform"]


def run_load(cfg: Config, months: list[str], *, reporter: Reporter = QUIET, **options: Any) -> list[dict[str, Any]]:
    return run(cfg, months, ("load",), reporter=reporter, **options)["load"]


def run_verify(cfg: Config, months: list[str], *, reporter: Reporter = QUIET,
               break_lease: bool = False) -> list[dict[str, Any]]:
    """Asked for alone, verify always reads the table again (the table may have changed since)."""
    return run(cfg, months, ("verify",), reporter=reporter, force=True, break_lease=break_lease)["verify"]
