"""Stage 3: Parquet parts -> BatchWriteItem into the live destination, within a write budget, checkpointed.

preflight: the destination checked (region, name, key), the budget, the plan said, the confirmation asked:
           all before anything is written or forgotten.
plan:      one task per Parquet part of the month without a checkpoint of the month's current transform.
run_task:  reads its part by record batch, drops the collision losers the transform listed and the
           already-expired rows (counted), quarantines items over 400 KB, and sends batches of <= 25
           distinct keys through the table's shared budget. UnprocessedItems, throttling, 5xx and dropped
           connections are retried with exponential backoff and jitter until acknowledged; then the part's
           checkpoint `_state/month=M/load/part-NNNNN.done` is written.
commit:    sums the checkpoints, so counts reconcile across resumed runs:
           written + skipped_expired + deduplicated + quarantined = rows in the Parquet.
"""

from __future__ import annotations

import functools
import gzip
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import aws, capacity, items, mapping, staging
from etl.config import AwsSide, Config
from etl.engine import Budget, MonthPlan, TaskContext
from etl.errors import DeadlineReached, EtlError, StageNotReady, Stopped
from etl.progress import Reporter
from etl.writer import BatchWriter, Reply

NAME = "load"


# --------------------------------------------------------------------------- preflight


def check_destination(cfg: Config, ddb: Any) -> dict[str, Any]:
    """The destination's description, once it is the table the config names, in its region, with its key."""
    table = cfg.destination_table()
    try:
        d = dict(ddb.describe_table(TableName=table)["Table"])
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            raise EtlError(f"destination table {table} not found in {cfg.destination.aws_region}",
                           hint="check [destination] table_template and aws_region") from None
        raise
    arn_region = d.get("TableArn", "").split(":")[3] if d.get("TableArn", "").count(":") >= 5 else ""
    emulated = arn_region == "ddblocal" and aws.is_loopback(cfg.destination.endpoint_url)  # DynamoDB Local
    if arn_region and arn_region != cfg.destination.aws_region and not emulated:
        raise EtlError(f"destination {table} answered from region {arn_region}, but the config says "
                       f"{cfg.destination.aws_region}; refusing to write")
    if d.get("TableName") != table:
        raise EtlError(f"destination answered for table {d.get('TableName')}, not {table}; refusing to write")
    keys = {k["KeyType"]: k["AttributeName"] for k in d["KeySchema"]}
    types = {a["AttributeName"]: a["AttributeType"] for a in d["AttributeDefinitions"]}
    want = dict(zip(("HASH", "RANGE"), mapping.key_columns(cfg), strict=False))
    if keys != want:
        raise EtlError(f"destination {table} has key {keys}, but the config expects {want}; refusing to write",
                       hint="fix [destination] partition_key / sort_key, or point at the right table")
    schema = {f.name: ("S" if f.type == pa.string() else "N") for f in mapping.output_schema(cfg)}
    for k in want.values():
        if types.get(k) != schema.get(k):
            raise EtlError(f"destination key {k} is type {types.get(k)}, the transform writes {schema.get(k)}")
    return d


def write_budget(cfg: Config, desc: dict[str, Any], ddb: Any) -> capacity.Budget:
    ld = cfg.load
    return capacity.budget_for(desc, unit="WCU", fraction=ld.write_capacity_fraction, absolute=ld.max_wcu,
                               fraction_key="[load] write_capacity_fraction", absolute_key="[load] max_wcu",
                               describe=lambda: ddb.describe_table(TableName=desc["TableName"])["Table"])


def _checkpoint(store: staging.Store, month: str, part: int, transform_run: str) -> dict[str, Any] | None:
    """A part's checkpoint, if it exists and belongs to the month's current transform."""
    key = staging.checkpoint_key(month, part)
    if not store.exists(key):
        return None
    cp = dict(store.read_json(key))
    return cp if cp.get("transform_run") == transform_run else None


