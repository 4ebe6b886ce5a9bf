"""Runs a stage's tasks. A task is a small picklable value; `run_task(cfg, task, ctx)` reads its inputs from
the staging store, writes its outputs under deterministic names and returns counts. What a task may reach
besides the store is the `TaskContext`: the table's shared budget (acquire, settle, refund, throttled),
progress, a stop signal and an executor for its requests. Nothing else is shared between tasks, so an
engine may run them anywhere: this module's `LocalEngine` runs them on thread pools in this process,
`etl.ray_engine.RayEngine` as Ray tasks on a cluster (`[engine] kind = "ray"`; only that one imports Ray).

A task that fails with a transient error (`errors.transient`) is run again, up to `[engine] task_retries`
times; its outputs have deterministic names, so a retry overwrites what the failed try left.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from etl.errors import Stopped, transient


class Budget(Protocol):
    """The narrow interface a task has to its table's capacity budget, and all of it: every engine's
    `shared_budget` gives one (`ratelimit.TokenBucket` in one process, `ray_engine.SharedBudget` on Ray), with
    these methods and signatures (tests/test_budget.py checks them). Plain numbers and a dict of str -> float,
    so a proxy in another process forwards them as they are."""

    def acquire(self, n: float) -> float: ...  # blocks until `n` units are taken; the rate it lets through now
    def settle(self, estimated: float, actual: float, per_index: dict[str, float] | None = None) -> None: ...
    def refund(self, n: float) -> None: ...
    def throttled(self) -> None: ...
    def succeeded(self, n: int = 1) -> None: ...


def _no_progress(n: float = 0, add: dict[str, float] | None = None, **fields: Any) -> None:
    return None


@dataclass
class MonthPlan:
    """A stage's tasks for one month, and how much work they are in all (for progress; None: unknown)."""

    tasks: list[Any]
    total: float | None = None
    unit: str = "items"
    note: str = ""  # said before the tasks run, when not empty
    started: float = field(default_factory=time.time)  # when the month's stage was planned (its duration's start)


@dataclass
class TaskContext:
    progress: Callable[..., None] = _no_progress  # advance(n, add={...}, **fields)
    stop: threading.Event = field(default_factory=threading.Event)  # set when another task of the month failed
    budget: Budget | None = None
    io: Executor | None = None  # for a task's concurrent requests
    # what `check` says once `stop` is set; shared by the copies a retry makes of the context
    reason: list[str] = field(default_factory=lambda: ["stopped: another task of the month failed"])
    # a task of a stage that runs on the driver (a wait on AWS) also has the run's reporter and engine; these
    # are never sent to an engine's workers
    reporter: Any = None
    engine: Any = None

    def halt(self, why: str) -> None:
        """Stop every task of this context at its next check, saying `why`."""
        self.reason[0] = why
        self.stop.set()

    def check(self) -> None:
        if self.stop.is_set():
            raise Stopped(self.reason[0])


class Engine(Protocol):
    """What the pipeline needs from an engine. `run` returns every task's result in task order, or raises the
    first real failure once every task has ended; `shared_budget` turns a table's token bucket into one its
    tasks can share wherever they run; `pool` is an executor for a task's concurrent requests; `notices` are
    the lines a run has to tell besides its results (a lost node whose tasks ran again)."""

    task_retries: int

    def pool(self, name: str, workers: int) -> Executor: ...
    def shared_budget(self, bucket: Any) -> Budget: ...
    def run(self, pool: str, workers: int, run_task: Callable[..., dict[str, Any]], cfg: Any, tasks: list[Any],
            ctx: TaskContext) -> list[dict[str, Any]]: ...
    def notices(self, ctx: TaskContext) -> list[str]: ...
    def close(self) -> None: ...


def make_engine(cfg: Any) -> Engine:
    """The engine `[engine] kind` names; Ray is imported only when it is asked for."""
    e = cfg.engine
    if e.kind == "ray":
        from etl.ray_engine import RayEngine

        return RayEngine(address=e.address, task_retries=e.task_retries, worker_retries=e.worker_retries)
    return LocalEngine(task_retries=e.task_retries)


class _Counted:
    """A task attempt's progress, passed on and summed (to take back if the attempt fails and is retried)."""

    def __init__(self, report: Callable[..., None]) -> None:
        self.report, self.n = report, 0.0

    def advance(self, n: float = 0, add: dict[str, float] | None = None, **fields: Any) -> None:
        self.n += n
        self.report(n, add=add, **fields)


def run_attempts(run_task: Callable[..., dict[str, Any]], cfg: Any, task: Any, ctx: TaskContext, retries: int,
                 delay: float) -> dict[str, Any]:
    """One task, run again after a transient failure (up to `retries` times) unless the month was stopped. What
    a failed attempt counted as done is taken back before the next one, so a retried task never counts twice."""
    attempt = 0
    report = ctx.progress
    while True:
        ctx.check()
        counted = _Counted(report)
        try:
            return run_task(cfg, task, dataclasses.replace(ctx, progress=counted.advance))
        except Exception as exc:
            if attempt >= retries or not transient(exc) or ctx.stop.is_set():
                raise
            if counted.n:
                report(-counted.n)
            attempt += 1
            time.sleep(delay * attempt)


class LocalEngine:
    """Thread pools in this process, one per kind of task, sized by the caller."""

    def __init__(self, task_retries: int = 2, retry_delay: float = 0.5) -> None:
        self.task_retries = task_retries
        self.retry_delay = retry_delay
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if name not in self._pools:
                self._pools[name] = ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
            return self._pools[name]

    def shared_budget(self, bucket: Any) -> Budget:
        """In one process the bucket itself is shared."""
        return bucket

    def _attempts(self, run_task: Callable[..., dict[str, Any]], cfg: Any, task: Any,
                  ctx: TaskContext) -> dict[str, Any]:
        return run_attempts(run_task, cfg, task, ctx, self.task_retries, self.retry_delay)

    def run(self, pool: str, workers: int, run_task: Callable[..., dict[str, Any]], cfg: Any, tasks: list[Any],
            ctx: TaskContext) -> list[dict[str, Any]]:
        """Every task's result, in task order. The first failure stops the others (through `ctx.stop`) and is
        raised once they have all ended; a task that only stopped because of it never hides it."""
        executor = self.pool(pool, workers)
        futures: list[Future[dict[str, Any]]] = []

        def done(f: Future[dict[str, Any]]) -> None:
            if f.exception() is not None:
                ctx.stop.set()

        for task in tasks:
            fut = executor.submit(self._attempts, run_task, cfg, task, ctx)
            fut.add_done_callback(done)
            futures.append(fut)
        wait(futures)
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, Stopped)), errors[0])
        return [f.result() for f in futures]

    def notices(self, ctx: TaskContext) -> list[str]:
        """What the runs made with `ctx` have to tell besides their results: nothing, in one process."""
        return []

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for p in pools:
            p.shutdown(wait=True, cancel_futures=True)
