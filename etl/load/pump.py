"""The writing task of the load and of catch-up: one Parquet part's rows through the destination's shared
budget, with as many requests in flight as the budget and the round trip need, on the writer's event loop.

UnprocessedItems, throttling, 5xx and dropped connections are retried with exponential backoff and jitter
until acknowledged; a batch refused as invalid is split until the item is found, which is quarantined. The
part's low-water mark (every row below it accounted for) is saved as it moves, so a resume starts there; once
every item is acknowledged, the part's checkpoint is written."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import heapq
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, cast

import orjson

from etl import items, mapping, staging, times
from etl.config import AwsSide, Config
from etl.engine import Budget, TaskContext
from etl.errors import DeadlineReached, EtlError
from etl.load.rows import BELOW, RECONCILED, Counters, LoadPartTask, _Batch, _plain, _read, _Ticket
from etl.load.window import Window
from etl.load.writer import BatchWriter, Reply
from etl.state import LoadProgress


def _writer(side: AwsSide, table: str) -> BatchWriter:
    """One writer (connections on the process's event loop) per destination in a process, like a client."""
    return _writer_in(side, table, os.getpid())


@functools.lru_cache(maxsize=8)
def _writer_in(side: AwsSide, table: str, pid: int) -> BatchWriter:
    return BatchWriter(side, table)


def _run_record(task: LoadPartTask, c: Counters, seconds: float) -> dict[str, Any]:
    """What one run did to a part, as far as it got: kept per part and summed per run by the commit."""
    return {"run": task.target.run[0], "started": round(task.target.run[1], 3), "last": round(time.time(), 3),
            "seconds": round(seconds, 3), "acknowledged": c.written, "wcu": round(c.wcu, 1),
            "requests": c.requests, "retries": c.retries, "throttles": c.throttles}


class _Progress:
    """A part's low-water mark and the counts below it, saved in the store while the part loads: a resumed
    load skips the rows below the mark and starts its counts from these, so counts reconcile across runs
    and a resume rewrites only what was above the mark (the window in flight, and what was acknowledged
    since the last save). Saved at most every `[load] checkpoint_seconds` and when the part stops."""

    def __init__(self, store: staging.Store, task: LoadPartTask, every: float, prior: dict[str, Any] | None) -> None:
        self.store, self.task, self.every = store, task, every
        self.start = int(prior["low_water_mark"]) if prior else 0
        self.base = {k: int(prior["below"].get(k, 0)) if prior else 0 for k in BELOW}  # the earlier runs'
        self.lwm = self.start
        self.below = dict(self.base)
        self.refused: list[dict[str, Any]] = list(prior.get("refused", [])) if prior else []
        self.runs: list[dict[str, Any]] = list(prior.get("runs", [])) if prior else []
        self.t0 = time.monotonic()
        self._saved = (self.lwm, self.t0)

    def passed(self, t: _Ticket) -> None:
        self.lwm = t.end
        for k in ("skipped_expired", "deduplicated", "deletes"):
            self.below[k] += t.skipped[k]
        self.below["quarantined"] += t.skipped["quarantined"] + len(t.refused)
        self.below["written"] += t.written
        self.refused += t.refused

    def due(self) -> bool:
        lwm, at = self._saved
        return self.lwm > lwm and time.monotonic() - at >= self.every

    def runs_with(self, c: Counters) -> list[dict[str, Any]]:
        return [*self.runs, _run_record(self.task, c, time.monotonic() - self.t0)]

    def save(self, c: Counters) -> None:
        t = self.task
        self.store.write_json(t.progress, {
            "part": t.part, "rows": t.rows, "low_water_mark": self.lwm, "below": self.below,
            "refused": self.refused, "now": t.target.now, "include_expired": t.target.include_expired,
            "transform_run": t.transform_run, "table": t.target.table, "table_arn": t.target.destination[0],
            "table_created": t.target.destination[1], "runs": self.runs_with(c), "at": times.iso_seconds()})
        self._saved = (self.lwm, time.monotonic())


def _resume_point(store: staging.Store, task: LoadPartTask) -> dict[str, Any] | None:
    """The part's saved progress, when it is for this transform, this very table and the same rows to write
    (and its counts reconcile with its mark); else None: the part starts over."""
    p = LoadProgress.read(store, task.progress)
    if p is None or not p.valid_for(task.transform_run, task.rows, task.target.destination,
                                    task.target.include_expired):
        return None
    return p.body


# messages of a refusal about the table's key schema: the items were checked against the key the table had
# at the start, so these mean the table (or the mapping) is not what it was, not that an item is bad
KEY_SCHEMA_REFUSALS = ("type mismatch for key", "missing the key", "does not match the schema",
                       "required keys was not given a value")
REFUSED_LIMIT = 25  # items DynamoDB refused with none written: a problem of the table or mapping, not of items



def _key_of(put: bytes, keys: list[str]) -> dict[str, Any]:
    """The key of a pre-serialised put or delete request (for the quarantine file: the key, never the item)."""
    req = orjson.loads(put)
    item = (req.get("PutRequest") or {}).get("Item") or (req.get("DeleteRequest") or {}).get("Key") or {}
    return {k: _plain(items.decode(item[k])) for k in keys if k in item}


class _Loader:
    """One part's requests: this task's thread reads, paces and decides (every budget call is made here);
    the writer's event loop only sends and hands the replies back.

    In flight means sent and not yet accounted for: at most the window's limit of batches from the oldest
    one not acknowledged (its low-water mark) to the newest, so a batch retrying for long holds the part
    back instead of letting the rows above the mark grow, and a resume rewrites at most that window.
    A batch DynamoDB refuses as invalid is split in two until the item is found; it is quarantined with the
    service's message, and the rest is written."""

    def __init__(self, cfg: Config, task: LoadPartTask, ctx: TaskContext, counters: Counters,
                 progress: _Progress, quarantine: list[bytes]) -> None:
        assert ctx.budget is not None
        self.budget = cast(Budget, ctx.budget)
        self.ctx = ctx
        self.task = task
        self.c = counters
        self.progress = progress
        self.quarantine = quarantine
        self.keys = mapping.key_columns(cfg)
        self.writer = _writer(cfg.destination, task.target.table)
        self.window = Window(cfg.load.concurrency, cfg.load.max_in_flight, *self.writer.hint)
        self.max_delay = cfg.load.max_backoff_seconds
        self.base_delay = 0.05
        self.cond = threading.Condition()
        self.replies: deque[tuple[_Batch, Reply]] = deque()
        self.in_flight = 0
        self.open: deque[_Ticket] = deque()  # tickets sent and not yet below the low-water mark, in row order
        self.retries: list[tuple[float, int, _Batch]] = []  # (due, seq, batch)
        self._seq = 0
        self.refused = 0  # items DynamoDB refused in this run
        # what holds the rate back, for progress: seconds waiting on the budget / on the window / working
        self.waited = {"budget": 0.0, "window": 0.0}
        self._report_at = time.monotonic()
        self._reported_rate = 0.0
        self._wcu_mark = (time.monotonic(), 0.0)

    # ------------------------------------------------------------------ the event loop's side

    def _answer(self, batch: _Batch, reply: Reply) -> None:
        with self.cond:
            self.replies.append((batch, reply))
            self.cond.notify()

    # ------------------------------------------------------------------ this task's thread

    def run(self, batches: Iterator[_Batch]) -> None:
        source: Iterator[_Batch] | None = batches
        try:
            while True:
                self._drain()
                self._advance()
                self._check()
                batch = self._due_retry()
                if batch is None and source is not None and len(self.open) < self.window.limit:
                    batch = next(source, None)
                    if batch is None:
                        source = None
                    elif batch.ticket is not None:
                        self.open.append(batch.ticket)
                if batch is None:
                    if source is None and not self.in_flight and not self.retries:
                        return
                    t0 = time.monotonic()
                    self._wait(self.retries[0][0] - time.monotonic() if self.retries else 0.5)
                    if source is not None:  # the window is full from the oldest batch not acknowledged
                        self.waited["window"] += time.monotonic() - t0
                    continue
                self._send(batch)
        except BaseException:
            with contextlib.suppress(Exception):  # what was acknowledged is kept; the error is what matters
                self._drain_quietly()
                self.progress.save(self.c)
            raise
        finally:
            self.writer.hint = (self.window.rtt, self.window.cap)
            self._report(final=True)

    def _advance(self) -> None:
        """Move the low-water mark past the tickets done, oldest first; save it when due."""
        while self.open and self.open[0].pending == 0:
            self.progress.passed(self.open.popleft())
        if self.progress.due():
            self.progress.save(self.c)

    def _drain_quietly(self, seconds: float = 2.0) -> None:
        """On the way out: wait a moment for the replies of the requests in flight (nothing more is sent), so
        what DynamoDB acknowledged moves the mark and is not written again by the resume."""
        until = time.monotonic() + seconds
        while True:
            with contextlib.suppress(EtlError):
                self._drain()
            if not self.in_flight or time.monotonic() >= until:
                break
            self._wait(until - time.monotonic())
        while self.open and self.open[0].pending == 0:
            self.progress.passed(self.open.popleft())

    def _check(self) -> None:
        self.ctx.check()
        if self.task.target.deadline is not None and time.time() > self.task.target.deadline:
            raise DeadlineReached("the load deadline passed")

    def _wait(self, seconds: float) -> None:
        with self.cond:
            if not self.replies:
                self.cond.wait(max(0.0, min(seconds, 0.5)))

    def _due_retry(self) -> _Batch | None:
        if self.retries and self.retries[0][0] <= time.monotonic():
            return heapq.heappop(self.retries)[2]
        return None

    def _send(self, batch: _Batch) -> None:
        t0 = time.monotonic()
        while self.in_flight >= self.window.limit:
            self._wait(0.5)
            self._drain()
            self._check()
        t1 = time.monotonic()
        self.window.budget_rate(self.budget.acquire(batch.cost))
        t2 = time.monotonic()
        self.waited["window"] += t1 - t0
        self.waited["budget"] += t2 - t1
        self.in_flight += 1
        self.c.requests += 1
        self.writer.submit(batch.puts, functools.partial(self._answer, batch))
        if t2 - self._report_at > 1.0:
            self._report()

    def _drain(self) -> None:
        """Settle every reply that came back: one call per kind to the budget, whatever the number."""
        with self.cond:
            got, self.replies = list(self.replies), deque()
        if not got:
            return
        estimated = actual = refund = 0.0
        indexed_est = indexed_act = 0.0
        per_index: dict[str, float] = {}
        ok = 0
        throttled = False
        for batch, reply in got:
            self.in_flight -= 1
            ticket = batch.ticket
            if reply.outcome == "ok":
                n = len(batch.puts)
                done = n - len(reply.unprocessed)
                done_cost = batch.cost * done / n
                indexes = sum((reply.per_index or {}).values())
                # a put never costs the table less than our size estimate, so a lower report (an emulator's)
                # never speeds us up; what the indexes cost comes on top
                used = max(reply.consumed if reply.consumed is not None else done_cost, done_cost + indexes)
                if reply.per_index is not None:
                    indexed_est += done_cost
                    indexed_act += used
                    for k, v in reply.per_index.items():
                        per_index[k] = per_index.get(k, 0.0) + v
                        self.c.wcu_indexes[k] = self.c.wcu_indexes.get(k, 0.0) + v
                else:
                    estimated += done_cost
                    actual += used
                refund += batch.cost - done_cost
                self.c.written += done
                self.c.wcu += used
                if ticket is not None:
                    ticket.written += done
                self.ctx.progress(done)
                self.window.answered(reply.rtt, batch.cost)
                if reply.unprocessed:
                    throttled = True  # UnprocessedItems means the table pushed back
                    puts = [orjson.dumps(u) for u in reply.unprocessed]
                    # an over-estimate (the JSON is larger than the item); settled by what is consumed
                    self._retry(_Batch(puts, float(sum(max(1, math.ceil(len(p) / 1024)) for p in puts)),
                                       batch.attempt, ticket=ticket))
                else:
                    ok += 1
                    if ticket is not None:
                        ticket.pending -= 1
            elif reply.outcome in ("throttle", "retry"):
                refund += batch.cost
                if reply.outcome == "throttle":
                    throttled = True
                    self.c.throttles += 1
                self._retry(batch)
            elif reply.code == "ValidationException":
                refund += batch.cost
                self._refused(batch, reply.message)
            else:
                if reply.error is not None:
                    raise reply.error
                raise EtlError(f"DynamoDB refused a batch: {reply.code}: {reply.message}",
                               hint="an access or request error is not retried: fix its cause")
        if estimated or actual:
            self.budget.settle(estimated, actual)
        if indexed_est or indexed_act:
            self.budget.settle(indexed_est, indexed_act, per_index)
        if refund:
            self.budget.refund(refund)
        if throttled:
            self.budget.throttled()
        if ok:
            self.budget.succeeded(ok)

    def _refused(self, batch: _Batch, message: str) -> None:
        """A batch refused as invalid: about the table (fail), or an item in it (split until found)."""
        if any(m in message.lower() for m in KEY_SCHEMA_REFUSALS):
            raise EtlError(f"DynamoDB refused a batch for {self.task.target.table}'s key schema: {message}",
                           hint="the items were checked against the key the table had when the load started: "
                                "was the table created again, or the mapping changed? Check DescribeTable")
        ticket = batch.ticket
        if len(batch.puts) > 1:
            half = len(batch.puts) // 2
            for lo, hi in ((0, half), (half, len(batch.puts))):
                puts = batch.puts[lo:hi]
                self._seq += 1
                part = _Batch(puts, batch.cost * len(puts) / len(batch.puts), batch.attempt,
                              batch.rows[lo:hi], ticket=ticket)
                heapq.heappush(self.retries, (time.monotonic(), self._seq, part))  # at once: no backoff
            if ticket is not None:
                ticket.pending += 1
            return
        self.refused += 1
        record: dict[str, Any] = {"reason": "refused_by_dynamodb", "message": message,
                                  "key": _key_of(batch.puts[0], self.keys)}
        if batch.rows:
            record["row"] = batch.rows[0]
        self.quarantine.append(orjson.dumps(record))
        self.c.quarantined += 1
        self.ctx.progress(1)
        if ticket is not None:
            ticket.refused.append(record)
            ticket.pending -= 1
        if self.refused >= REFUSED_LIMIT and self.c.written == 0:
            raise EtlError(f"DynamoDB refused each of the first {self.refused} items of part {self.task.part} "
                           f"as invalid and wrote none: {message}",
                           hint="that is the table or the mapping, not single items: check both")

    def _retry(self, batch: _Batch) -> None:
        batch.attempt += 1
        self.c.retries += 1
        delay = min(self.max_delay, self.base_delay * 2 ** min(batch.attempt, 16))
        self._seq += 1
        heapq.heappush(self.retries, (time.monotonic() + random.uniform(0, delay), self._seq, batch))  # full jitter

    def _report(self, final: bool = False) -> None:
        """Progress: the table's WCU/s attained (summed over the month's parts: each part adds the change of
        its own), against the budget, and what holds it back: the budget itself, throttling or the on-demand
        ramp, the in-flight ceiling, or the client."""
        now = time.monotonic()
        elapsed = max(now - self._report_at, 1e-9)
        t0, w0 = self._wcu_mark
        table_wcu = self.c.wcu - sum(self.c.wcu_indexes.values())  # the budget's rate is in the table's units
        rate = 0.0 if final else (table_wcu - w0) / max(now - t0, 1e-9)
        self._wcu_mark = (now, table_wcu)
        budget_share, window_share = self.waited["budget"] / elapsed, self.waited["window"] / elapsed
        self.waited = {"budget": 0.0, "window": 0.0}
        self._report_at = now
        w = self.window
        if budget_share > 0.2:
            full = not self.task.target.budget_wcu or w.rate >= 0.95 * self.task.target.budget_wcu
            reason = "budget" if full else "budget, throttled or ramping up (on-demand)"
        elif window_share > 0.2:
            if w.limit >= w.ceiling:
                reason = "in-flight ceiling ([load] max_in_flight)"
            elif w.fixed:
                reason = "in-flight window ([load] concurrency)"
            elif w.limit >= w.cap:
                reason = "server round trips growing with more in flight (the server queues)"
            else:
                reason = "round trips"
        else:
            reason = "client CPU"
        fields: dict[str, Any] = {} if final else {
            "budget_wcu_per_s": self.task.target.budget_wcu, "in_flight": w.limit, "rtt_ms": round(w.rtt * 1000, 1),
            "limited_by": reason}
        self.ctx.progress(0, add={"wcu_per_s": rate - self._reported_rate}, **fields)
        self._reported_rate = rate


def run_task(cfg: Config, task: LoadPartTask, ctx: TaskContext) -> dict[str, Any]:
    """Load one Parquet part, from its saved low-water mark when an earlier run left one; its checkpoint is
    written once every item is acknowledged (or quarantined)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    prior = None if task.target.dry_run else _resume_point(store, task)
    if prior is not None:  # the rows below the mark were judged expired or not at the earlier run's time
        task = dataclasses.replace(task, target=dataclasses.replace(task.target, now=int(prior["now"])))
        ctx.progress(int(prior["low_water_mark"]))
    progress = _Progress(store, task, cfg.load.checkpoint_seconds, prior)
    c = Counters()
    quarantine: list[bytes] = [orjson.dumps(r) for r in progress.refused]  # refused below the mark
    source = _read(cfg, store, task, ctx, c, quarantine, progress.start)
    if task.target.dry_run:
        for _ in source:
            pass
    else:
        _Loader(cfg, task, ctx, c, progress, quarantine).run(source)
    ctx.check()  # another task failed: this one is unfinished, so no checkpoint
    if quarantine and not task.target.dry_run:
        store.write(task.rejected,
                    gzip.compress(b"\n".join(quarantine) + b"\n"))
    base = progress.base
    runs = progress.runs_with(c)
    quarantined_by: dict[str, int] = {}
    for line in quarantine:
        reason = str(orjson.loads(line)["reason"])
        quarantined_by[reason] = quarantined_by.get(reason, 0) + 1
    result = {"part": task.part, "rows": task.rows, "written": base["written"] + c.written,
              "deletes": base["deletes"] + c.deletes, "skipped_expired": base["skipped_expired"] + c.skipped_expired,
              "deduplicated": base["deduplicated"] + c.deduplicated, "quarantined": base["quarantined"] + c.quarantined,
              "wcu": round(sum(r["wcu"] for r in runs), 1), "wcu_this_run": round(c.wcu, 1),
              "requests": sum(r["requests"] for r in runs), "retries": sum(r["retries"] for r in runs),
              "throttles": sum(r["throttles"] for r in runs), "at": times.iso_seconds(),
              "transform_run": task.transform_run, "table": task.target.table, "table_arn": task.target.destination[0],
              "table_created": task.target.destination[1], "resumed_at_row": progress.start,
              "quarantined_by": quarantined_by,
              "wcu_indexes": {k: round(v, 1) for k, v in c.wcu_indexes.items()}, "runs": runs}
    if task.target.dry_run:
        result["wcu_estimated"] = {k or "table": v for k, v in c.wcu_by.items()}
    if sum(result[k] for k in RECONCILED) != task.rows or len(quarantine) != result["quarantined"]:
        raise EtlError(f"load {task.month} part {task.part}: counts do not reconcile ({result})")
    if not task.target.dry_run:
        store.write_json(task.checkpoint, result)
        store.delete(task.progress)
    return result