@dataclass
class Setup:
    """What every month of one load run shares: the destination, its budget, the cut-off for expired rows."""

    table: str
    region: str
    account: str
    budget: capacity.Budget
    now: int
    include_expired: bool
    dry_run: bool
    deadline: float | None  # wall-clock time.time()
    started: float = field(default_factory=time.time)
    _stop_watch: threading.Event = field(default_factory=threading.Event)

    def describe(self, rows: int, parts: int, done: int, months: list[str], waiting: list[str]) -> str:
        rate = self.budget.bucket.target
        eta = rows / rate if rate else float("inf")
        later = f"; after their transform: {', '.join(waiting)}" if waiting else ""
        return (f"destination {self.table} in {self.region}, account {self.account}\n"
                f"months {', '.join(months)}: {rows:,} rows in {parts} part(s) to load "
                f"({done} part(s) already done){later}\n"
                f"budget {self.budget.describe}; about {eta / 60:.1f} min at 1 WCU per item")

    def watch(self) -> None:
        """Re-read a fraction budget's provisioned capacity while the load runs."""
        def loop() -> None:
            while not self._stop_watch.wait(1.0):
                self.budget.maybe_refresh()
        threading.Thread(target=loop, daemon=True, name="budget-refresh").start()

    def close(self) -> None:
        self._stop_watch.set()


def _todo(cfg: Config, store: staging.Store, month: str) -> tuple[list[dict[str, Any]], int, str] | None:
    """The month's parts without a current checkpoint, the parts done, the transform's run id (None: no
    committed transform)."""
    t = staging.read_manifest(store, month, "transform")
    if t is None:
        return None
    run = str(t.get("run_id", ""))
    todo = [p for p in t["parts"] if _checkpoint(store, month, p["part"], run) is None]
    return todo, len(t["parts"]) - len(todo), run


def preflight(cfg: Config, store: staging.Store, months: list[str], *, include_expired: bool | None = None,
              now: int | None = None, dry_run: bool = False, yes: bool = False, force: bool = False,
              confirm: Callable[[str], bool] | None = None, reporter: Reporter) -> Setup:
    """Check the destination and the budget, say the plan, and ask before writing to a production table."""
    ddb = aws.client(cfg.destination, "dynamodb")
    desc = check_destination(cfg, ddb)
    setup = Setup(desc["TableName"], cfg.destination.aws_region, aws.account_of(cfg.destination),
                  write_budget(cfg, desc, ddb), int(now if now is not None else time.time()),
                  cfg.load.include_expired if include_expired is None else include_expired, dry_run,
                  time.time() + cfg.load.deadline_seconds if cfg.load.deadline_seconds else None)
    rows = parts = done = 0
    waiting = []
    for m in months:
        todo = _todo(cfg, store, m)
        if todo is None:
            waiting.append(m)
            continue
        left, finished, _ = todo
        if force:
            left, finished = left + [None] * finished, 0  # type: ignore[list-item]
        parts += len(left)
        done += finished
        t = staging.read_manifest(store, m, "transform") or {}
        rows += sum(p["rows"] for p in t.get("parts", [])) if force else sum(p["rows"] for p in left if p)
    reporter.info(setup.describe(rows, parts, done, months, waiting))
    asking = not dry_run and (parts or waiting) and cfg.destination.production and not yes
    if asking:
        what = f"{rows:,} rows" + (f" (and months {', '.join(waiting)} once transformed)" if waiting else "")
        if confirm is None or not confirm(f"write {what} to {setup.table}?"):
            raise EtlError("not confirmed: nothing was written", hint="pass --yes to write without asking")
    return setup


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PartTask:
    month: str
    part: int
    key: str
    rows: int
    transform_run: str
    table: str
    now: int  # rows whose TTL is at or before this are expired
    include_expired: bool
    dry_run: bool
    deadline: float | None
    checkpoint: str = ""  # a catch-up window's part: its checkpoint key (no collision losers apply)
    rejected: str = ""  # and its quarantine key


OP = "op"  # a catch-up part's operation column: put or delete (etl.catchup)


