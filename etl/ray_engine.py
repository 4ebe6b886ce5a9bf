"""The stages' tasks as Ray tasks (`--engine ray`, `[engine] kind = "ray"`): the same `run` contract as
`engine.LocalEngine`, so no stage has a second implementation.

The driver (this process) plans, waits for export jobs and commits every month; `run` sends a month's
transform, load or verify tasks to the cluster and returns their results in task order. What a worker
gets is the config, the task and a few handles; never credentials: a worker takes AWS settings from its
own environment (instance profile, `AWS_ENDPOINT_URL`, ...), and `run` refuses to ship anything that
holds this process's secret key. On the worker, the task's `TaskContext` is rebuilt from the handles:

- budget: one `BudgetActor` per destination (a `ratelimit.TokenBucket` inside, made from the driver's
  bucket's limits), shared by every task of every month. A worker process leases tokens in chunks of about
  LEASE_SECONDS of the rate and sends its other calls (settle, refund, succeeded, ... with whatever
  arguments they take) in batches, so the actor answers a few calls per second per worker.
- stop and progress: one `Hub` actor per engine. A worker reports its task's progress every FLUSH_SECONDS
  as totals of its current attempt, and learns in the answer whether its month was stopped.
- io: a thread pool of the worker process.

The actors live on the driver's node (a hard node affinity): losing that node loses the driver anyway,
and losing any other node loses only tasks, which Ray runs again. An actor whose process dies is restarted
by Ray (`max_restarts`) and its callers' calls are retried (`max_task_retries`); its state comes back from
what the driver knows (the budget's limits and rates, pushed every second) and from the workers' next
reports (progress totals, not increments). The actors are anonymous and made by each engine, so a rerun
never meets a dead one.

Failures: a transient error is retried inside the task, as locally (`engine.run_attempts`); a worker
process or node that dies is Ray's to retry (`max_retries` = `[engine] worker_retries`). Outputs have
deterministic names, so a retry overwrites what the dead try left; a load part's checkpoint is written
only once all its items are acknowledged. A task's progress is that of its latest attempt, so a retried
task never counts twice; a node lost during a run is said in one line (`lost_nodes` of the context's
progress), and Ray's own logs of it stay in its log files unless the `etl` logger is at DEBUG (`--debug`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from etl import __version__
from etl.engine import Budget, TaskContext, run_attempts
from etl.errors import EtlError, Stopped
from etl.ratelimit import Limit, TokenBucket

LEASE_SECONDS = 0.1  # a worker's lease of the budget: this much of the table's rate
FLUSH_SECONDS = 0.25  # how often a worker reports progress and polls for a stop; the driver polls as often
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")

_lock = threading.Lock()
_leases: dict[str, _Lease] = {}  # this process's lease of each budget actor
_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}  # this process's request pools


# --------------------------------------------------------------------------- actors


class BudgetActor:
    """A destination's token bucket, for every task of the run wherever it runs. Restarted by Ray after its
    process died: the constructor makes the bucket again from the driver's recipe, and the driver pushes the
    current rates every second."""

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

    def lease(self, n: float, ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> tuple[float, float, float]:
        """Apply a worker's queued calls, then block until `n` tokens are taken; returns them, the size of the
        next lease and the rate the bucket lets through now."""
        self.apply(ops)
        rate = self.bucket.acquire(n)
        self.leases += 1
        now = float(rate) if isinstance(rate, int | float) else float(getattr(self.bucket, "rate", 10.0))
        return n, max(1.0, now * LEASE_SECONDS), now

    def apply(self, ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        for name, args, kwargs in ops:
            getattr(self.bucket, name)(*args, **kwargs)
        self.calls += 1

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        return getattr(self.bucket, name)(*args, **kwargs)

    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def stats(self) -> dict[str, Any]:
        return {"leases": self.leases, "calls": self.calls, "consumed": getattr(self.bucket, "consumed", None),
                "rate": getattr(self.bucket, "rate", None), "throttles": getattr(self.bucket, "throttles", None)}


Totals = tuple[str, str, float, dict[str, float]]  # an attempt's id, its node, its count and its sums


class Hub:
    """Stop flags and progress of the engine's running months (one `run` call each). A task reports the
    totals of its current attempt, so an attempt that Ray ran again replaces the dead one's count instead of
    adding to it, and a restarted hub is whole again at the workers' next reports; the driver sends its stop
    flags again while they hold."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()
        self.tasks: dict[str, dict[int, Totals]] = {}
        self.fields: dict[str, dict[str, Any]] = {}

    def stop(self, run: str) -> None:
        self.stopped.add(run)

    def report(self, run: str, index: int, totals: Totals, fields: dict[str, Any]) -> bool:
        """A task's totals now; True when its month is stopped."""
        self.tasks.setdefault(run, {})[index] = totals
        self.fields.setdefault(run, {}).update(fields)
        return run in self.stopped

    def take(self, run: str) -> tuple[dict[int, Totals], dict[str, Any]]:
        """The totals reported since the last take, and the latest fields."""
        return self.tasks.pop(run, {}), self.fields.pop(run, {})

    def forget(self, run: str) -> None:
        self.stopped.discard(run)
        self.tasks.pop(run, None)
        self.fields.pop(run, None)

    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


