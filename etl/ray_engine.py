"""The stages' tasks as Ray tasks (`--engine ray`, `[engine] kind = "ray"`): the same `run` contract as
`engine.LocalEngine`, so no stage has a second implementation.

The driver (this process) plans, waits for export jobs and commits every month; `run` sends a month's
transform, load or verify tasks to the cluster and returns their results in task order. What a worker
gets is the config, the task and a few handles; never credentials: a worker takes AWS settings from its
own environment (instance profile, `AWS_ENDPOINT_URL`, ...), and `run` refuses to ship anything that
holds this process's secret key. On the worker, the task's `TaskContext` is rebuilt from the handles:

- budget: one `BudgetActor` per destination (a `ratelimit.TokenBucket` inside), shared by every task of
  every month. A worker process leases tokens in chunks of about LEASE_SECONDS of the rate and sends its
  other calls (settle, refund, succeeded, ... with whatever arguments they take) in batches, so the actor
  answers a few calls per second per worker, not one per request.
- stop and progress: one `Hub` actor per engine. A worker reports its progress every FLUSH_SECONDS and
  learns in the answer whether its month was stopped (another task failed, or the run was interrupted).
- io: a thread pool of the worker process.

Failures: a transient error is retried inside the task, as locally (`engine.run_attempts`); a worker
process or node that dies is Ray's to retry (`max_retries` = `[engine] worker_retries`). Outputs have
deterministic names, so a retry overwrites what the dead try left; a load part's checkpoint is written
only once all its items are acknowledged.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray

from etl import __version__
from etl.engine import Budget, TaskContext, run_attempts
from etl.errors import EtlError, Stopped

LEASE_SECONDS = 0.1  # a worker's lease of the budget: this much of the table's rate
FLUSH_SECONDS = 0.25  # how often a worker reports progress and polls for a stop; the driver polls as often
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

_lock = threading.Lock()
_leases: dict[str, _Lease] = {}  # this process's lease of each budget actor
_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}  # this process's request pools


# --------------------------------------------------------------------------- actors


class BudgetActor:
    """A destination's token bucket, for every task of the run wherever it runs."""

    def __init__(self, make_bucket: Callable[[], Any]) -> None:
        self.make_bucket = make_bucket
        self._bucket: Any = None
        self.leases = 0
        self.calls = 0

    @property
    def bucket(self) -> Any:
        """Made at the first call, not when the actor started: a bucket fills while it waits (up to its burst),
        and the tasks' workers may take seconds to start."""
        if self._bucket is None:
            self._bucket = self.make_bucket()
        return self._bucket

    def lease(self, n: float, ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> tuple[float, float]:
        """Apply a worker's queued calls, then block until `n` tokens are taken; returns them and the rate the
        bucket lets through now (which sizes the next lease)."""
        self.apply(ops)
        rate = float(self.bucket.acquire(n))
        self.leases += 1
        return n, rate

    def apply(self, ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        for name, args, kwargs in ops:
            getattr(self.bucket, name)(*args, **kwargs)
        self.calls += 1

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        return getattr(self.bucket, name)(*args, **kwargs)

    def stats(self) -> dict[str, Any]:
        return {"leases": self.leases, "calls": self.calls, "consumed": getattr(self.bucket, "consumed", None),
                "rate": getattr(self.bucket, "rate", None), "throttles": getattr(self.bucket, "throttles", None)}


class Hub:
    """Stop flags and progress of the engine's running months (one `run` call each)."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()
        self.progress: dict[str, list[Any]] = {}

    def stop(self, run: str) -> None:
        self.stopped.add(run)

    def report(self, run: str, n: float, add: dict[str, float], fields: dict[str, Any]) -> bool:
        """A worker's progress since its last report; True when its month is stopped."""
        p = self.progress.setdefault(run, [0.0, {}, {}])
        p[0] += n
        for k, v in add.items():
            p[1][k] = p[1].get(k, 0.0) + v
        p[2].update(fields)
        return run in self.stopped

    def take(self, run: str) -> list[Any] | None:
        return self.progress.pop(run, None)

    def forget(self, run: str) -> None:
        self.stopped.discard(run)
        self.progress.pop(run, None)


# --------------------------------------------------------------------------- what crosses to a worker


class _Lease:
    """This process's share of a budget actor: tokens taken ahead, calls not yet sent."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.lock = threading.Lock()  # one lease request at a time
        self.ops_lock = threading.Lock()
        self.tokens = 0.0
        self.chunk = 1.0
        self.rate = 0.0  # what the bucket let through at the last lease (0: not asked yet)
        self.ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.sent = time.monotonic()

    def acquire(self, n: float, *args: Any, **kwargs: Any) -> float:
        if args or kwargs:  # a form the lease does not know: the bucket answers it
            self.flush(wait=True)
            return float(ray.get(self.actor.call.remote("acquire", (n, *args), kwargs)))
        with self.lock:
            if self.tokens >= n:
                self.tokens -= n
                return self.rate
            with self.ops_lock:
                ops, self.ops, self.sent = self.ops, [], time.monotonic()
            granted, self.rate = ray.get(self.actor.lease.remote(max(n - self.tokens, self.chunk), ops))
            self.chunk = max(1.0, self.rate * LEASE_SECONDS)
            self.tokens += granted - n
            return self.rate

    def queue(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name == "throttled":  # the table pushed back: give back what this process holds, tell the bucket now
            with self.lock:
                held, self.tokens = self.tokens, 0.0
            with self.ops_lock:
                if held > 0:
                    self.ops.append(("refund", (held,), {}))
                self.ops.append((name, args, kwargs))
            self.flush()
            return
        with self.ops_lock:
            self.ops.append((name, args, kwargs))
            due = len(self.ops) >= 256 or time.monotonic() - self.sent > FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        with self.ops_lock:
            ops, self.ops, self.sent = self.ops, [], time.monotonic()
        if ops:
            ref = self.actor.apply.remote(ops)
            if wait:
                ray.get(ref)

    def release(self) -> None:
        """A task ended: the tokens held go back, the queued calls are applied."""
        with self.lock:
            held, self.tokens = self.tokens, 0.0
        if held > 0:
            with self.ops_lock:
                self.ops.append(("refund", (held,), {}))
        self.flush(wait=True)


class SharedBudget:
    """A `Budget` backed by a `BudgetActor`: acquire leases, every other method is forwarded as called."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedBudget, (self.actor,))

    @property
    def _lease(self) -> _Lease:
        key = self.actor._actor_id.hex()
        with _lock:
            if key not in _leases:
                _leases[key] = _Lease(self.actor)
            return _leases[key]

    def acquire(self, n: float, *args: Any, **kwargs: Any) -> float:
        return self._lease.acquire(n, *args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        self._lease.queue("settle", args, kwargs)

    def refund(self, *args: Any, **kwargs: Any) -> None:
        self._lease.queue("refund", args, kwargs)

    def throttled(self, *args: Any, **kwargs: Any) -> None:
        self._lease.queue("throttled", args, kwargs)

    def succeeded(self, *args: Any, **kwargs: Any) -> None:
        self._lease.queue("succeeded", args, kwargs)

    def release(self) -> None:
        self._lease.release()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        lease = self._lease

        def forward(*args: Any, **kwargs: Any) -> None:  # a method the bucket gained later
            lease.queue(name, args, kwargs)

        return forward

    def stats(self) -> dict[str, Any]:
        self._lease.flush(wait=True)
        return dict(ray.get(self.actor.stats.remote()))


class WorkerPool(Executor):
    """An executor for a task's requests: a thread pool of whichever process uses it (shipped by size)."""

    def __init__(self, name: str, workers: int) -> None:
        self.name, self.workers = name, max(1, workers)

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerPool, (self.name, self.workers))

    def _pool(self) -> ThreadPoolExecutor:
        key = (self.name, self.workers)
        with _lock:
            if key not in _pools:
                _pools[key] = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
            return _pools[key]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._pool().submit(fn, *args, **kwargs)


class _Progress:
    """A task's progress, sent to the hub in batches; the answer says whether the month was stopped."""

    def __init__(self, hub: Any, run: str, stop: threading.Event) -> None:
        self.hub, self.run, self.stop = hub, run, stop
        self.lock = threading.Lock()
        self.n = 0.0
        self.add: dict[str, float] = {}
        self.fields: dict[str, Any] = {}
        self.closed = threading.Event()
        self.send()  # a month stopped before this task started: it stops at its first check
        self.thread = threading.Thread(target=self.loop, daemon=True, name="etl-progress")
        self.thread.start()

    def advance(self, n: float = 0, add: dict[str, float] | None = None, **fields: Any) -> None:
        with self.lock:
            self.n += n
            for k, v in (add or {}).items():
                self.add[k] = self.add.get(k, 0.0) + v
            self.fields.update(fields)

    def send(self) -> None:
        with self.lock:
            n, add, fields, self.n, self.add, self.fields = self.n, self.add, self.fields, 0.0, {}, {}
        if ray.get(self.hub.report.remote(self.run, n, add, fields)):
            self.stop.set()

    def loop(self) -> None:
        while not self.closed.wait(FLUSH_SECONDS):
            try:
                self.send()
            except Exception:  # the driver is gone: Ray ends this worker's task soon
                return

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.send()


@dataclass(frozen=True)
class _Spec:
    """The handles a worker rebuilds its task's context from."""

    hub: Any
    run: str
    budget: Budget | None
    io: Executor | None
    retries: int
    retry_delay: float
    version: str


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (it travels to the driver), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return EtlError(f"{type(exc).__name__}: {exc}")


def _remote_run(run_task: Callable[..., dict[str, Any]], cfg: Any, task: Any, spec: _Spec) -> tuple[Any, ...]:
    """A task on a worker: ("ok", result) or ("error", exception, traceback); never raises, so Ray's own
    retries are left for a worker that died."""
    if spec.version != __version__:
        return ("error", EtlError(f"the Ray worker runs etl {__version__}, the driver {spec.version}",
                                  hint="install the same etl-anniversary version on every node"), "")
    stop = threading.Event()
    progress = _Progress(spec.hub, spec.run, stop)
    ctx = TaskContext(progress=progress.advance, stop=stop, budget=spec.budget, io=spec.io)
    try:
        return ("ok", run_attempts(run_task, cfg, task, ctx, spec.retries, spec.retry_delay))
    except Exception as exc:
        return ("error", _portable(exc), traceback.format_exc())
    finally:
        progress.close()
        if isinstance(spec.budget, SharedBudget):
            spec.budget.release()


def check_no_credentials(*shipped: Any) -> None:
    """Refuse to send this process's AWS secret to a worker (workers use their own credentials)."""
    secrets = [v for k in SECRET_VARIABLES if len(v := os.environ.get(k, "")) >= 8]
    if not secrets:
        return
    blob = pickle.dumps(shipped)
    if any(s.encode() in blob for s in secrets):
        raise EtlError("refusing to send AWS credentials to Ray workers: what a task is given holds this "
                       "process's secret key", hint="workers take credentials from their own environment "
                                                    "(instance profile, IRSA, AWS_PROFILE); keep them out of "
                                                    "the config")


# --------------------------------------------------------------------------- the engine


class RayEngine:
    """Runs tasks on the Ray cluster at `address` (see `config.EngineConfig.address`); joins the Ray instance
    this process already has, if any, and leaves it running."""

    def __init__(self, address: str = "", task_retries: int = 2, worker_retries: int = 3,
                 retry_delay: float = 0.5) -> None:
        self.address = address
        self.task_retries = task_retries
        self.worker_retries = worker_retries
        self.retry_delay = retry_delay
        self._lock = threading.Lock()
        self._started = False  # this engine started Ray (and shuts it down)
        self._hub: Any = None
        self._remote: Any = None
        self._budgets: dict[int, tuple[Any, SharedBudget, list[float]]] = {}
        self._cfg_refs: dict[int, tuple[Any, Any]] = {}
        self._closed = threading.Event()
        self._sync: threading.Thread | None = None

    def _ready(self) -> None:
        with self._lock:
            if self._hub is not None:
                return
            if not ray.is_initialized():
                try:
                    ray.init(address=self.address or None, logging_level=logging.WARNING)
                except Exception as exc:
                    raise EtlError(f"could not reach the Ray cluster at {self.address or 'this machine'}: {exc}",
                                   hint="check [engine] address (or --engine local)") from None
                self._started = True
            self._hub = ray.remote(Hub).options(num_cpus=0).remote()
            self._remote = ray.remote(max_retries=self.worker_retries, retry_exceptions=False)(_remote_run)

    def pool(self, name: str, workers: int) -> Executor:
        return WorkerPool(name, workers)

    def shared_budget(self, bucket: Any) -> Budget:
        """One actor per bucket (the run has one per destination), made from the bucket's class and rate; the
        driver's later changes of the rate (a re-read provisioned capacity) follow it."""
        self._ready()
        with self._lock:
            if id(bucket) not in self._budgets:
                cls: Callable[..., Any] = type(bucket)
                make = functools.partial(cls, bucket.target)
                actor = ray.remote(BudgetActor).options(num_cpus=0, max_concurrency=256).remote(make)
                self._budgets[id(bucket)] = (bucket, SharedBudget(actor), [bucket.target])
                if self._sync is None:
                    self._sync = threading.Thread(target=self._follow_targets, daemon=True, name="budget-sync")
                    self._sync.start()
            return self._budgets[id(bucket)][1]

    def _follow_targets(self) -> None:
        while not self._closed.wait(1.0):
            with self._lock:
                budgets = list(self._budgets.values())
            for bucket, shared, last in budgets:
                if bucket.target != last[0]:
                    last[0] = bucket.target
                    shared.actor.call.remote("set_target", (bucket.target,), {})

    def _cfg_ref(self, cfg: Any) -> Any:
        """The config in the object store once, not once per task."""
        with self._lock:
            if id(cfg) not in self._cfg_refs:
                self._cfg_refs[id(cfg)] = (cfg, ray.put(cfg))
            return self._cfg_refs[id(cfg)][1]

    def run(self, pool: str, workers: int, run_task: Callable[..., dict[str, Any]], cfg: Any, tasks: list[Any],
            ctx: TaskContext) -> list[dict[str, Any]]:
        """Every task's result, in task order. The first failure stops the others and is raised once they have
        all ended. `workers` is the local engine's pool size: on Ray, the cluster's CPUs decide."""
        if not tasks:
            return []
        self._ready()
        check_no_credentials(cfg, tasks)
        run = uuid.uuid4().hex
        spec = _Spec(self._hub, run, ctx.budget, ctx.io, self.task_retries, self.retry_delay, __version__)
        cfg_ref = self._cfg_ref(cfg)
        refs = [self._remote.options(name=f"etl.{pool}").remote(run_task, cfg_ref, t, spec) for t in tasks]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        errors: list[BaseException] = []
        pending, told = list(refs), False
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=FLUSH_SECONDS)
                for ref in done:
                    i = where[ref]
                    try:
                        results[i] = self._outcome(ref, pool, tasks[i])
                    except Exception as exc:
                        errors.append(exc)
                        ctx.stop.set()
                if ctx.stop.is_set() and not told:
                    self._hub.stop.remote(run)
                    told = True
                self._forward(run, ctx)
        finally:
            self._forward(run, ctx)
            self._hub.forget.remote(run)
        if errors:
            raise next((e for e in errors if not isinstance(e, Stopped)), errors[0])
        return results

    def _outcome(self, ref: Any, pool: str, task: Any) -> dict[str, Any]:
        try:
            out = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker or node died more often than worker_retries
            raise EtlError(f"{pool} task {task!r} did not finish on Ray: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}",
                           hint="rerun the same command: finished work is kept") from None
        if out[0] == "ok":
            return dict(out[1])
        error: BaseException = out[1]
        if out[2]:
            error.add_note(f"on the Ray worker:\n{out[2]}")
        raise error

    def _forward(self, run: str, ctx: TaskContext) -> None:
        got = ray.get(self._hub.take.remote(run))
        if got:
            n, add, fields = got
            ctx.progress(n, add=add or None, **fields)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            budgets, self._budgets = list(self._budgets.values()), {}
            hub, self._hub = self._hub, None
            self._cfg_refs.clear()
        if self._sync is not None:
            self._sync.join()
            self._sync = None
        if ray.is_initialized():
            for _, shared, _ in budgets:
                ray.kill(shared.actor)
            if hub is not None:
                ray.kill(hub)
            with _lock:
                for key in [k for k in _leases if k in {s.actor._actor_id.hex() for _, s, _ in budgets}]:
                    del _leases[key]
            if self._started:
                ray.shutdown()
                self._started = False