def reset_checkpoints(cfg: Config, months: list[str]) -> int:
    """Forget the part checkpoints (and the load/verify manifests) of months, so they load again."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    n = 0
    for m in months:
        n += store.delete_prefix(staging.checkpoints_prefix(m))
        for stage in ("load", "verify"):
            store.delete(staging.manifest_key(m, stage))
    return n


def plan(cfg: Config, store: staging.Store, month: str, setup: Setup, force: bool = False) -> MonthPlan:
    if force and not setup.dry_run:  # after the confirmation: every part is written again
        reset_checkpoints(cfg, [month])
    todo = _todo(cfg, store, month)
    if todo is None:
        raise StageNotReady(f"no committed transform for month {month}",
                            hint=f"run `etl transform --month {month}` first")
    left, _, run = todo
    tasks = [PartTask(month, p["part"], p["output"], p["rows"], run, setup.table, setup.now,
                      setup.include_expired, setup.dry_run, setup.deadline) for p in left]
    return MonthPlan(tasks, sum(p.rows for p in tasks), "items")


# --------------------------------------------------------------------------- run


@dataclass
class Counters:
    written: int = 0
    skipped_expired: int = 0
    deduplicated: int = 0
    quarantined: int = 0
    wcu: float = 0.0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class Sender:
    """Sends one batch until every item is acknowledged (or the deadline / a fatal error / a stop)."""

    def __init__(self, writer: BatchWriter, budget: Budget, ctx: TaskContext, deadline: float | None,
                 base_delay: float = 0.05, max_delay: float = 20.0) -> None:
        self.writer = writer
        self.budget = budget
        self.ctx = ctx
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay

    def send(self, puts: list[bytes], sizes: list[int], counters: Counters) -> None:
        budget = self.budget
        attempt = 0
        pending, pending_sizes = puts, sizes
        while pending:
            self.ctx.check()
            if self.deadline is not None and time.time() > self.deadline:
                raise DeadlineReached("the load deadline passed")
            cost = float(sum(max(1, math.ceil(s / 1024)) for s in pending_sizes))
            budget.acquire(cost)
            reply: Reply = self.writer.write(pending)
            counters.add(requests=1)
            if reply.outcome == "ok":
                done = len(pending) - len(reply.unprocessed)
                # a put never costs less than our size estimate (indexes only add), so a lower report
                # (an emulator's) never speeds us up; a higher one (GSIs) slows us down
                floor = cost * done / len(pending)
                actual = max(reply.consumed if reply.consumed is not None else cost, floor)
                budget.settle(cost, actual)
                counters.add(written=done, wcu=actual)
                if not reply.unprocessed:
                    budget.succeeded()
                    return
                budget.throttled()  # UnprocessedItems means the table pushed back
                pending = [orjson.dumps(u) for u in reply.unprocessed]
                pending_sizes = [len(p) for p in pending]  # an over-estimate; settled by what is consumed
            elif reply.outcome in ("throttle", "retry"):
                budget.refund(cost)
                if reply.outcome == "throttle":
                    budget.throttled()
                    counters.add(throttles=1)
            else:
                raise EtlError(f"DynamoDB refused a batch: {reply.code}: {reply.message}",
                               hint="a validation error is not retried; fix the data or the mapping")
            attempt += 1
            counters.add(retries=1)
            delay = min(self.max_delay, self.base_delay * 2 ** min(attempt, 16))
            time.sleep(random.uniform(0, delay))  # full jitter


@functools.lru_cache(maxsize=8)
def _writer(side: AwsSide, table: str) -> BatchWriter:
    """One connection pool per destination in a process, shared by its tasks (like a client)."""
    return BatchWriter(side, table)


class _Batches:
    """Accumulates puts into batches of <= 25 items with distinct keys, under the request size limit, and hands
    each full batch to `send`."""

    def __init__(self, send: Callable[[list[bytes], list[int]], None]) -> None:
        self.send = send
        self.puts: list[bytes] = []
        self.sizes: list[int] = []
        self.keys: set[tuple[Any, ...]] = set()
        self.bytes = 0

    def add(self, put: bytes, size: int, key: tuple[Any, ...]) -> None:
        full = len(self.puts) == items.MAX_BATCH or self.bytes + len(put) > items.MAX_REQUEST_BYTES - 4096
        if key in self.keys or full:
            self.flush()
        self.puts.append(put)
        self.sizes.append(size)
        self.keys.add(key)
        self.bytes += len(put)

    def flush(self) -> None:
        if self.puts:
            self.send(self.puts, self.sizes)
        self.puts, self.sizes, self.keys, self.bytes = [], [], set(), 0


def _kept(rb: pa.RecordBatch, row0: int, losers: np.ndarray | None, ttl_col: str | None,
          task: PartTask, deletes: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Which rows of a record batch to write, and how many were collision losers and expired (puts only)."""
    n = rb.num_rows
    keep = np.ones(n, dtype=bool)
    if losers is not None:
        keep &= ~np.isin(np.arange(row0, row0 + n), losers)
    dedup = int((~keep).sum())
    expired = 0
    if ttl_col and not task.include_expired:
        ttl = np.asarray(pc.fill_null(rb.column(ttl_col), np.iinfo(np.int64).max).to_numpy(zero_copy_only=False))
        exp_mask = keep & (ttl <= task.now) & ~deletes
        expired = int(exp_mask.sum())
        keep &= ~exp_mask
    return keep, dedup, expired