# --------------------------------------------------------------------------- what crosses to a worker


class _Lease:
    """This process's share of a budget actor: tokens taken ahead, calls not yet sent."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.lock = threading.Lock()  # one lease request at a time
        self.ops_lock = threading.Lock()
        self.tokens = 0.0
        self.chunk = 1.0
        self.rate = 0.0  # what the bucket let through at the last lease
        self.ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.sent = time.monotonic()

    def acquire(self, n: float) -> float:
        """Take `n` tokens from what this process holds, leasing more when it runs short; returns the rate
        the bucket let through at the last lease, as `TokenBucket.acquire` does."""
        with self.lock:
            if self.tokens >= n:
                self.tokens -= n
                return self.rate
            with self.ops_lock:
                ops, self.ops, self.sent = self.ops, [], time.monotonic()
            granted, self.chunk, self.rate = ray.get(self.actor.lease.remote(max(n - self.tokens, self.chunk), ops))
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

    def acquire(self, n: float) -> float:
        return self._lease.acquire(n)

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
    """A task attempt's progress, sent to the hub as totals; the answer says whether the month was stopped.
    A try of the task that starts again (a transient failure) starts its count again, as the stages count a
    part from its start (a resumed part reports its low-water mark first)."""

    def __init__(self, hub: Any, run: str, index: int, stop: threading.Event) -> None:
        self.hub, self.run, self.index, self.stop = hub, run, index, stop
        self.attempt = uuid.uuid4().hex
        self.node = str(ray.get_runtime_context().get_node_id())
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

    def restart(self) -> None:
        with self.lock:
            self.n, self.add = 0.0, {k: 0.0 for k in self.add}

    def totals(self) -> Totals:
        with self.lock:
            return self.attempt, self.node, self.n, dict(self.add)

    def send(self) -> None:
        with self.lock:
            fields, self.fields = self.fields, {}
        if ray.get(self.hub.report.remote(self.run, self.index, self.totals(), fields)):
            self.stop.set()

    def loop(self) -> None:
        while not self.closed.wait(FLUSH_SECONDS):
            try:
                self.send()
            except ray.exceptions.RayError:  # the driver is gone: Ray ends this worker's task soon
                return

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        with contextlib.suppress(ray.exceptions.RayError):  # the result carries the totals
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


def _remote_run(run_task: Callable[..., dict[str, Any]], cfg: Any, task: Any, spec: _Spec,
                index: int) -> tuple[Any, ...]:
    """A task on a worker: ("ok", result, progress totals) or ("error", exception, traceback); never raises,
    so Ray's own retries are left for a worker that died."""
    if spec.version != __version__:
        return ("error", EtlError(f"the Ray worker runs etl {__version__}, the driver {spec.version}",
                                  hint="install the same etl-anniversary version on every node"), "")
    stop = threading.Event()
    progress = _Progress(spec.hub, spec.run, index, stop)
    ctx = TaskContext(progress=progress.advance, stop=stop, budget=spec.budget, io=spec.io)

    def one_try(cfg: Any, task: Any, ctx: TaskContext) -> dict[str, Any]:
        progress.restart()
        return run_task(cfg, task, ctx)

    try:
        result = run_attempts(one_try, cfg, task, ctx, spec.retries, spec.retry_delay)
        return ("ok", result, progress.totals())
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


