"""Before a load writes anything: the destination checked (region, name, key), the budget (the table's and
each global secondary index's share, an on-demand table's warm throughput and ramp), the write units and
cost estimated, the plan said, the confirmation asked. Catch-up takes the same checks (`preflight`)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import botocore.exceptions
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etl import aws, capacity, items, mapping, staging
from etl.config import Config
from etl.errors import EtlError
from etl.load.rows import IndexSpec, WriteTarget, _kept, index_specs, write_units
from etl.progress import Reporter
from etl.runner import StageBase
from etl.state import LoadPartCheckpoint


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


def write_budget(cfg: Config, desc: dict[str, Any], ddb: Any) -> capacity.BudgetPlan:
    ld = cfg.load
    return capacity.budget_for(desc, unit="WCU", fraction=ld.write_capacity_fraction, absolute=ld.max_wcu,
                               fraction_key="[load] write_capacity_fraction", absolute_key="[load] max_wcu",
                               describe=lambda: ddb.describe_table(TableName=desc["TableName"])["Table"])



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
    target = WriteTarget(table="", now=now, include_expired=include_expired, dry_run=True)
    keep, _, _ = _kept(rb, 0, staging.read_losers(store, month).get(part["part"]), mapping.ttl_column(cfg), target)
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
    cp = LoadPartCheckpoint.read(store, staging.load_part_checkpoint_key(month, part))
    return cp.body if cp is not None and cp.valid_for(transform_run, destination) else None


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
    budget: capacity.BudgetPlan
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

    def target(self) -> WriteTarget:
        """What every part task of this run writes to, and how."""
        d = self.destination
        return WriteTarget(table=self.table, now=self.now, include_expired=self.include_expired, dry_run=self.dry_run,
                           deadline=self.deadline, indexes=self.indexes, budget_wcu=round(self.budget.bucket.target, 1),
                           destination=(d.arn, d.created), key_types=self.key_types, run=(self.run_id, self.started))

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
            key = staging.load_part_checkpoint_key(month, p["part"])
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
              desc: dict[str, Any] | None = None,
              more: Callable[[Setup, int, list[tuple[str, dict[str, Any]]]], list[str]] | None = None,
              how: str = "") -> Setup:
    """Check the destination and the budget, say the plan, and ask before writing to a production table.
    `desc`: the destination's description when the caller already checked it; `more`: the plan's lines of
    another method (bulk put) from the setup, the rows and the (month, part) left to load; `how`: that method, in
    the question."""
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
    todo_parts: list[tuple[str, dict[str, Any]]] = []
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
        todo_parts += [(m, p) for p in left]
        done += finished
        rows += sum(p["rows"] for p in left)
        if sample is None and left:
            sample = (m, left[0])
    est = (_sample(cfg, store, sample[0], sample[1], setup.now, setup.include_expired, setup.indexes)
           if sample else None)
    setup.waiting = waiting
    text = setup.describe(rows, parts, done, months, waiting, est)
    if more is not None:
        text += "\n" + "\n".join(more(setup, rows, todo_parts))
    reporter.plan(text)
    asking = not dry_run and (parts or waiting) and cfg.destination.production and not yes
    if asking:
        what = f"{rows:,} rows" + (f" (and months {', '.join(waiting)} once transformed)" if waiting else "")
        if confirm is None or not confirm(f"write {what} to {setup.table}{how}?"):
            raise EtlError("not confirmed: nothing was written", hint="pass --yes to write without asking")
    return setup


class LoadingStage(StageBase):
    """What both load methods' stages take from a command: its options, and the run's `Setup` once their
    preflight made it."""

    def __init__(self, cfg: Config, store: staging.Store, reporter: Reporter, *, force: bool = False,
                 dry_run: bool = False, yes: bool = False, include_expired: bool | None = None,
                 now: int | None = None, confirm: Callable[[str], bool] | None = None,
                 desc: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, store, force=force)
        self.reporter, self.dry_run, self.yes, self.include_expired = reporter, dry_run, yes, include_expired
        self.now, self.confirm, self.desc = now, confirm, desc
        self.setup: Setup | None = None
