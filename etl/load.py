"""Stage 3: Parquet parts -> BatchWriteItem into the live destination, within a write budget, checkpointed.

Plan: one task per Parquet part of every month. A task reads its part by record batch, drops the
collision losers the transform listed and the already-expired rows (counted), quarantines items over
400 KB, and sends batches of <= 25 distinct keys through the shared token bucket. UnprocessedItems,
throttling, 5xx and dropped connections are retried with exponential backoff and jitter until
acknowledged. Once every item of a part is acknowledged its checkpoint
`_state/month=M/load/part-NNNNN.done` is written; a rerun skips those parts. The manifest sums the
checkpoints, so counts reconcile across resumed runs:
    written + skipped_expired + deduplicated + quarantined = rows in the Parquet.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError, StageNotReady
from etl.progress import QUIET, Reporter, Task
from etl.ratelimit import TokenBucket
from etl.transform import COLLISIONS, output_schema
from etl.writer import BatchWriter, Reply

MAX_ITEM_BYTES = 400 * 1024
MAX_BATCH = 25
MAX_REQUEST_BYTES = 16 * 1024 * 1024
REREAD_CAPACITY_S = 300.0


class DeadlineReached(EtlError):
    """The load's deadline passed; finished parts are checkpointed."""


# --------------------------------------------------------------------------- items


def item_sizes(batch: pa.RecordBatch) -> np.ndarray:
    """DynamoDB item size in bytes: attribute names plus values (strings in UTF-8; numbers about one
    byte per two significant digits plus one)."""
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False))
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            vals = np.asarray(pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False))
        else:
            digits = pc.utf8_length(pc.cast(pc.abs(col), pa.string()))
            vals = np.asarray(pc.fill_null(digits, 0).to_numpy(zero_copy_only=False)) // 2 + 2
        sizes += np.where(valid, vals + len(name.encode()), 0)
    return sizes


_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def to_puts(batch: pa.RecordBatch) -> list[bytes]:
    """Rows -> pre-serialised `{"PutRequest":{"Item":{...}}}` JSON fragments (nulls left out).

    Built for whole columns with Arrow string kernels; rows with a null or a string that JSON must
    escape take orjson, one by one (same output)."""
    n = batch.num_rows
    if n == 0:
        return []
    slow = np.zeros(n, dtype=bool)
    pieces: list[Any] = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        key = orjson.dumps(name).decode()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            slow |= np.asarray(pc.fill_null(pc.match_substring_regex(col, _NEEDS_ESCAPE), True)
                               .to_numpy(zero_copy_only=False), dtype=bool)
            pieces += [f'{key}:{{"S":"', col, '"}']
        else:
            slow |= np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
            pieces += [f'{key}:{{"N":"', pc.cast(col, pa.string()), '"}']
        pieces.append(",")
    pieces[-1] = "}}}"
    joined = pc.binary_join_element_wise('{"PutRequest":{"Item":{', *pieces, "")
    data = joined.buffers()[2].to_pybytes() if joined.buffers()[2] is not None else b""
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + n + 1]
    out = [data[offsets[i] : offsets[i + 1]] for i in range(n)]
    if slow.any():
        for i in np.flatnonzero(slow):
            item = {}
            for name, col in zip(batch.schema.names, batch.columns, strict=True):
                v = col[i].as_py()
                if v is not None:
                    item[name] = {"S": v} if isinstance(v, str) else {"N": str(v)}
            out[i] = orjson.dumps({"PutRequest": {"Item": item}})
    return out


# --------------------------------------------------------------------------- budget


@dataclass
class Budget:
    bucket: TokenBucket
    describe: str
    on_demand: bool
    refresh: Callable[[], float] | None = None
    _last: float = field(default_factory=time.monotonic)

    def maybe_refresh(self) -> None:
        if self.refresh and time.monotonic() - self._last > REREAD_CAPACITY_S:
            self._last = time.monotonic()
            with contextlib.suppress(Exception):  # keep the old rate if DescribeTable fails
                self.bucket.set_target(self.refresh())