@dataclass
class _Tally:
    """What the driver knows of one `run`: every task's latest totals, the attempts each task had, what was
    forwarded to the caller's progress, and the nodes alive when it started."""

    totals: dict[int, Totals] = field(default_factory=dict)
    attempts: dict[int, dict[str, str]] = field(default_factory=dict)  # task -> attempt -> node
    done: float = 0.0  # forwarded count: never above what the latest attempts counted at their highest
    sums: dict[str, float] = field(default_factory=dict)  # forwarded sums

    def update(self, index: int, totals: Totals) -> None:
        self.totals[index] = totals
        self.attempts.setdefault(index, {})[totals[0]] = totals[1]

    def forward(self, ctx: TaskContext, fields: dict[str, Any]) -> None:
        """The change since the last forward: a count replaced by a rerun's smaller one is held, not taken
        back, so progress never goes backwards nor past what the tasks did; sums (rates, MB) follow as are."""
        count = sum(t[2] for t in self.totals.values())
        sums: dict[str, float] = {}
        for t in self.totals.values():
            for k, v in t[3].items():
                sums[k] = sums.get(k, 0.0) + v
        n = max(0.0, count - self.done)
        add = {k: v - self.sums.get(k, 0.0) for k, v in sums.items() if v != self.sums.get(k, 0.0)}
        self.done, self.sums = max(self.done, count), sums
        if n or add or fields:
            ctx.progress(n, add=add or None, **fields)

    def reruns(self) -> dict[str, int]:
        """Tasks run more than once, by the node of their earlier attempts."""
        out: dict[str, int] = {}
        for index, attempts in self.attempts.items():
            if len(attempts) > 1:
                final = self.totals[index][0]
                for node in {n for a, n in attempts.items() if a != final}:
                    out[node] = out.get(node, 0) + 1
        return out


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
        self._actor_options: dict[str, Any] = {}
        self._budgets: dict[int, tuple[Any, SharedBudget]] = {}
        self._cfg_refs: dict[int, tuple[Any, Any]] = {}
        self._notices: dict[int, list[str]] = {}
        self._closed = threading.Event()
        self._sync: threading.Thread | None = None

    def _ready(self) -> None:
        with self._lock:
            if self._hub is not None:
                return
            if not ray.is_initialized():
                # the workers' and raylets' logs (a lost node's stack traces among them) stay in Ray's log
                # files, unless the etl logger is at DEBUG (--debug); a task's own failure comes back as its result
                verbose = logging.getLogger("etl").isEnabledFor(logging.DEBUG)
                try:
                    ray.init(address=self.address or None, logging_level=logging.DEBUG if verbose else logging.ERROR,
                             log_to_driver=verbose)
                except Exception as exc:
                    raise EtlError(f"could not reach the Ray cluster at {self.address or 'this machine'}: {exc}",
                                   hint="check [engine] address (or --engine local)") from None
                self._started = True
            # the driver's node: losing it loses the driver too; never a node that may go while the run goes on
            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            self._actor_options = {"num_cpus": 0, "scheduling_strategy": here, "max_restarts": -1,
                                   "max_task_retries": -1}
            self._hub = ray.remote(Hub).options(**self._actor_options).remote()
            self._remote = ray.remote(max_retries=self.worker_retries, retry_exceptions=False)(_remote_run)

    def pool(self, name: str, workers: int) -> Executor:
        return WorkerPool(name, workers)

    def shared_budget(self, bucket: Any) -> Budget:
        """One actor per bucket (the run has one per destination), made from the bucket's limits; the driver's
        later changes of the rates (a re-read provisioned capacity) follow it, and come back to it after a
        restart."""
        self._ready()
        with self._lock:
            if id(bucket) not in self._budgets:
                actor = ray.remote(BudgetActor).options(max_concurrency=256, **self._actor_options).remote(
                    _recipe(bucket))
                self._budgets[id(bucket)] = (bucket, SharedBudget(actor))
                if self._sync is None:
                    self._sync = threading.Thread(target=self._follow_targets, daemon=True, name="budget-sync")
                    self._sync.start()
            return self._budgets[id(bucket)][1]

    def _follow_targets(self) -> None:
        """Every second, each bucket's current rates to its actor: a change, or an actor made again."""
        while not self._closed.wait(1.0):
            with self._lock:
                budgets = list(self._budgets.values())
            for bucket, shared in budgets:
                limits = getattr(bucket, "limits", None)
                if isinstance(limits, dict):
                    shared.actor.call.remote("set_targets", ({k: lim.rate for k, lim in limits.items()},), {})
                else:
                    shared.actor.call.remote("set_target", (bucket.target,), {})

    def actor_nodes(self) -> dict[str, str]:
        """Where the engine's actors run now (name -> node id), for a look at their placement."""
        self._ready()
        with self._lock:
            actors = {"hub": self._hub, **{f"budget-{i}": s.actor for i, (_, s) in enumerate(self._budgets.values())}}
        return {name: ray.get(a.node.remote()) for name, a in actors.items()}

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
        check_reachable(cfg)
        run = uuid.uuid4().hex
        alive = _alive_nodes()
        spec = _Spec(self._hub, run, ctx.budget, ctx.io, self.task_retries, self.retry_delay, __version__)
        cfg_ref = self._cfg_ref(cfg)
        refs = [self._remote.options(name=f"etl.{pool}").remote(run_task, cfg_ref, t, spec, i)
                for i, t in enumerate(tasks)]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        errors: list[BaseException] = []
        tally = _Tally()
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=FLUSH_SECONDS)
                for ref in done:
                    i = where[ref]
                    try:
                        results[i] = self._outcome(ref, pool, tasks[i], i, tally)
                    except Exception as exc:
                        errors.append(exc)
                        ctx.stop.set()
                if ctx.stop.is_set():  # again while it holds: a restarted hub has forgotten it
                    self._hub.stop.remote(run)
                self._forward(run, ctx, tally)
        finally:
            self._forward(run, ctx, tally)
            self._hub.forget.remote(run)
            self._tell(ctx, pool, tally, alive)
        if errors:
            raise next((e for e in errors if not isinstance(e, Stopped)), errors[0])
        return results

    def _outcome(self, ref: Any, pool: str, task: Any, index: int, tally: _Tally) -> dict[str, Any]:
        try:
            out = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the worker or node died more often than worker_retries
            raise EtlError(f"{pool} task {task!r} did not finish on Ray: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}",
                           hint="rerun the same command: finished work is kept") from None
        if out[0] == "ok":
            tally.update(index, out[2])  # the attempt that finished, whatever the hub heard last
            return dict(out[1])
        error: BaseException = out[1]
        if out[2]:
            error.add_note(f"on the Ray worker:\n{out[2]}")
        raise error

    def _forward(self, run: str, ctx: TaskContext, tally: _Tally) -> None:
        reported, fields = ray.get(self._hub.take.remote(run))
        for index, totals in reported.items():
            if index not in tally.totals or tally.totals[index][0] != totals[0] or totals[2] >= tally.totals[index][2]:
                tally.update(index, totals)
        tally.forward(ctx, fields)

    def _tell(self, ctx: TaskContext, pool: str, tally: _Tally, alive: dict[str, tuple[str, int]]) -> None:
        """One line per node lost during the run, and one for tasks whose worker process died."""
        try:
            now = _alive_nodes()
        except ray.exceptions.RayError:  # the cluster itself is gone: the run's error says so
            return
        reruns = tally.reruns()
        # a node is lost when the cluster says so, or, for one whose tasks ran again, when its raylet no longer
        # answers: the cluster declares a node dead only after its health checks fail (15 s and more), so a
        # short run can end before it does
        lost = {i: where[0] for i, where in alive.items()
                if i not in now or (i in reruns and not _answers(*where))}
        notes = self._notices.setdefault(id(ctx), [])
        others = 0
        for node, n in sorted(reruns.items()):
            if node in lost:
                notes.append(f"lost Ray node {lost.pop(node)} ({node[:8]}): {n} {pool} task(s) run again")
            else:
                others += n
        notes.extend(f"lost Ray node {addr} ({node[:8]}) during the run" for node, addr in sorted(lost.items()))
        if others:
            notes.append(f"{others} {pool} task(s) run again after their Ray worker process died")

    def notices(self, ctx: TaskContext) -> list[str]:
        """What the runs made with `ctx` have to tell (one line each): nodes lost, tasks run again."""
        with self._lock:
            return self._notices.pop(id(ctx), [])

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
            for _, shared in budgets:
                ray.kill(shared.actor, no_restart=True)
            if hub is not None:
                ray.kill(hub, no_restart=True)
            with _lock:
                for key in [k for k in _leases if k in {s.actor._actor_id.hex() for _, s in budgets}]:
                    del _leases[key]
            if self._started:
                ray.shutdown()
                self._started = False