def run_task(cfg: Config, task: PartTask, ctx: TaskContext) -> dict[str, Any]:
    """Load one Parquet part; its checkpoint is written once every item is acknowledged."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    c = Counters()
    ttl_col = mapping.ttl_column(cfg)
    keys = mapping.key_columns(cfg)
    quarantine: list[bytes] = []
    futures: list[Future[None]] = []
    losers = None if task.checkpoint else staging.read_losers(store, task.month).get(task.part)
    deleted = 0
    assert ctx.budget is not None and ctx.io is not None
    sender = Sender(_writer(cfg.destination, task.table), ctx.budget, ctx, task.deadline,
                    max_delay=cfg.load.max_backoff_seconds)
    inflight = threading.Semaphore(cfg.load.concurrency * 2)
    pf = pq.ParquetFile(pa.BufferReader(store.read(task.key)))

    def settled(fut: Future[None]) -> None:
        inflight.release()
        if fut.exception() is not None:
            ctx.stop.set()  # one batch failed for good: stop sending the rest, keep the checkpoints

    def send(puts: list[bytes], sizes: list[int]) -> None:
        if task.dry_run:
            c.add(written=len(puts))
        else:
            ctx.check()
            inflight.acquire()
            fut = ctx.io.submit(sender.send, puts, sizes, c)  # type: ignore[union-attr]
            fut.add_done_callback(settled)
            futures.append(fut)
        ctx.progress(len(puts))

    batches = _Batches(send)
    row0 = 0
    try:
        for rb in pf.iter_batches(batch_size=10_000):
            is_del = np.zeros(rb.num_rows, dtype=bool)
            if OP in rb.schema.names:  # a catch-up part: puts and deletes, in one batch stream
                is_del = np.asarray(pc.fill_null(pc.equal(rb.column(OP), "delete"), False)
                                    .to_numpy(zero_copy_only=False), dtype=bool)
                rb = rb.drop_columns([OP])
            keep, dedup, expired = _kept(rb, row0, losers, ttl_col, task, is_del)
            row0 += rb.num_rows
            c.add(deduplicated=dedup, skipped_expired=expired)
            ctx.progress(dedup + expired)
            sel = rb.filter(pa.array(keep))
            if sel.num_rows == 0:
                continue
            sizes = items.item_sizes(sel)
            puts = items.to_puts(sel)
            dels = np.flatnonzero(is_del[keep])
            if len(dels):  # a delete costs 1 WCU per KB of the item it removes: estimated 1, settled by the reply
                for i, frag in zip(dels.tolist(), items.to_deletes(sel.take(pa.array(dels)), keys), strict=True):
                    puts[i], sizes[i] = frag, 1
                deleted += len(dels)
            key_values = list(zip(*(sel.column(k).to_pylist() for k in keys), strict=True))
            for i, put in enumerate(puts):
                size = int(sizes[i])
                if size > items.MAX_ITEM_BYTES:
                    quarantine.append(orjson.dumps({"reason": "item_too_large", "message": f"{size} bytes > 400 KB",
                                                    "key": dict(zip(keys, key_values[i], strict=True))}))
                    c.add(quarantined=1)
                    ctx.progress(1)
                    continue
                batches.add(put, size, key_values[i])
        batches.flush()
    except Stopped:
        pass  # a batch failed: its own error is raised below
    wait(futures)
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    failed = next((e for e in errors if not isinstance(e, Stopped)), errors[0] if errors else None)
    if failed is not None:
        raise failed
    ctx.check()  # another task failed: this one is unfinished, so no checkpoint
    if quarantine and not task.dry_run:
        store.write(task.rejected or staging.load_rejected_key(task.month, task.part),
                    gzip.compress(b"\n".join(quarantine) + b"\n"))
    result = {"part": task.part, "rows": task.rows, "written": c.written, "deletes": deleted,
              "skipped_expired": c.skipped_expired,
              "deduplicated": c.deduplicated, "quarantined": c.quarantined, "wcu": round(c.wcu, 1),
              "requests": c.requests, "retries": c.retries, "throttles": c.throttles, "at": staging.utcnow_iso(),
              "transform_run": task.transform_run}
    if c.written + c.skipped_expired + c.deduplicated + c.quarantined != task.rows:
        raise EtlError(f"load {task.month} part {task.part}: counts do not reconcile ({result})")
    if not task.dry_run:
        store.write_json(task.checkpoint or staging.checkpoint_key(task.month, task.part), result)
    return result


# --------------------------------------------------------------------------- commit


COUNTS = ("written", "skipped_expired", "deduplicated", "quarantined", "rows", "requests", "retries", "throttles")


def commit(cfg: Config, store: staging.Store, month: str, tasks: list[PartTask], results: list[dict[str, Any]],
           started: float, setup: Setup) -> dict[str, Any]:
    t = staging.read_manifest(store, month, "transform") or {}
    if setup.dry_run:
        sums = {k: sum(r[k] for r in results) for k in COUNTS}
        return {"month": month, "dry_run": True, **sums}
    cps = [_checkpoint(store, month, p["part"], str(t.get("run_id", ""))) for p in t.get("parts", [])]
    if any(cp is None for cp in cps):
        raise EtlError(f"load {month}: a part has no checkpoint of the current transform after the run")
    sums = {k: sum(cp[k] for cp in cps if cp) for k in COUNTS}
    wcu = round(sum(cp["wcu"] for cp in cps if cp), 1)
    if sums["written"] + sums["skipped_expired"] + sums["deduplicated"] + sums["quarantined"] != t["written"]:
        raise EtlError(f"load {month}: counts do not reconcile with the Parquet rows: {sums} vs {t['written']}")
    duration = round(time.time() - started, 3)
    this_run = round(sum(r["wcu"] for r in results), 1)
    return staging.commit_manifest(store, month, "load", {
        **sums, "wcu_consumed": wcu, "duration_s": duration,
        "average_wcu_per_s": round(this_run / max(duration, 1e-9), 1),
        "budget": setup.budget.describe, "table": setup.table, "region": setup.region,
        "include_expired": setup.include_expired, "expired_before": setup.now,
        "reconciles": "written + skipped_expired + deduplicated + quarantined = rows in the Parquet",
        "upstream_run": t.get("run_id"), "transform_run": t.get("run_id"),
        "config_hash": cfg.hash_of("load", "destination"),
    })