def write_budget(cfg: Config, table_desc: dict[str, Any], ddb: Any) -> Budget:
    ld = cfg.load
    on_demand = table_desc.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    table = table_desc["TableName"]
    if ld.max_wcu:
        return Budget(TokenBucket(ld.max_wcu), f"{ld.max_wcu:g} WCU/s (max_wcu)", on_demand)
    if ld.write_capacity_fraction is None:
        raise EtlError(
            "no write budget configured",
            hint="set [load] write_capacity_fraction (0 < f <= 1 of provisioned WCU) or max_wcu (absolute WCU/s)",
        )
    if on_demand:
        raise EtlError(
            f"{table} is on-demand: a fraction of its write capacity means nothing (it has no provisioned WCU)",
            hint="set [load] max_wcu to an absolute WCU/s for an on-demand table",
        )
    f = ld.write_capacity_fraction

    def provisioned() -> float:
        d = ddb.describe_table(TableName=table)["Table"]
        return float(d["ProvisionedThroughput"]["WriteCapacityUnits"]) * f

    wcu = float(table_desc["ProvisionedThroughput"]["WriteCapacityUnits"])
    return Budget(TokenBucket(wcu * f), f"{f:.0%} of {wcu:g} provisioned WCU = {wcu * f:g} WCU/s", False,
                  provisioned)


# --------------------------------------------------------------------------- plan


@dataclass
class Part:
    month: str
    part: int
    key: str
    rows: int
    transform_run: str


@dataclass
class Plan:
    table: str
    region: str
    account: str
    months: list[str]
    parts: list[Part]
    done_parts: int
    items: int
    budget: Budget
    key_schema: str
    now: int

    def describe(self) -> str:
        todo = sum(p.rows for p in self.parts)
        rate = self.budget.bucket.target
        eta = todo / rate if rate else float("inf")
        return (f"destination {self.table} in {self.region}, account {self.account}\n"
                f"months {', '.join(self.months)}: {todo:,} rows in {len(self.parts)} part(s) to load "
                f"({self.done_parts} part(s) already done)\n"
                f"budget {self.budget.describe}; about {eta / 60:.1f} min at 1 WCU per item")


def _check_destination(cfg: Config, ddb: Any) -> dict[str, Any]:
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
    want = {"HASH": cfg.destination.partition_key, "RANGE": cfg.destination.sort_key}
    if keys != want:
        raise EtlError(f"destination {table} has key {keys}, but the config expects {want}; refusing to write",
                       hint="fix [destination] partition_key / sort_key, or point at the right table")
    schema = {f.name: ("S" if f.type == pa.string() else "N") for f in output_schema(cfg)}
    for k in want.values():
        if types.get(k) != schema.get(k):
            raise EtlError(f"destination key {k} is type {types.get(k)}, the transform writes {schema.get(k)}")
    return d


def _checkpoint(store: staging.Store, month: str, part: int, transform_run: str) -> dict[str, Any] | None:
    """A part's checkpoint, if it exists and belongs to the month's current transform."""
    key = staging.checkpoint_key(month, part)
    if not store.exists(key):
        return None
    cp = dict(store.read_json(key))
    return cp if cp.get("transform_run") == transform_run else None


