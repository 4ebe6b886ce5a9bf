"""The one Runner every stage runs on (export, transform, load, verify and catch-up), and the Stage protocol.

A stage is `preflight(months)` (the run's shared state: the destination, its budget, the confirmation), then per
month `plan(month)` -> tasks -> `run_task(cfg, task, ctx)` -> `commit(month, plan, results)`. The Runner owns
what must hold for every stage, so it is written once:
- months overlap: each month goes through its stages on its own driver thread, a month's next stage starting as
  soon as its previous one committed; tasks run on the engine's pools (local threads or Ray), shared by every
  month; the commits of one stage run one at a time;
- skip rules: what `etl.freshness` calls current is skipped (the same rule `etl status` shows);
- leases: one run per month and stage, and one writing run per destination (load and catch-up alike), taken
  before anything is written and watched while it runs (a lease taken over stops the run before its next write);
- interrupts: SIGINT/SIGTERM stop every task at its next check (progress kept), exit 130 with the resuming line;
- failures: one month's failure stops only that month; it is recorded with the command that reruns it.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from etl import aws, freshness, lease, staging
from etl.commands import render
from etl.config import Config
from etl.engine import Engine, LocalEngine, MonthPlan, TaskContext
from etl.errors import EtlError, Interrupted, PartlyDone
from etl.progress import QUIET, Reporter

INTERRUPTED = "interrupted (SIGINT or SIGTERM): what was acknowledged is kept"


class Stage(Protocol):
    """What the Runner needs of a stage. `run_task` is a module-level function for engine stages (it is sent
    to Ray workers); a stage whose tasks are waits on AWS (`on_driver`) runs them on its month's driver thread,
    where `ctx.reporter` and `ctx.engine` are set."""

    name: str  # export | transform | load | verify | catchup: its manifest, lease and failure record
    pool: str  # the engine pool its tasks run on
    workers: int  # the local pool's size
    on_driver: bool  # tasks run on the month's driver thread (a wait on AWS), not on the engine
    ordered: bool  # tasks run one at a time, in order, each committed before the next (catch-up's windows)
    cumulative: bool  # its manifest grows with each run (catch-up); else it is removed while the stage reruns
    writes_destination: bool  # takes the destination's writing lease, once for the run

    def run_task(self, cfg: Config, task: Any, ctx: TaskContext) -> dict[str, Any]: ...

    def skip(self, month: str, verdict: freshness.Verdict) -> str | None: ...  # why not to run it (None: run)
    def preflight(self, months: list[str]) -> None: ...  # the months that will run it, before anything is written
    def plan(self, month: str) -> MonthPlan: ...
    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]: ...
    def budget(self) -> Any: ...  # the bucket its tasks share, or None
    def command(self, months: list[str]) -> str: ...  # the command that runs (resumes) it for these months
    def interrupted(self) -> str | None: ...  # what goes on after an interrupt (work left running on AWS), if any
    def close(self) -> None: ...


class StageBase:
    """What most stages share: no run-wide state, no budget, no destination, skipped when current."""

    name = ""
    verb = ""  # its command: etl <verb>
    pool = ""
    workers = 1
    on_driver = False
    ordered = False
    cumulative = False
    writes_destination = False

    def __init__(self, cfg: Config, store: staging.Store, *, force: bool = False) -> None:
        self.cfg, self.store, self.force = cfg, store, force

    def skip(self, month: str, verdict: freshness.Verdict) -> str | None:
        return "already committed, skipped; --force redoes it" if verdict.current else None

    def preflight(self, months: list[str]) -> None:
        return None

    def budget(self) -> Any:
        return None

    def command(self, months: list[str]) -> str:
        return render(self.verb or self.name, *[w for m in months for w in ("--month", m)])

    def interrupted(self) -> str | None:
        return None

    def close(self) -> None:
        return None


@dataclass
class Options:
    force: bool = False
    break_lease: bool = False  # take over a lease another run left behind
    dry_run: bool = False  # nothing is written: no leases, no manifests removed


@dataclass
class _Failure:
    stage: str
    month: str
    exc: BaseException


@dataclass
class Runner:
    cfg: Config
    store: staging.Store
    reporter: Reporter = QUIET
    opts: Options = field(default_factory=Options)
    engine: Engine = field(default_factory=LocalEngine)
    now: freshness.Current = field(default_factory=freshness.Current)
    _commit_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _contexts: list[TaskContext] = field(default_factory=list)
    _interrupted: threading.Event = field(default_factory=threading.Event)
    _why: str = INTERRUPTED
    _leases: list[lease.Lease] = field(default_factory=list)
    _export_slots: threading.Semaphore | None = None

    def __post_init__(self) -> None:
        self.engine.task_retries = self.cfg.engine.task_retries
        self._export_slots = threading.Semaphore(self.cfg.export.concurrency)

    # ------------------------------------------------------------------ skip rules

    def verdict(self, stage: Stage, month: str) -> freshness.Verdict:
        return freshness.verdict(self.store, month, stage.name, self.now)

    def skip_reason(self, stage: Stage, month: str) -> str | None:
        if self.opts.force:
            return None
        return stage.skip(month, self.verdict(stage, month))

    # ------------------------------------------------------------------ one stage of one month

    def stage_month(self, stage: Stage, month: str) -> dict[str, Any]:
        """Run one stage for one month: skip it, or plan, run its tasks and commit."""
        reason = self.skip_reason(stage, month)
        if reason is not None:
            self.reporter.info(f"{stage.name} {month}: {reason}")
            return {**(staging.read_manifest(self.store, month, stage.name) or {}), "skipped": True}
        with contextlib.ExitStack() as held:
            if not self.opts.dry_run:  # one run per month and stage at a time
                held.enter_context(self._lease(staging.lease_key(month, stage.name), f"{stage.name} {month}",
                                               stage.command([month])))
            return self._stage_month(stage, month)

    def _context(self) -> TaskContext:
        ctx = TaskContext()
        self._contexts.append(ctx)
        if self._interrupted.is_set():  # interrupted (or the lease lost) while this stage was starting
            ctx.halt(self._why)
        return ctx

    def _stage_month(self, stage: Stage, month: str) -> dict[str, Any]:
        plan = stage.plan(month)
        if plan.note:
            self.reporter.info(f"{stage.name} {month}: {plan.note}")
        key = staging.manifest_key(month, stage.name)
        if not self.opts.dry_run and not stage.cumulative and self.store.exists(key):
            self.store.delete(key)  # while it runs again, it is not done
        ctx = self._context()
        if (bucket := stage.budget()) is not None:
            ctx.budget = self.engine.shared_budget(bucket)
        lock = self._commit_locks.setdefault(stage.name, threading.Lock())
        progress = None
        if not stage.on_driver:  # a driver stage reports its own waits
            progress = self.reporter.task(f"{stage.name} {month}", plan.total, plan.unit)
            ctx.progress = progress.advance
        try:
            if stage.ordered:
                results: list[dict[str, Any]] = []
                out = None
                for task in plan.tasks:
                    results.append(self._run(stage, [task], ctx)[0])
                    self._check_leases()
                    with lock:
                        out = stage.commit(month, plan, results)
                if out is None:
                    self._check_leases()
                    with lock:
                        out = stage.commit(month, plan, results)
                return dict(out)
            results = self._run(stage, plan.tasks, ctx)
        finally:
            if progress is not None:
                progress.finish()
            for line in self.engine.notices(ctx):  # e.g. a lost node whose tasks ran again: one line each
                self.reporter.warn(f"{stage.name} {month}: {line}")
        self._check_leases()
        with lock:
            return dict(stage.commit(month, plan, results))

    def _run(self, stage: Stage, tasks: list[Any], ctx: TaskContext) -> list[dict[str, Any]]:
        if not stage.on_driver:
            return self.engine.run(stage.pool, stage.workers, stage.run_task, self.cfg, tasks, ctx)
        ctx.reporter, ctx.engine = self.reporter, self.engine
        slots = self._export_slots if stage.name == "export" else None
        with slots or contextlib.nullcontext():  # a wait on DynamoDB: a few months at a time
            out = []
            for t in tasks:
                ctx.check()
                out.append(stage.run_task(self.cfg, t, ctx))
            return out

    # ------------------------------------------------------------------ leases

    def _lease(self, key: str, what: str, command: str) -> lease.Lease:
        held = lease.acquire(self.store, key, what, command, break_lease=self.opts.break_lease,
                             on_lost=self._lease_lost)
        self._leases.append(held)
        return held

    def _check_leases(self) -> None:
        """Before a commit (a write that says "done"): every lease of ours is still ours."""
        for held in list(self._leases):
            if not held.released:
                held.check()

    def _lease_lost(self, why: str) -> None:
        """Another run took a lease of ours: stop every task before its next write."""
        self.stop(why)

    def stop(self, why: str) -> None:
        self._why = why
        self._interrupted.set()
        for ctx in list(self._contexts):
            ctx.halt(why)

    # ------------------------------------------------------------------ the months

    def _month(self, month: str, stages: list[Stage], out: dict[str, dict[str, Any]],
               failures: list[_Failure]) -> None:
        for stage in stages:
            if self._interrupted.is_set():
                return
            try:
                out[stage.name] = self.stage_month(stage, month)
            except Exception as exc:  # recorded per month; the others go on
                exc = aws.explain(exc, self.cfg) or exc
                interrupted = self._interrupted.is_set() and self._why == INTERRUPTED
                if interrupted:
                    exc = Interrupted(INTERRUPTED)
                elif self._interrupted.is_set():  # a lease of ours was taken over
                    exc = EtlError(self._why)
                failures.append(_Failure(stage.name, month, exc))
                if not isinstance(exc, lease.LeaseHeld):  # the month is not failing: another run has it
                    self._record(stage, month, exc, interrupted)
                return

    def _record(self, stage: Stage, month: str, exc: BaseException, interrupted: bool) -> None:
        try:
            staging.record_failure(self.store, month, stage.name, message(exc), stage.command([month]),
                                   kind="interrupted" if interrupted else "failed")
        except Exception as rec_exc:  # the store itself may be what failed
            self.reporter.warn(f"could not record the failure of {stage.name} {month}: {message(rec_exc)}")

    def run(self, months: list[str], stages: list[Stage]) -> dict[str, list[dict[str, Any]]]:
        """Every stage for every month; returns each stage's manifests (skipped ones marked), in month order."""
        results: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in months}
        failures: list[_Failure] = []
        with contextlib.ExitStack() as held:
            for stage in stages:
                held.callback(stage.close)
            self._preflight(months, stages, held)
            pool = ThreadPoolExecutor(max(1, len(months)), thread_name_prefix="month")
            futures = []
            try:
                futures = [pool.submit(self._month, m, stages, results[m], failures) for m in months]
                for f in futures:
                    f.result()
            except BaseException as exc:
                # interrupted (Ctrl-C, SIGTERM) or failing: every task stops at its next check, saving its progress
                self.stop(INTERRUPTED)
                wait(futures)
                if isinstance(exc, KeyboardInterrupt):
                    notes = [n for s in stages if (n := s.interrupted())]
                    raise Interrupted(INTERRUPTED, hint="; ".join(notes) or None) from None
                raise
            finally:
                pool.shutdown(wait=True)
                self.engine.close()
        if failures:
            raise self._failed(failures, months, stages)
        return {s.name: [results[m][s.name] for m in months if s.name in results[m]] for s in stages}

    def _preflight(self, months: list[str], stages: list[Stage], held: contextlib.ExitStack) -> None:
        """The destination's writing lease first, when a stage writes it (one writing run per destination, a load
        and a catch-up alike: refused before anything is planned, asked or written), then each stage's run-wide
        state for the months that will run it."""
        for stage in stages:
            todo = [m for m in months if self._runs_later(stage, m, stages)]
            if not todo:
                continue
            if stage.writes_destination and not self.opts.dry_run:
                table = self.cfg.destination_table()
                held.enter_context(self._lease(staging.destination_lease_key(table), f"loading {table}",
                                               stage.command(todo)))
            stage.preflight(todo)

    def _runs_later(self, stage: Stage, month: str, stages: list[Stage]) -> bool:
        """Whether the stage may run for the month: not current now, or made stale by an earlier stage of this
        run (which will run first)."""
        if self.skip_reason(stage, month) is None:
            return True
        earlier = stages[:[s.name for s in stages].index(stage.name)]
        return any(self.skip_reason(s, month) is None for s in earlier)

    def _failed(self, failures: list[_Failure], months: list[str], stages: list[Stage]) -> BaseException:
        by_name = {s.name: s for s in stages}
        order = [s.name for s in stages]
        if len(failures) == 1 and len(months) == 1:
            f = failures[0]
            rerun = by_name[f.stage].command([f.month])
            if isinstance(f.exc, EtlError):
                if rerun not in (f.exc.hint or ""):
                    resume = " (finished parts are skipped)" if f.stage == "load" else ""
                    f.exc.hint = (f"{f.exc.hint}; then " if f.exc.hint else "") + f"`{rerun}` resumes{resume}"
                return f.exc
        failures.sort(key=lambda f: (f.month, order.index(f.stage)))
        names = sorted({f.stage for f in failures}, key=order.index)
        listed = "; ".join(f"{f.month}: {message(f.exc)}" for f in failures)
        first = failures[0]
        partly = len({f.month for f in failures}) < len(months)
        return (PartlyDone if partly else EtlError)(
            f"{'/'.join(names)} failed for {len(failures)} of {len(months)} month(s): {listed}",
            hint=f"fix the cause, then rerun e.g. `{by_name[first.stage].command([first.month])}`"
                 " (committed months are skipped); `etl status` shows every month")


def message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"


def months_needed(months: list[str], what: str) -> None:
    if not months:
        raise EtlError(f"no month given to {what}", hint="pass --month YYYYMM or --months FIRST-LAST")

