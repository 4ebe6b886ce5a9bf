"""Stage 3: Parquet parts -> BatchWriteItem into the live destination, within a write budget, checkpointed.

preflight: the destination checked (region, name, key), the budget (the table's and each global secondary
           index's share, an on-demand table's warm throughput and ramp), the write units and cost
           estimated, the plan said, the confirmation asked: all before anything is written or forgotten.
plan:      one task per Parquet part of the month without a checkpoint of the month's current transform for
           this very table (its ARN and creation time: a table dropped and created again is another table).
run_task:  reads its part by record batch, drops the collision losers the transform listed and the
           already-expired rows (counted), quarantines what DynamoDB would refuse (over 400 KB, key values too
           long, empty or missing), and sends batches of <= 25 distinct keys through the table's shared budget,
           with as many requests in flight as the budget and the measured round trip need (Little's law), on
           the writer's event loop. UnprocessedItems, throttling, 5xx and dropped connections are retried with
           exponential backoff and jitter until acknowledged; a batch refused as invalid is split until the
           item is found, which is quarantined. The part's low-water mark (every row below it accounted for)
           is saved as it moves (`_state/month=M/load-progress/`), so a resume starts there; once every item
           is acknowledged, the part's checkpoint `_state/month=M/load/part-NNNNN.done` is written.
commit:    sums the checkpoints, so counts reconcile across resumed runs:
           written + skipped_expired + deduplicated + quarantined = rows in the Parquet;
           and keeps every run that wrote to the month (`runs`, `totals`).
"""

from __future__ import annotations

import base64
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
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, cast

import botocore.exceptions
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import aws, capacity, items, mapping, staging
from etl.config import AwsSide, Config
from etl.engine import MonthPlan, TaskContext
from etl.errors import DeadlineReached, EtlError, StageNotReady
from etl.progress import Reporter
from etl.writer import BatchWriter, Reply

NAME = "load"


class WriteBudget(Protocol):
    """What a load task asks of its table's shared budget (`ratelimit.TokenBucket`, or a proxy to one in
    another process): plain numbers and a dict of str -> float in and out."""

    def acquire(self, n: float) -> float: ...
    def settle(self, estimated: float, actual: float, per_index: dict[str, float] | None = None) -> None: ...
    def refund(self, n: float) -> None: ...
    def throttled(self) -> None: ...
    def succeeded(self, n: int = 1) -> None: ...


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


def describe_destination(cfg: Config) -> dict[str, Any]:
    """The destination's description, checked (`check_destination`)."""
    return check_destination(cfg, aws.client(cfg.destination, "dynamodb"))