def plan_load(cfg: Config, store: staging.Store, months: list[str], now: int | None = None) -> Plan:
    ddb = aws.client(cfg.destination, "dynamodb")
    desc = _check_destination(cfg, ddb)
    budget = write_budget(cfg, desc, ddb)
    parts: list[Part] = []
    done = 0
    missing = []
    items = 0
    for month in months:
        t = staging.read_manifest(store, month, "transform")
        if t is None:
            missing.append(month)
            continue
        run = str(t.get("run_id", ""))
        for p in t["parts"]:
            items += p["rows"]
            if _checkpoint(store, month, p["part"], run) is not None:
                done += 1
            else:  # not loaded, or loaded from an older transform of the month: (re)load it
                parts.append(Part(month, p["part"], p["output"], p["rows"], run))
    if missing:
        raise StageNotReady(f"no committed transform for month(s) {', '.join(missing)}",
                            hint=f"run `etl transform --month {missing[0]}` first")
    return Plan(desc["TableName"], cfg.destination.aws_region, aws.account_of(cfg.destination), months, parts,
                done, items, budget, str(desc["KeySchema"]), int(now if now is not None else time.time()))


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
    """Sends one batch until every item is acknowledged (or the deadline / a fatal error)."""

    def __init__(self, writer: BatchWriter, budget: Budget, deadline: float | None, base_delay: float = 0.05,
                 max_delay: float = 20.0) -> None:
        self.writer = writer
        self.budget = budget
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.stop = threading.Event()

    def send(self, puts: list[bytes], sizes: list[int], counters: Counters) -> None:
        bucket = self.budget.bucket
        attempt = 0
        pending = puts
        pending_sizes = sizes
        while pending:
            if self.stop.is_set():
                raise EtlError("load stopped")
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise DeadlineReached("the load deadline passed")
            cost = float(sum(max(1, math.ceil(s / 1024)) for s in pending_sizes))
            bucket.acquire(cost)
            reply: Reply = self.writer.write(pending)
            counters.add(requests=1)
            if reply.outcome == "ok":
                done = len(pending) - len(reply.unprocessed)
                # a put never costs less than our size estimate (indexes only add), so a lower report
                # (an emulator's) never speeds us up; a higher one (GSIs) slows us down
                floor = cost * done / len(pending)
                actual = max(reply.consumed if reply.consumed is not None else cost, floor)
                bucket.settle(cost, actual)
                counters.add(written=done, wcu=actual)
                if not reply.unprocessed:
                    bucket.succeeded()
                    return
                bucket.throttled()  # UnprocessedItems means the table pushed back
                pending = [orjson.dumps(u) for u in reply.unprocessed]
                pending_sizes = [len(p) for p in pending]  # an over-estimate; settled by what is consumed
            elif reply.outcome in ("throttle", "retry"):
                bucket.refund(cost)
                if reply.outcome == "throttle":
                    bucket.throttled()
                    counters.add(throttles=1)
            else:
                raise EtlError(f"DynamoDB refused a batch: {reply.code}: {reply.message}",
                               hint="a validation error is not retried; fix the data or the mapping")
            attempt += 1
            counters.add(retries=1)
            delay = min(self.max_delay, self.base_delay * 2 ** min(attempt, 16))
            time.sleep(random.uniform(0, delay))  # full jitter


def _losers(store: staging.Store, month: str) -> dict[int, set[int]]:
    key = staging.state_key(month, COLLISIONS)
    if not store.exists(key):
        return {}
    with store.open_read(key) as f:
        t = pq.read_table(pa.BufferReader(f.read()), columns=["_part", "_row"])
    out: dict[int, set[int]] = {}
    for p, r in zip(t["_part"].to_pylist(), t["_row"].to_pylist(), strict=True):
        out.setdefault(p, set()).add(r)
    return out