def _recipe(bucket: Any) -> Callable[[], Any]:
    """How a budget actor makes its bucket (again, after a restart): a `TokenBucket` with the driver's
    bucket's limits, burst and ramp; another kind of bucket from its class and target rate."""
    cls: Callable[..., Any] = type(bucket)
    if type(bucket).__init__ is TokenBucket.__init__:
        limits = [Limit(lim.name, lim.rate, lim.ramp_from, lim.ratio) for lim in bucket.limits.values()]
        return functools.partial(cls, limits=limits, burst_seconds=bucket.burst_seconds,
                                 ramp_doubling_s=bucket.ramp_doubling_s)
    return functools.partial(cls, bucket.target)


def _alive_nodes() -> dict[str, tuple[str, int]]:
    """Node id -> (address, node manager port) of every node the cluster holds alive now."""
    return {n["NodeID"]: (n["NodeManagerAddress"], int(n["NodeManagerPort"])) for n in ray.nodes() if n["Alive"]}


def _answers(address: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a node's raylet accepts a connection (a lost machine refuses or never answers)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_reachable(cfg: Any) -> None:
    """Refuse a staging root on this machine's disk when a node of the cluster is another machine (another
    host name): its workers could not read it."""
    root = str(getattr(getattr(cfg, "staging", None), "root", "") or "")
    if not root or root.startswith("s3://"):  # no staging root (a bare task), or one every node reaches
        return
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    host = next((n["NodeManagerHostname"] for n in nodes if n["NodeID"] == here), None)
    others = sorted({n["NodeManagerHostname"] for n in nodes} - {host})
    if others:
        raise EtlError(f"staging.root {root} is a directory of this machine, but the Ray cluster has nodes on "
                       f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}, whose workers cannot read it",
                       hint="use an s3:// staging root with a cluster, or --engine local")