def key_types(desc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The table's key attributes with their types (S, N or B): the partition key first."""
    keys = {k["KeyType"]: k["AttributeName"] for k in desc["KeySchema"]}
    types = {a["AttributeName"]: a["AttributeType"] for a in desc["AttributeDefinitions"]}
    return tuple((keys[k], types[keys[k]]) for k in ("HASH", "RANGE") if k in keys)


def write_budget(cfg: Config, desc: dict[str, Any], ddb: Any) -> capacity.Budget:
    ld = cfg.load
    return capacity.budget_for(desc, unit="WCU", fraction=ld.write_capacity_fraction, absolute=ld.max_wcu,
                               fraction_key="[load] write_capacity_fraction", absolute_key="[load] max_wcu",
                               describe=lambda: ddb.describe_table(TableName=desc["TableName"])["Table"])


class IndexSpec(NamedTuple):
    """A global secondary index as the load needs it: a write reaches it when the item has every key
    attribute; it is charged for the projected attributes (None: ALL)."""

    name: str
    keys: tuple[str, ...]
    projected: tuple[str, ...] | None


def index_specs(desc: dict[str, Any], table_keys: list[str]) -> tuple[IndexSpec, ...]:
    out = []
    for g in capacity.gsis(desc):
        keys = tuple(k["AttributeName"] for k in g["KeySchema"])
        proj = g.get("Projection") or {}
        kind = proj.get("ProjectionType", "ALL")
        projected = None if kind == "ALL" else tuple(dict.fromkeys(
            [*table_keys, *keys, *(proj.get("NonKeyAttributes") or [] if kind == "INCLUDE" else [])]))
        out.append(IndexSpec(g["IndexName"], keys, projected))
    return tuple(out)


def write_units(batch: pa.RecordBatch, sizes: np.ndarray, indexes: tuple[IndexSpec, ...]) -> dict[str, int]:
    """The write units `batch` costs: "" for the table (ceil(size / 1 KB) per item), and each index's."""
    out = {"": int(np.maximum(1, -(-sizes // 1024)).sum())}
    names = set(batch.schema.names)
    for ix in indexes:
        if not set(ix.keys) <= names:
            out[ix.name] = 0  # no item carries the index's key: never written there
            continue
        reached = np.ones(batch.num_rows, dtype=bool)
        for k in ix.keys:
            reached &= np.asarray(pc.is_valid(batch.column(k)).to_numpy(zero_copy_only=False), dtype=bool)
        cols = [c for c in (ix.projected or batch.schema.names) if c in names]
        isz = items.item_sizes(batch.select(cols)) if ix.projected else sizes
        out[ix.name] = int(np.where(reached, np.maximum(1, -(-isz // 1024)), 0).sum())
    return out


@dataclass
class Estimate:
    """Write units per row to load, from a sample of the staged rows."""

    sampled: int = 0
    kept: float = 1.0  # share of rows written (not expired, not a collision loser)
    units: dict[str, float] = field(default_factory=lambda: {"": 1.0})  # per written item: "" table, indexes
    by_size: dict[int, float] = field(default_factory=dict)  # table WCU per item -> share of items


def _sample(cfg: Config, store: staging.Store, month: str, part: dict[str, Any], now: int, include_expired: bool,
            indexes: tuple[IndexSpec, ...], rows: int = 50_000) -> Estimate:
    pf = pq.ParquetFile(pa.BufferReader(store.read(part["output"])))
    rb = next(pf.iter_batches(batch_size=rows), None)
    if rb is None or rb.num_rows == 0:
        return Estimate()
    task = PartTask(month, part["part"], part["output"], part["rows"], "", "", now, include_expired, True, None)
    keep, _, _ = _kept(rb, 0, staging.read_losers(store, month).get(part["part"]), mapping.ttl_column(cfg), task)
    sel = rb.filter(pa.array(keep))
    est = Estimate(rb.num_rows, sel.num_rows / rb.num_rows)
    if sel.num_rows:
        sizes = items.item_sizes(sel)
        est.units = {k: v / sel.num_rows for k, v in write_units(sel, sizes, indexes).items()}
        wcu, counts = np.unique(np.maximum(1, -(-sizes // 1024)), return_counts=True)
        est.by_size = {int(w): c / sel.num_rows for w, c in zip(wcu, counts, strict=True)}
    return est


def _checkpoint(store: staging.Store, month: str, part: int, transform_run: str,
                destination: staging.Destination) -> dict[str, Any] | None:
    """A part's checkpoint, if it exists, belongs to the month's current transform and was written for this very
    destination table (one made for another table, or before a drop and create, says nothing of this one)."""
    key = staging.checkpoint_key(month, part)
    if not store.exists(key):
        return None
    cp = dict(store.read_json(key))
    return cp if cp.get("transform_run") == transform_run and destination.holds(cp) else None


def _ramped_seconds(units: float, start: float, target: float) -> float:
    """Seconds to send `units` at a rate that starts at `start` and doubles every RAMP_DOUBLING_S up to `target`."""
    if units <= 0 or target <= 0:
        return 0.0
    if start >= target:
        return units / target
    d = capacity.RAMP_DOUBLING_S
    in_ramp = (target - start) * d / math.log(2)
    if units <= in_ramp:
        return d * math.log2(1 + units * math.log(2) / (start * d))
    return capacity.ramp_seconds(start, target) + (units - in_ramp) / target


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
    indexes: tuple[IndexSpec, ...] = ()
    price_per_million: float = 0.625
    destination: staging.Destination = staging.Destination("", "", "")
    key_types: tuple[tuple[str, str], ...] = ()  # the table's key attributes and types, partition key first
    waiting: list[str] = field(default_factory=list)  # months not transformed yet at the plan
    started: float = field(default_factory=time.time)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this load run, in every part's `runs`
    _stop_watch: threading.Event = field(default_factory=threading.Event)

    def cost(self, wcu: float) -> float:
        return wcu * self.price_per_million / 1e6

    def describe(self, rows: int, parts: int, done: int, months: list[str], waiting: list[str],
                 est: Estimate | None = None) -> str:
        est = est or Estimate()
        later = f"; after their transform: {', '.join(waiting)}" if waiting else ""
        lines = [f"destination {self.table} in {self.region}, account {self.account}",
                 f"months {', '.join(months)}: {rows:,} rows in {parts} part(s) to load "
                 f"({done} part(s) already done){later}",
                 f"budget {self.budget.describe}"]
        lines += [f"  {n}" for n in self.budget.notes]
        if rows or not waiting:
            lines += self.units(rows, est)
        else:
            lines.append("write units, cost and time: said as each month's load starts (or run `etl load "
                         "--dry-run` once they are transformed)")
        return "\n".join(lines)

    def units(self, rows: int, est: Estimate) -> list[str]:
        """The plan's write units, cost and time for `rows` staged rows."""
        lines = []
        writes = rows * est.kept
        table_wcu = writes * est.units.get("", 1.0)
        index_wcu = {ix.name: writes * est.units.get(ix.name, 1.0) for ix in self.indexes}
        total = table_wcu + sum(index_wcu.values())
        sizes = ", ".join(f"{share:.0%} at {w} WCU" for w, share in sorted(est.by_size.items())) or "1 WCU each"
        basis = f"from a sample of {est.sampled:,} rows" if est.sampled else "at 1 WCU per item"
        lines.append(f"write units: about {writes:,.0f} items ({sizes}) = {table_wcu:,.0f} WCU on the table"
                     + "".join(f" + {u:,.0f} on index {n}" for n, u in index_wcu.items())
                     + (f" = {total:,.0f} WCU" if index_wcu else "") + f" ({basis})")
        price = (f"${self.cost(total):,.2f} at ${self.price_per_million:g} per million write request units "
                 "([load] price_per_million_wcu; the default is us-east-1's on-demand price, other regions differ)")
        if self.budget.on_demand:
            lines.append(f"cost: about {price}")
        else:
            lines.append(f"cost: none beyond the provisioned capacity already paid by the hour (on demand it would "
                         f"be about {price})")
        bucket = self.budget.bucket
        seconds = _ramped_seconds(table_wcu, bucket.rate, bucket.target)
        lines.append(f"time: about {seconds / 60:.1f} min at {bucket.target:,.0f} WCU/s of table writes"
                     + (f", ramping from {bucket.rate:,.0f}" if bucket.rate < bucket.target else ""))
        return lines

    def watch(self) -> None:
        """Re-read a fraction budget's provisioned capacity while the load runs."""
        def loop() -> None:
            while not self._stop_watch.wait(1.0):
                self.budget.maybe_refresh()
        threading.Thread(target=loop, daemon=True, name="budget-refresh").start()

    def close(self) -> None:
        self._stop_watch.set()


class Todo(NamedTuple):
    left: list[dict[str, Any]]  # the month's parts without a checkpoint of its transform for this table
    done: int
    transform_run: str
    elsewhere: list[dict[str, Any]]  # checkpoints of the current transform, but for another table


def _todo(store: staging.Store, month: str, destination: staging.Destination) -> Todo | None:
    """What is left to load of a month into `destination` (None: no committed transform)."""
    t = staging.read_manifest(store, month, "transform")
    if t is None:
        return None
    run = str(t.get("run_id", ""))
    todo, other = [], []
    for p in t["parts"]:
        if _checkpoint(store, month, p["part"], run, destination) is None:
            todo.append(p)
            key = staging.checkpoint_key(month, p["part"])
            if store.exists(key) and (cp := store.read_json(key)).get("transform_run") == run:
                other.append(cp)
    return Todo(todo, len(t["parts"]) - len(todo), run, other)


def not_loaded_here(store: staging.Store, month: str, destination: staging.Destination) -> str:
    """One line when the month's load manifest or part checkpoints are for another table than `destination`
    ("" when not): the month is not loaded there, whatever those say."""
    m = staging.read_manifest(store, month, "load")
    if m is not None and not destination.holds(m):
        return (f"loaded before into {staging.elsewhere(m)}, not into {destination.describe()}: the month is "
                "not loaded there; loading it")
    todo = _todo(store, month, destination)
    if todo is not None and todo.elsewhere:
        return (f"{len(todo.elsewhere)} part checkpoint(s) are for {staging.elsewhere(todo.elsewhere[0])}, not "
                f"for {destination.describe()}: those parts are not loaded there; loading them")
    return ""


def preflight(cfg: Config, store: staging.Store, months: list[str], *, include_expired: bool | None = None,
              now: int | None = None, dry_run: bool = False, yes: bool = False, force: bool = False,
              confirm: Callable[[str], bool] | None = None, reporter: Reporter,
              desc: dict[str, Any] | None = None) -> Setup:
    """Check the destination and the budget, say the plan, and ask before writing to a production table.
    `desc`: the destination's description when the caller already checked it."""
    ddb = aws.client(cfg.destination, "dynamodb")
    desc = desc or check_destination(cfg, ddb)
    setup = Setup(desc["TableName"], cfg.destination.aws_region, aws.account_of(cfg.destination),
                  write_budget(cfg, desc, ddb), int(now if now is not None else time.time()),
                  cfg.load.include_expired if include_expired is None else include_expired, dry_run,
                  time.time() + cfg.load.deadline_seconds if cfg.load.deadline_seconds else None,
                  index_specs(desc, mapping.key_columns(cfg)), cfg.load.price_per_million_wcu,
                  staging.destination_of(desc), key_types(desc))
    rows = parts = done = 0
    waiting = []
    sample: tuple[str, dict[str, Any]] | None = None
    for m in months:
        todo = _todo(store, m, setup.destination)
        if todo is None:
            waiting.append(m)
            continue
        left, finished = todo.left, todo.done
        t = staging.read_manifest(store, m, "transform") or {}
        if force:
            left, finished = list(t.get("parts", [])), 0
        parts += len(left)
        done += finished
        rows += sum(p["rows"] for p in left)
        if sample is None and left:
            sample = (m, left[0])
    est = (_sample(cfg, store, sample[0], sample[1], setup.now, setup.include_expired, setup.indexes)
           if sample else None)
    setup.waiting = waiting
    reporter.info(setup.describe(rows, parts, done, months, waiting, est))
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
    indexes: tuple[IndexSpec, ...] = ()
    budget_wcu: float = 0.0  # the budget's full rate, for progress (what the task attains against it)
    destination: tuple[str, str] = ("", "")  # the table's ARN and creation time, recorded with the progress
    key_types: tuple[tuple[str, str], ...] = ()  # the table's key attributes and types (checked before sending)
    run: tuple[str, float] = ("", 0.0)  # this load run's id and start (time.time())
    progress: str = ""  # the part's progress key ("": the month's part's)

    def progress_key(self) -> str:
        return self.progress or staging.progress_key(self.month, self.part)


OP = "op"  # a catch-up part's operation column: put or delete (etl.catchup)


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
    d = setup.destination
    tasks = [PartTask(month, p["part"], p["output"], p["rows"], todo.transform_run, setup.table, setup.now,
                      setup.include_expired, setup.dry_run, setup.deadline, indexes=setup.indexes,
                      budget_wcu=round(setup.budget.bucket.target, 1), destination=(d.arn, d.created),
                      key_types=setup.key_types, run=(setup.run_id, setup.started)) for p in left]
    rows = sum(p.rows for p in tasks)
    notes = [elsewhere_note] if elsewhere_note else []
    if month in setup.waiting and left:  # transformed after the plan was said: its units and cost now
        est = _sample(cfg, store, month, left[0], setup.now, setup.include_expired, setup.indexes)
        notes += setup.units(rows, est)
    return MonthPlan(tasks, rows, "items", "; ".join(notes))


# --------------------------------------------------------------------------- run


@dataclass
class Counters:
    written: int = 0
    deletes: int = 0  # of `written`: a catch-up part's deletes
    skipped_expired: int = 0
    deduplicated: int = 0
    quarantined: int = 0
    wcu: float = 0.0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    wcu_by: dict[str, float] = field(default_factory=dict)  # dry run: estimated units, "" the table
    wcu_indexes: dict[str, float] = field(default_factory=dict)  # consumed on each GSI (within `wcu`)


def _writer(side: AwsSide, table: str) -> BatchWriter:
    """One writer (connections on the process's event loop) per destination in a process, like a client."""
    return _writer_in(side, table, os.getpid())


@functools.lru_cache(maxsize=8)
def _writer_in(side: AwsSide, table: str, pid: int) -> BatchWriter:
    return BatchWriter(side, table)


HEADROOM = 1.5  # in-flight window over what Little's law needs: RTT jitter, replies waiting for the loop
QUEUEING = 2.0  # a round trip this many times the recent fastest is a queue forming (at the server or here)
MIN_WINDOW = 2


class Window:
    """How many requests a task keeps in flight.

    Little's law: sending `rate` units/s in requests of `cost` units answered after `rtt` seconds takes
    rate x rtt / cost requests in flight; with headroom, bounded by `ceiling`. It follows the budget's rate
    (throttling, the on-demand ramp) and the measured round trip.
    A second bound keeps a server that cannot take the budget from being flooded: once per round (as many
    answers as the window), it grows while round trips stay near the recent fastest (x4 while under 32,
    then x2), and shrinks in proportion when they grow past QUEUEING times it (more in
    flight would only queue).
    `fixed` (`[load] concurrency`) overrides both."""

    def __init__(self, fixed: int | None, ceiling: int, rtt: float = 0.0, cap: int = 8) -> None:
        """`rtt`, `cap`: where an earlier part in this process left them, to start from."""
        self.fixed = fixed
        self.ceiling = max(ceiling, MIN_WINDOW)
        self.cap = max(MIN_WINDOW, min(cap, self.ceiling))  # the queueing bound
        self.limit = fixed or self.cap
        self.rtt = rtt  # smoothed
        self._fastest = (rtt or math.inf, math.inf)  # (this period, the last), periods of 5 s
        self._period = time.monotonic()
        self._round = 0
        self.cost = float(items.MAX_BATCH)  # units per request, smoothed
        self.rate = 0.0

    def answered(self, rtt: float, cost: float) -> None:
        self.rtt = rtt if not self.rtt else self.rtt + 0.1 * (rtt - self.rtt)
        self.cost += 0.1 * (cost - self.cost)
        now = time.monotonic()
        if now - self._period > 5.0:
            self._fastest, self._period = (rtt, self._fastest[0]), now
        else:
            self._fastest = (min(self._fastest[0], rtt), self._fastest[1])
        self._round += 1
        if self._round >= self.limit:
            self._round = 0
            gradient = min(1.0, QUEUEING * min(self._fastest) / self.rtt)
            # quadruple per round while small (at 100 ms, 8 -> 128 in 0.2 s), then double
            grown = (self.cap * (4 if self.cap < 32 else 2) if gradient >= 1.0
                     else self.cap * max(gradient, 0.5) + math.sqrt(self.cap))
            bound = 2 * self.little() if self.rate else self.ceiling  # no use growing far past what the budget needs
            self.cap = max(MIN_WINDOW, min(self.ceiling, bound, math.ceil(grown)))
        self._resize()

    def budget_rate(self, rate: float) -> None:
        self.rate = rate
        self._resize()

    def little(self) -> int:
        """What Little's law asks for at the budget's rate and the round trip (without queueing)."""
        rtt = min(self.rtt, QUEUEING * min(self._fastest))
        return math.ceil(HEADROOM * self.rate * rtt / self.cost) + 2

    def _resize(self) -> None:
        if self.fixed or not self.rtt or not self.rate:
            return
        self.limit = max(MIN_WINDOW, min(self.ceiling, self.cap, self.little()))


@dataclass
class _Ticket:
    """Rows [start, end) of a part: the items of one batch as first read, and the rows before them that were not
    sent (deduplicated, expired, quarantined before sending). Done when every item is acknowledged or refused.
    The part's low-water mark is the start of its oldest ticket not done: every row below it is accounted for,
    whatever order the batches were answered in."""

    start: int
    end: int
    skipped: dict[str, int]  # skipped_expired, deduplicated, quarantined (before sending), deletes (of the items)
    pending: int = 1  # its requests not answered for good: a retry replaces one, a split makes two
    written: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)  # quarantine records of items DynamoDB refused


@dataclass
class _Batch:
    puts: list[bytes]
    cost: float  # estimated units: ceil(size / 1 KB) per item
    attempt: int = 0
    rows: list[int] = field(default_factory=list)  # each put's row in the part (empty: not known)
    deletes: int = 0
    ticket: _Ticket | None = None


BELOW = ("written", "skipped_expired", "deduplicated", "quarantined", "deletes")
RECONCILED = ("written", "skipped_expired", "deduplicated", "quarantined")


def _run_record(task: PartTask, c: Counters, seconds: float) -> dict[str, Any]:
    """What one run did to a part, as far as it got: kept per part and summed per run by the commit."""
    return {"run": task.run[0], "started": round(task.run[1], 3), "last": round(time.time(), 3),
            "seconds": round(seconds, 3), "acknowledged": c.written, "wcu": round(c.wcu, 1),
            "requests": c.requests, "retries": c.retries, "throttles": c.throttles}


class _Progress:
    """A part's low-water mark and the counts below it, saved in the store while the part loads: a resumed
    load skips the rows below the mark and starts its counts from these, so counts reconcile across runs
    and a resume rewrites only what was above the mark (the window in flight, and what was acknowledged
    since the last save). Saved at most every `[load] checkpoint_seconds` and when the part stops."""

    def __init__(self, store: staging.Store, task: PartTask, every: float, prior: dict[str, Any] | None) -> None:
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
        self.store.write_json(t.progress_key(), {
            "part": t.part, "rows": t.rows, "low_water_mark": self.lwm, "below": self.below,
            "refused": self.refused, "now": t.now, "include_expired": t.include_expired,
            "transform_run": t.transform_run, "table": t.table, "table_arn": t.destination[0],
            "table_created": t.destination[1], "runs": self.runs_with(c), "at": staging.utcnow_iso()})
        self._saved = (self.lwm, time.monotonic())


def _resume_point(store: staging.Store, task: PartTask) -> dict[str, Any] | None:
    """The part's saved progress, when it is for this transform, this very table and the same rows to write
    (and its counts reconcile with its mark); else None: the part starts over."""
    key = task.progress_key()
    if not store.exists(key):
        return None
    p = dict(store.read_json(key))
    same = (p.get("transform_run") == task.transform_run and p.get("rows") == task.rows
            and (p.get("table_arn"), p.get("table_created")) == task.destination
            and p.get("include_expired") == task.include_expired)
    below = p.get("below") or {}
    return p if same and sum(int(below.get(k, 0)) for k in RECONCILED) == int(p.get("low_water_mark", -1)) else None


# messages of a refusal about the table's key schema: the items were checked against the key the table had
# at the start, so these mean the table (or the mapping) is not what it was, not that an item is bad
KEY_SCHEMA_REFUSALS = ("type mismatch for key", "missing the key", "does not match the schema",
                       "required keys was not given a value")
REFUSED_LIMIT = 25  # items DynamoDB refused with none written: a problem of the table or mapping, not of items


def _plain(v: Any) -> Any:
    """A key value as the quarantine file holds it (JSON: numbers that are not integers as text, bytes in base64)."""
    if isinstance(v, Decimal | float):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


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

    def __init__(self, cfg: Config, task: PartTask, ctx: TaskContext, counters: Counters,
                 progress: _Progress, quarantine: list[bytes]) -> None:
        assert ctx.budget is not None
        self.budget = cast(WriteBudget, ctx.budget)
        self.ctx = ctx
        self.task = task
        self.c = counters
        self.progress = progress
        self.quarantine = quarantine
        self.keys = mapping.key_columns(cfg)
        self.writer = _writer(cfg.destination, task.table)
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
        if self.task.deadline is not None and time.time() > self.task.deadline:
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
        rate = self.budget.acquire(batch.cost)
        self.window.budget_rate(rate or self.task.budget_wcu)  # a budget that does not say: the planned rate
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
            raise EtlError(f"DynamoDB refused a batch for {self.task.table}'s key schema: {message}",
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
            full = not self.task.budget_wcu or w.rate >= 0.95 * self.task.budget_wcu
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
            "budget_wcu_per_s": self.task.budget_wcu, "in_flight": w.limit, "rtt_ms": round(w.rtt * 1000, 1),
            "limited_by": reason}
        self.ctx.progress(0, add={"wcu_per_s": rate - self._reported_rate}, **fields)
        self._reported_rate = rate




class _Batches:
    """Accumulates puts into batches of <= 25 items with distinct keys, under the request size limit."""

    def __init__(self) -> None:
        self.puts: list[bytes] = []
        self.rows: list[int] = []
        self.cost = 0.0
        self.keys: set[tuple[Any, ...]] = set()
        self.bytes = 0
        self.deletes = 0

    def add(self, put: bytes, size: int, key: tuple[Any, ...], row: int, delete: bool = False) -> _Batch | None:
        """Add a put; returns the batch it closed, if any."""
        full = len(self.puts) == items.MAX_BATCH or self.bytes + len(put) > items.MAX_REQUEST_BYTES - 4096
        out = self.flush() if key in self.keys or full else None
        self.puts.append(put)
        self.rows.append(row)
        self.cost += max(1, -(-size // 1024))
        self.keys.add(key)
        self.bytes += len(put)
        self.deletes += delete
        return out

    def flush(self) -> _Batch | None:
        out = _Batch(self.puts, self.cost, rows=self.rows, deletes=self.deletes) if self.puts else None
        self.puts, self.rows, self.cost, self.keys, self.bytes, self.deletes = [], [], 0.0, set(), 0, 0
        return out


def _kept(rb: pa.RecordBatch, row0: int, losers: np.ndarray | None, ttl_col: str | None,
          task: PartTask, deletes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which rows of a record batch to write, which were collision losers and which expired (puts only)."""
    n = rb.num_rows
    dedup = np.zeros(n, dtype=bool)
    if losers is not None:
        dedup = np.isin(np.arange(row0, row0 + n), losers)
    keep = ~dedup
    expired = np.zeros(n, dtype=bool)
    if ttl_col and not task.include_expired:
        ttl = np.asarray(pc.fill_null(rb.column(ttl_col), np.iinfo(np.int64).max).to_numpy(zero_copy_only=False))
        expired = keep & (ttl <= task.now)
        if deletes is not None:
            expired &= ~deletes
        keep &= ~expired
    return keep, dedup, expired


MAX_KEY_BYTES = (2048, 1024)  # DynamoDB's limits on a partition key value and a sort key value
KEY_KINDS = {"S": (pa.types.is_string, pa.types.is_large_string),
             "N": (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal),
             "B": (pa.types.is_binary, pa.types.is_large_binary)}


def _check_key_types(schema: pa.Schema, task: PartTask) -> None:
    """A key column of another type than the table's key is every item refused: the part fails, with why."""
    for name, kind in task.key_types:
        if name not in schema.names:
            raise EtlError(f"load {task.month} part {task.part}: the Parquet has no column {name}, a key of "
                           f"{task.table}", hint="transform the month again with the current mapping")
        t = schema.field(name).type
        if not any(f(t) for f in KEY_KINDS.get(kind, ())):
            raise EtlError(f"load {task.month} part {task.part}: key {name} is {t} in the Parquet, but {task.table} "
                           f"keys it as {kind}: DynamoDB would refuse every item",
                           hint="fix the mapping ([destination] keys, the transform's types) or point at the "
                                "right table")


def _refusals(sel: pa.RecordBatch, sizes: np.ndarray, deletes: np.ndarray,
              keys: list[str]) -> dict[int, tuple[str, str]]:
    """Items DynamoDB would refuse, found before sending: row in `sel` -> (reason, message). What a message
    says is sizes and names, never a value."""
    out: dict[int, tuple[str, str]] = {}
    for j in np.flatnonzero((sizes > items.MAX_ITEM_BYTES) & ~deletes).tolist():
        out[j] = ("item_too_large", f"{int(sizes[j]):,} bytes > 400 KB")
    for pos, name in enumerate(keys):
        col = sel.column(name)
        what = "partition key" if pos == 0 else "sort key"
        for j in np.flatnonzero(np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)).tolist():
            out.setdefault(j, ("missing_key", f"{what} {name} has no value"))
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or \
                pa.types.is_large_binary(t):
            lengths = np.asarray(pc.fill_null(pc.binary_length(col), -1).to_numpy(zero_copy_only=False))
            for j in np.flatnonzero(lengths == 0).tolist():
                out.setdefault(j, ("empty_key", f"{what} {name} is empty"))
            limit = MAX_KEY_BYTES[min(pos, 1)]
            for j in np.flatnonzero(lengths > limit).tolist():
                out.setdefault(j, ("key_too_long", f"{what} {name} is {int(lengths[j]):,} bytes, over DynamoDB's "
                                                   f"{limit:,}"))
        elif pa.types.is_floating(t):
            finite = np.asarray(pc.fill_null(pc.is_finite(col), True).to_numpy(zero_copy_only=False), dtype=bool)
            for j in np.flatnonzero(~finite).tolist():
                out.setdefault(j, ("key_not_a_number", f"{what} {name} is NaN or infinite"))
    return out


def _read(cfg: Config, store: staging.Store, task: PartTask, ctx: TaskContext, c: Counters,
          quarantine: list[bytes], start: int = 0) -> Iterator[_Batch]:
    """The part's batches to send, in row order, each with its ticket; counts what is not sent (and, in a dry
    run, what would be). Rows below `start` (a resumed part's low-water mark) are neither sent nor counted;
    only their quarantine lines are made again (the same rows, the same rules, the same cut-off time)."""
    ttl_col = mapping.ttl_column(cfg)
    keys = mapping.key_columns(cfg)
    losers = None if task.checkpoint else staging.read_losers(store, task.month).get(task.part)
    pf = pq.ParquetFile(pa.BufferReader(store.read(task.key)))
    schema = pf.schema_arrow
    _check_key_types(schema.remove(schema.get_field_index(OP)) if OP in schema.names else schema, task)
    batches = _Batches()
    row0 = 0
    tstart = start  # where the ticket being filled starts
    carried = {"deduplicated": 0, "skipped_expired": 0, "quarantined": 0}  # rows not sent, from `tstart` on

    def ticket(b: _Batch, end: int, counts: dict[str, int]) -> _Batch:
        b.ticket = _Ticket(tstart, end, {**counts, "deletes": b.deletes})
        return b

    for rb in pf.iter_batches(batch_size=10_000):
        n = rb.num_rows
        fresh = np.arange(row0, row0 + n) >= start
        is_del = np.zeros(n, dtype=bool)
        if OP in rb.schema.names:  # a catch-up part: puts and deletes, in one batch stream
            is_del = np.asarray(pc.fill_null(pc.equal(rb.column(OP), "delete"), False)
                                .to_numpy(zero_copy_only=False), dtype=bool)
            rb = rb.drop_columns([OP])
        keep, dedup, expired = _kept(rb, row0, losers, ttl_col, task, is_del)
        idx = np.flatnonzero(keep)  # the kept rows' positions in `rb`
        sel = rb.filter(pa.array(keep))
        sizes = items.item_sizes(sel)
        puts = items.to_puts(sel)
        sel_del = is_del[keep]
        dels = np.flatnonzero(sel_del)
        if len(dels):  # a delete costs 1 WCU per KB of the item it removes: estimated 1, settled by the reply
            for i, frag in zip(dels.tolist(), items.to_deletes(sel.take(pa.array(dels)), keys), strict=True):
                puts[i], sizes[i] = frag, 1
        refused = _refusals(sel, sizes, sel_del, keys)
        key_values = list(zip(*(sel.column(k).to_pylist() for k in keys), strict=True))
        bad = np.zeros(n, dtype=bool)
        for j, (reason, message) in refused.items():
            bad[idx[j]] = True
            quarantine.append(orjson.dumps({"reason": reason, "message": message, "row": row0 + int(idx[j]),
                                            "key": {k: _plain(v) for k, v in zip(keys, key_values[j], strict=True)}}))
        counts = {"deduplicated": dedup & fresh, "skipped_expired": expired & fresh, "quarantined": bad & fresh}
        c.deletes += int((sel_del & ~bad[keep] & fresh[keep]).sum())
        for k, mask in counts.items():
            setattr(c, k, getattr(c, k) + int(mask.sum()))
        ctx.progress(int(sum(int(m.sum()) for m in counts.values())))
        cum = {k: np.concatenate([[0], np.cumsum(mask)]) for k, mask in counts.items()}
        mark = min(max(tstart - row0, 0), n)  # this record batch's rows from here on are not carried yet
        if task.dry_run:
            fits = keep & ~bad & fresh
            sent = fits[keep]
            for k, v in write_units(sel.filter(pa.array(sent)), sizes[sent], task.indexes).items():
                c.wcu_by[k] = c.wcu_by.get(k, 0.0) + v
            c.written += int(fits.sum())
            ctx.progress(int(fits.sum()))
            row0 += n
            continue
        send = (fresh & ~bad)[idx].tolist()
        positions, size_list, delete_list = idx.tolist(), sizes.tolist(), sel_del.tolist()
        for j, li in enumerate(positions):
            if not send[j]:
                continue
            done = batches.add(puts[j], size_list[j], key_values[j], row0 + li, delete_list[j])
            if done is not None:
                yield ticket(done, row0 + li, {k: carried[k] + int(cum[k][li] - cum[k][mark]) for k in carried})
                tstart, mark = row0 + li, li
                carried = dict.fromkeys(carried, 0)
        for k in carried:
            carried[k] += int(cum[k][n] - cum[k][mark])
        row0 += n
    last = batches.flush()
    if last is not None:
        yield ticket(last, row0, carried)


def run_task(cfg: Config, task: PartTask, ctx: TaskContext) -> dict[str, Any]:
    """Load one Parquet part, from its saved low-water mark when an earlier run left one; its checkpoint is
    written once every item is acknowledged (or quarantined)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    prior = None if task.dry_run else _resume_point(store, task)
    if prior is not None:  # the rows below the mark were judged expired or not at the earlier run's time
        task = dataclasses.replace(task, now=int(prior["now"]))
        ctx.progress(int(prior["low_water_mark"]))
    progress = _Progress(store, task, cfg.load.checkpoint_seconds, prior)
    c = Counters()
    quarantine: list[bytes] = [orjson.dumps(r) for r in progress.refused]  # refused below the mark
    source = _read(cfg, store, task, ctx, c, quarantine, progress.start)
    if task.dry_run:
        for _ in source:
            pass
    else:
        _Loader(cfg, task, ctx, c, progress, quarantine).run(source)
    ctx.check()  # another task failed: this one is unfinished, so no checkpoint
    if quarantine and not task.dry_run:
        store.write(task.rejected or staging.load_rejected_key(task.month, task.part),
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
              "throttles": sum(r["throttles"] for r in runs), "at": staging.utcnow_iso(),
              "transform_run": task.transform_run, "table": task.table, "table_arn": task.destination[0],
              "table_created": task.destination[1], "resumed_at_row": progress.start,
              "quarantined_by": quarantined_by,
              "wcu_indexes": {k: round(v, 1) for k, v in c.wcu_indexes.items()}, "runs": runs}
    if task.dry_run:
        result["wcu_estimated"] = {k or "table": v for k, v in c.wcu_by.items()}
    if sum(result[k] for k in RECONCILED) != task.rows or len(quarantine) != result["quarantined"]:
        raise EtlError(f"load {task.month} part {task.part}: counts do not reconcile ({result})")
    if not task.dry_run:
        store.write_json(task.checkpoint or staging.checkpoint_key(task.month, task.part), result)
        store.delete(task.progress_key())
    return result


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
        runs.append({"run": r["run"], "started_at": _iso(r["started"]), "last_write_at": _iso(r["last"]),
                     "seconds": round(max(0.0, r["last"] - r["started"]), 3), "parts": r["parts"],
                     "acknowledged": r["acknowledged"], "wcu": round(r["wcu"], 1), "requests": r["requests"],
                     "retries": r["retries"], "throttles": r["throttles"]})
    acknowledged = sum(r["acknowledged"] for r in runs)
    totals = {"runs": len(runs), "acknowledged": acknowledged, "rewritten": max(0, acknowledged - written),
              "wcu": round(sum(r["wcu"] for r in runs), 1), "seconds": round(sum(r["seconds"] for r in runs), 3)}
    return runs, totals


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def commit(cfg: Config, store: staging.Store, month: str, tasks: list[PartTask], results: list[dict[str, Any]],
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