def load_part(cfg: Config, store: staging.Store, part: Part, sender: Sender, pool: ThreadPoolExecutor,
              losers: set[int], now: int, include_expired: bool, task: Task, dry_run: bool,
              inflight: threading.Semaphore) -> dict[str, Any]:
    c = Counters()
    ttl_col = next((col.name for col in cfg.transform.columns if col.converter == "ttl"), None)
    pk, sk = cfg.destination.partition_key, cfg.destination.sort_key
    quarantine: list[bytes] = []
    futures: list[Future[None]] = []
    with store.open_read(part.key) as f:
        pf = pq.ParquetFile(pa.BufferReader(f.read()))
    row0 = 0
    batch_puts: list[bytes] = []
    batch_sizes: list[int] = []
    batch_keys: set[tuple[Any, Any]] = set()
    batch_bytes = 0
    loser_rows = np.fromiter(losers, dtype=np.int64) if losers else None

    def settled(fut: Future[None]) -> None:
        inflight.release()
        if fut.exception() is not None:
            sender.stop.set()  # one batch failed for good: stop sending the rest, keep the checkpoints

    def flush() -> None:
        nonlocal batch_puts, batch_sizes, batch_keys, batch_bytes
        if batch_puts:
            if dry_run:
                c.add(written=len(batch_puts))
            else:
                if sender.stop.is_set():
                    raise EtlError("load stopped")
                inflight.acquire()
                fut = pool.submit(sender.send, batch_puts, batch_sizes, c)
                fut.add_done_callback(settled)
                futures.append(fut)
            task.advance(len(batch_puts))
        batch_puts, batch_sizes, batch_keys, batch_bytes = [], [], set(), 0

    try:
        for rb in pf.iter_batches(batch_size=10_000):
            n = rb.num_rows
            keep = np.ones(n, dtype=bool)
            if loser_rows is not None:
                keep &= ~np.isin(np.arange(row0, row0 + n), loser_rows)
            dedup = int((~keep).sum())
            expired = 0
            if ttl_col and not include_expired:
                never = np.iinfo(np.int64).max
                ttl = np.asarray(pc.fill_null(rb.column(ttl_col), never).to_numpy(zero_copy_only=False))
                exp_mask = keep & (ttl <= now)
                expired = int(exp_mask.sum())
                keep &= ~exp_mask
            row0 += n
            c.add(deduplicated=dedup, skipped_expired=expired)
            task.advance(dedup + expired)
            sel = rb.filter(pa.array(keep))
            if sel.num_rows == 0:
                continue
            sizes = item_sizes(sel)
            puts = to_puts(sel)
            pks = sel.column(pk).to_pylist()
            sks = sel.column(sk).to_pylist()
            for i, put in enumerate(puts):
                size = int(sizes[i])
                if size > MAX_ITEM_BYTES:
                    quarantine.append(orjson.dumps({"reason": "item_too_large", "message": f"{size} bytes > 400 KB",
                                                    "key": {pk: pks[i], sk: sks[i]}}))
                    c.add(quarantined=1)
                    task.advance(1)
                    continue
                key = (pks[i], sks[i])
                full = len(batch_puts) == MAX_BATCH or batch_bytes + len(put) > MAX_REQUEST_BYTES - 4096
                if key in batch_keys or full:
                    flush()
                batch_puts.append(put)
                batch_sizes.append(size)
                batch_keys.add(key)
                batch_bytes += len(put)
        flush()
        stopped_early = False
    except EtlError:
        if not sender.stop.is_set():
            raise
        stopped_early = True
    wait(futures)
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    # the batch's own error, not the "stopped" of the batches that only heard about it
    failed = next((e for e in errors if not _stopped(e)), errors[0] if errors else None)
    if failed is not None:
        raise failed
    if stopped_early:  # another part failed: this one is unfinished, so no checkpoint
        raise EtlError("load stopped")
    if quarantine and not dry_run:
        store.write(f"rejected/{staging.month_dir(part.month)}/load-part-{part.part:05d}.jsonl.gz",
                    gzip.compress(b"\n".join(quarantine) + b"\n"))
    result = {"part": part.part, "rows": part.rows, "written": c.written, "skipped_expired": c.skipped_expired,
              "deduplicated": c.deduplicated, "quarantined": c.quarantined, "wcu": round(c.wcu, 1),
              "requests": c.requests, "retries": c.retries, "throttles": c.throttles, "at": staging.utcnow_iso(),
              "transform_run": part.transform_run}
    total = c.written + c.skipped_expired + c.deduplicated + c.quarantined
    if total != part.rows:
        raise EtlError(f"load {part.month} part {part.part}: counts do not reconcile ({result})")
    if not dry_run:
        store.write_json(staging.checkpoint_key(part.month, part.part), result)
    return result


def _stopped(exc: BaseException) -> bool:
    return isinstance(exc, EtlError) and exc.message == "load stopped"


def reset_checkpoints(cfg: Config, months: list[str]) -> int:
    """Forget the part checkpoints (and the load/verify manifests) of months, so they load again."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    n = 0
    for m in months:
        n += store.delete_prefix(staging.state_key(m, "load/"))
        for stage in ("load", "verify"):
            store.delete(staging.manifest_key(m, stage))
    return n


def run_load(cfg: Config, months: list[str], *, yes: bool = False, dry_run: bool = False,
             include_expired: bool | None = None, confirm: Callable[[str], bool] | None = None,
             reporter: Reporter = QUIET, now: int | None = None, force: bool = False) -> list[dict[str, Any]]:
    if not months:
        raise EtlError("no month given to load", hint="pass --month YYYYMM or --months FIRST-LAST")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    include_expired = cfg.load.include_expired if include_expired is None else include_expired
    plan = plan_load(cfg, store, months, now)  # checks the destination and the budget first
    if force and not dry_run:  # only now forget the checkpoints: every part is written again
        reset_checkpoints(cfg, months)
        plan = plan_load(cfg, store, months, now)
    reporter.info(plan.describe())
    asking = not dry_run and plan.parts and cfg.destination.production and not yes
    if asking and (confirm is None or not confirm(f"write {sum(p.rows for p in plan.parts):,} rows to {plan.table}?")):
        raise EtlError("not confirmed: nothing was written", hint="pass --yes to write without asking")
    started = time.time()
    deadline = time.monotonic() + cfg.load.deadline_seconds if cfg.load.deadline_seconds else None
    writer = BatchWriter(cfg.destination, plan.table)
    sender = Sender(writer, plan.budget, deadline, max_delay=cfg.load.max_backoff_seconds)
    total = sum(p.rows for p in plan.parts)
    task = reporter.task("load", total, "items")
    inflight = threading.Semaphore(cfg.load.concurrency * 2)
    losers = {m: _losers(store, m) for m in months}
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.wait(1.0):
            plan.budget.maybe_refresh()
            task.update(wcu_per_s=round(plan.budget.bucket.consumed / max(1e-9, time.time() - started), 1),
                        budget=round(plan.budget.bucket.target, 1))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    failures: list[tuple[Part, BaseException]] = []
    try:
        with ThreadPoolExecutor(cfg.load.concurrency, thread_name_prefix="send") as senders, \
                ThreadPoolExecutor(2, thread_name_prefix="part") as parts_pool:
            futs = {parts_pool.submit(load_part, cfg, store, p, sender, senders, losers[p.month].get(p.part, set()),
                                      plan.now, include_expired, task, dry_run, inflight): p for p in plan.parts}
            for fut, p in futs.items():
                try:
                    fut.result()
                except BaseException as part_exc:
                    sender.stop.set()
                    failures.append((p, part_exc))
    finally:
        stop_watch.set()
        task.finish()
    if failures:
        real = [e for _, e in failures if not _stopped(e)]
        exc = real[0] if real else failures[0][1]
        msg = str(exc) if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
        rerun = "etl load " + " ".join(f"--month {m}" for m in months)
        for m in {q.month for q, _ in failures}:
            staging.record_failure(store, m, "load", msg, rerun)
        raise EtlError(f"load stopped: {msg}; finished parts are checkpointed",
                       hint=f"`{rerun}` resumes (finished parts are skipped)") from exc
    if dry_run:
        return [{"month": m, "dry_run": True, "plan": plan.describe()} for m in months]
    results = []
    for month in months:
        t = staging.read_manifest(store, month, "transform") or {}
        cps = [_checkpoint(store, month, p["part"], str(t.get("run_id", ""))) for p in t.get("parts", [])]
        if any(cp is None for cp in cps):
            raise EtlError(f"load {month}: a part has no checkpoint of the current transform after the run")
        sums = {k: sum(cp[k] for cp in cps if cp) for k in ("written", "skipped_expired", "deduplicated", "quarantined",
                                                      "rows", "requests", "retries", "throttles")}
        wcu = round(sum(cp["wcu"] for cp in cps if cp), 1)
        if sums["written"] + sums["skipped_expired"] + sums["deduplicated"] + sums["quarantined"] != t["written"]:
            raise EtlError(f"load {month}: counts do not reconcile with the Parquet rows: {sums} vs {t['written']}")
        duration = round(time.time() - started, 3)
        results.append(staging.commit_manifest(store, month, "load", {
            **sums, "wcu_consumed": wcu, "duration_s": duration,
            "average_wcu_per_s": round(plan.budget.bucket.consumed / max(duration, 1e-9), 1),
            "budget": plan.budget.describe, "table": plan.table, "region": plan.region,
            "include_expired": include_expired, "expired_before": plan.now,
            "reconciles": "written + skipped_expired + deduplicated + quarantined = rows in the Parquet",
            "upstream_run": t.get("run_id"), "transform_run": t.get("run_id"),
            "config_hash": cfg.hash_of("load", "destination"),
        }))
    return results
