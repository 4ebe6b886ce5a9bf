"""The load by DynamoDB's managed bulk put (`[load] method = "bulk-put"`, `etl load --method bulk-put`).

The tool still decides what is written (winners, expiry, pre-send quarantine: `etl.load.bulkinput`, sharing the
batch-write path's selection); DynamoDB's StartBulkPutItems writes it, paced by `MaxWriteRequestUnits`.

preflight: refusals before anything is written (the staging root must be S3; no global table; the table ACTIVE and
           building no index; a budget of at least the API's minimum of 1,024 write request units/s), then the
           load's own preflight (destination, budget, the plan with the bulk put lines beside batch-write's, the
           confirmation).
plan:      one task per month: a wait on AWS, on the month's driver thread (as the export's).
run_task:  the month's input objects (a task per Parquet part, on the engine; a resumed run writes only the parts
           its input run has not), then each operation: started with a ClientToken derived from the table's ARN,
           the month, the input run and the operation, its ARN recorded in `_state/month=M/bulkput.json` before
           it is polled, so a rerun after a crash or Ctrl-C re-attaches instead of starting another.
commit:    counts from DescribeBulkOperation: written = processed - failed, and
           written + failed + skipped_expired + deduplicated + quarantined = rows in the Parquet.
           COMPLETED_WITH_ERRORS commits the month as partly done (`failed`, the report's S3 location).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from etl import aws, capacity, staging, times
from etl.commands import render
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.errors import EtlError, StageNotReady
from etl.freshness import Verdict
from etl.load.bulkinput import MAX_OBJECTS_PER_OPERATION, BulkInputTask, part_record, run_input_task, sample_line_bytes
from etl.load.preflight import LoadingStage, Setup, check_destination, preflight, write_budget
from etl.load.rows import LoadPartTask
from etl.progress import QUIET, Reporter
from etl.state import BulkPutRecord

NAME = "load"
MIN_WRITE_REQUEST_UNITS = 1024  # StartBulkPutItems' MaxWriteRequestUnits: "must be at least 1,024"
TERMINAL = BulkPutRecord.TERMINAL
ALTERNATIVE = "use [load] method = \"batch-write\" (or `etl load --method batch-write`)"


# --------------------------------------------------------------------------- refusals and the budget


def refusals(cfg: Config, store: staging.Store, desc: dict[str, Any]) -> None:
    """What bulk put cannot do, refused before anything is written, each with the reason and batch-write."""
    table = desc.get("TableName", cfg.destination_table())
    if not cfg.staging.root.startswith("s3://"):
        raise EtlError(f"bulk put reads its input from S3, but [staging] root is a local directory "
                       f"({cfg.staging.root})", hint=f"set [staging] root = \"s3://bucket/prefix\", or {ALTERNATIVE}")
    if desc.get("Replicas"):
        regions = ", ".join(r.get("RegionName", "?") for r in desc["Replicas"])
        raise EtlError(f"{table} is a global table (replicas in {regions}): bulk put does not support global "
                       "tables", hint=ALTERNATIVE + ", which writes global tables")
    if desc.get("TableStatus", "ACTIVE") != "ACTIVE":
        raise EtlError(f"{table} is {desc['TableStatus']}, not ACTIVE: bulk put starts only on an ACTIVE table",
                       hint=f"wait until it is ACTIVE, or {ALTERNATIVE}")
    building = [g["IndexName"] for g in capacity.gsis(desc)
                if g.get("IndexStatus") == "CREATING" or g.get("Backfilling")]
    if building:
        raise EtlError(f"{table} is building index {', '.join(building)}: bulk put cannot start while a "
                       "secondary index is created", hint=f"wait until the index is ACTIVE, or {ALTERNATIVE}")


def write_request_units(budget: capacity.BudgetPlan) -> int:
    """MaxWriteRequestUnits: the budget's rate in the table's own units (a fraction: the tightest of the table's
    and each index's shares; an absolute max_wcu: over the table and its indexes together, as for batch-write),
    refused in one line below the API's minimum."""
    units = int(budget.bucket.target)
    if units < MIN_WRITE_REQUEST_UNITS:
        raise EtlError(f"the write budget gives bulk put {units:,} write request units/s ({budget.describe}), below "
                       f"StartBulkPutItems' minimum of {MIN_WRITE_REQUEST_UNITS:,}",
                       hint=f"raise [load] max_wcu or write_capacity_fraction, or {ALTERNATIVE}")
    return units


def client_token(table_arn: str, month: str, run: str, operation: int) -> str:
    """The same table, month, input run and operation give the same token: a retried start (within DynamoDB's
    8 hours) returns the same operation instead of starting another."""
    digest = hashlib.sha256(f"{table_arn}|{month}|{run}|{operation}".encode()).hexdigest()
    return f"etl-{digest[:32]}"


# --------------------------------------------------------------------------- the operations


def start_request(cfg: Config, store: staging.Store, table: str, month: str, record: dict[str, Any],
                  op: dict[str, Any]) -> dict[str, Any]:
    """StartBulkPutItems' request for one operation of the record."""
    bucket, prefix = store.s3_location(op["prefix"])
    _, report = store.s3_location(op["report_prefix"])
    owner = {"S3BucketOwner": cfg.staging.account} if cfg.staging.account else {}
    output: dict[str, Any] = {"S3Bucket": bucket, "S3KeyPrefix": report, "OutputType": ["ERROR"], **owner}
    if cfg.staging.sse == "AES256":
        output["S3SseAlgorithm"] = "AES256"
    elif cfg.staging.sse == "aws:kms":
        output["S3SseAlgorithm"] = "KMS"
        if cfg.staging.kms_key_id:
            output["S3SseKmsKeyId"] = cfg.staging.kms_key_id
    return {"ClientToken": op["token"], "TableName": table,
            "InputS3Configuration": {"S3Bucket": bucket, "S3KeyPrefix": prefix, "InputFormat": "DYNAMODB_JSON",
                                     "InputCompressionType": record["compression"], **owner},
            "OutputS3Configuration": output, "MaxWriteRequestUnits": int(record["max_write_request_units"]),
            "PerformanceTier": record["tier"]}


def find_by_token(ddb: Any, token: str, since: datetime) -> dict[str, Any] | None:
    """The operation a start with `token` made, if DynamoDB lists one started since `since` (newest first)."""
    kwargs: dict[str, Any] = {"MaxResults": 25}
    while True:
        page = ddb.list_bulk_operations(**kwargs)
        for summary in page.get("BulkOperationsSummaryList", []):
            if summary["StartTime"] < since:
                return None
            d = ddb.describe_bulk_operation(BulkOperationArn=summary["BulkOperationArn"])["BulkOperationDescription"]
            if d.get("ClientToken") == token:
                return dict(d)
        if not page.get("NextToken"):
            return None
        kwargs["NextToken"] = page["NextToken"]


def _counts(d: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of a DescribeBulkOperation answer."""
    usage = sum(int(u.get("BulkPutBytes", 0) or 0) for u in d.get("BulkOperationUsage") or [])
    return {"status": d.get("BulkOperationStatus"), "processed": int(d.get("ProcessedItemCount", 0) or 0),
            "failed": int(d.get("FailedItemCount", 0) or 0),
            "processed_input_bytes": int(d.get("ProcessedInputBytes", 0) or 0),
            "total_input_bytes": d.get("TotalInputBytes"), "bulk_put_bytes": usage,
            "failure_code": d.get("FailureCode"), "failure_message": d.get("FailureMessage"),
            "started_at": _iso(d.get("StartTime")), "ended_at": _iso(d.get("EndTime"))}


def _iso(t: Any) -> str | None:
    return times.iso_seconds(t) if isinstance(t, datetime) else None


def cancel(cfg: Config, months: list[str], ddb: Any = None) -> list[dict[str, Any]]:
    """CancelBulkOperation for every month's operations still in progress (`etl load --cancel`). What they wrote
    stays; the next load of the month starts over with new input. `ddb`: the destination's client (default: the
    config's)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    ddb = ddb or aws.client(cfg.destination, "dynamodb")
    out = []
    for month in months:
        key = staging.bulkput_state_key(month)
        rec = BulkPutRecord.read(store, key)
        body = dict(rec.body) if rec is not None else {}
        cancelled = []
        for op in body.get("operations", []):
            if op.get("arn") and op.get("status") not in TERMINAL:
                r = ddb.cancel_bulk_operation(BulkOperationArn=op["arn"])
                op["status"] = r["BulkOperationStatus"]
                cancelled.append({"arn": op["arn"], "status": op["status"]})
        if cancelled:
            store.write_json(key, body)
        out.append({"month": month, "cancelled": cancelled})
    return out


# --------------------------------------------------------------------------- on the Runner


class BulkPutStage(LoadingStage):
    """The load by bulk put on the Runner, under the destination's writing lease like batch-write: a month's task
    is a wait on AWS on its driver thread; its input objects are written by tasks on the engine."""

    name = NAME
    verb = "load"
    pool = "load"
    workers = 2
    on_driver = True
    writes_destination = True

    def __init__(self, cfg: Config, store: staging.Store, reporter: Reporter, **options: Any) -> None:
        super().__init__(cfg, store, reporter, **options)
        self.units = 0
        self._slot = threading.Semaphore(1)  # one operation at a time on the table
        self._running: dict[str, str] = {}  # month -> the ARN being polled
        self._ddb: Any = None

    def skip(self, month: str, verdict: Verdict) -> str | None:
        if not verdict.current or verdict.manifest is None:
            return None
        return f"already loaded into {verdict.manifest.get('table')}, skipped; --force redoes it"

    def command(self, months: list[str]) -> str:
        return render("load", *[w for m in months for w in ("--month", m)], "--method", "bulk-put")

    def interrupted(self) -> str | None:
        if not self._running:
            return None
        ops = ", ".join(f"{m}: {arn}" for m, arn in sorted(self._running.items()))
        cancel = render("load", *[w for m in sorted(self._running) for w in ("--month", m)], "--cancel")
        return (f"the bulk put operation(s) keep running on AWS ({ops}); `{self.command(sorted(self._running))}` "
                f"re-attaches to them, `{cancel}` cancels them")

    # ------------------------------------------------------------------ preflight and plan

    def preflight(self, months: list[str]) -> None:
        cfg = self.cfg
        self._ddb = aws.client(cfg.destination, "dynamodb")
        desc = self.desc or check_destination(cfg, self._ddb)
        refusals(cfg, self.store, desc)
        self.units = write_request_units(write_budget(cfg, desc, self._ddb))
        self.setup = preflight(cfg, self.store, months, include_expired=self.include_expired, now=self.now,
                               dry_run=self.dry_run, yes=self.yes, force=True, confirm=self.confirm,
                               reporter=self.reporter, desc=desc, more=self._plan_lines, how=" with bulk put")

    def _setup(self) -> Setup:
        if self.setup is None:
            raise EtlError("load: planned before its preflight")
        return self.setup

    def _plan_lines(self, setup: Setup, rows: int, parts: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The plan's bulk put lines: input bytes, objects and operations (from a sample of the first part), the
        tier, MaxWriteRequestUnits and the cost, beside the batch-write lines above them."""
        if not parts:
            return [f"bulk put: {self.cfg.load.bulk_put_tier} tier, MaxWriteRequestUnits {self.units:,}"]
        kept, per_line = sample_line_bytes(self.cfg, self.store, parts[0][0], parts[0][1], setup.now,
                                           setup.include_expired)
        return plan_lines(self.cfg, rows * kept * per_line, [p["rows"] * kept * per_line for _, p in parts],
                          self.units, rows * kept)

    def plan(self, month: str) -> MonthPlan:
        t = staging.read_manifest(self.store, month, "transform")
        if t is None:
            raise StageNotReady(f"no committed transform for month {month}",
                                hint=f"run `etl transform --month {month}` first")
        return MonthPlan([month], sum(p["rows"] for p in t["parts"]), "items")

    # ------------------------------------------------------------------ a month

    def run_task(self, cfg: Config, month: str, ctx: TaskContext) -> dict[str, Any]:
        reporter: Reporter = ctx.reporter or QUIET
        t = staging.read_manifest(self.store, month, "transform") or {}
        record = self._record(month, t)
        if record["phase"] == "writing":
            record = self._write_input(month, t, record, ctx, reporter)
        if self.dry_run:
            return record
        for op in record["operations"]:
            if op.get("status") not in TERMINAL:
                with self._slot:
                    self._operation(month, record, op, ctx, reporter)
        return record

    def _save(self, month: str, record: dict[str, Any]) -> None:
        if not self.dry_run:
            self.store.write_json(staging.bulkput_state_key(month), record)

    def _record(self, month: str, t: dict[str, Any]) -> dict[str, Any]:
        """The month's bulk put to go on with (its input run and operations), or a new one."""
        setup = self._setup()
        d = setup.destination
        old = BulkPutRecord.read(self.store, staging.bulkput_state_key(month))
        if (old is not None and not self.force and not self.dry_run
                and old.valid_for(str(t.get("run_id", "")), (d.arn, d.created), setup.include_expired)):
            self.reporter.info(f"load {month}: going on with bulk put input run {old.get('run')} "
                               f"({old.get('phase')})")
            return dict(old.body)
        ld = self.cfg.load
        record: dict[str, Any] = {"run": uuid.uuid4().hex[:16], "transform_run": t.get("run_id"), "table": setup.table,
                  "table_arn": d.arn, "table_created": d.created, "include_expired": setup.include_expired,
                  "now": setup.now, "tier": ld.bulk_put_tier, "compression": ld.bulk_put_compression,
                  "max_write_request_units": self.units, "phase": "writing", "operations": [],
                  "started_at": staging.utcnow_iso()}
        self._save(month, record)
        return record

    def _assign(self, month: str, t: dict[str, Any], record: dict[str, Any]) -> dict[str, int]:
        """Each part's operation, decided before any object is written (from a sample of the first part), so a
        resumed run puts the remaining parts where the plan said."""
        if "assignment" in record:
            return {str(k): int(v) for k, v in record["assignment"].items()}
        parts = t.get("parts", [])
        kept, per_line = (sample_line_bytes(self.cfg, self.store, month, parts[0], int(record["now"]),
                                            bool(record["include_expired"])) if parts else (1.0, 100.0))
        sizes = [p["rows"] * kept * per_line for p in parts]
        groups = operations_for(sizes, self.cfg)
        return {str(p["part"]): g for p, g in zip(parts, groups, strict=True)}

    def _write_input(self, month: str, t: dict[str, Any], record: dict[str, Any], ctx: TaskContext,
                     reporter: Reporter) -> dict[str, Any]:
        setup, cfg, run = self._setup(), self.cfg, str(record["run"])
        record["assignment"] = self._assign(month, t, record)
        self._save(month, record)
        target = dataclasses.replace(setup.target(), now=int(record["now"]), dry_run=self.dry_run)
        done, tasks = [], []
        for p in t.get("parts", []):
            prior = None if self.dry_run else part_record(self.store, month, p["part"], run)
            if prior is not None:
                done.append(prior)
                continue
            load = LoadPartTask(month=month, part=p["part"], key=p["output"], rows=p["rows"],
                                transform_run=str(t.get("run_id", "")), target=target, checkpoint="", progress="",
                                rejected=staging.load_rejected_key(month, p["part"]))
            tasks.append(BulkInputTask(load=load, run=run, operation=record["assignment"][str(p["part"])],
                                       object_bytes=int(cfg.load.bulk_put_object_mb * 1024 * 1024),
                                       compression=str(record["compression"]),
                                       record=staging.bulkput_part_key(month, p["part"]), dry_run=self.dry_run))
        progress = reporter.task(f"load {month}: bulk put input", sum(x.load.rows for x in tasks), "items")
        ctx.progress = progress.advance
        try:
            results = ctx.engine.run(self.pool, self.workers, run_input_task, cfg, tasks, ctx) if tasks else []
        finally:
            progress.finish()
        parts = sorted(done + results, key=lambda r: r["part"])
        record["parts"] = _part_sums(parts)
        if self.dry_run:  # the exact sizes are known: operations from them
            groups = operations_for([r["bytes"] for r in parts], cfg)
            for r, g in zip(parts, groups, strict=True):
                r["operation"] = g
        record["operations"] = self._operations(month, record, parts)
        record["phase"] = "written"
        self._save(month, record)
        return record

    def _operations(self, month: str, record: dict[str, Any], parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The month's operations: each one's objects, items and bytes, checked against the documented limits."""
        run, limit = str(record["run"]), self.cfg.load.bulk_put_operation_gb * 1024**3
        ops: dict[int, dict[str, Any]] = {}
        for r in parts:
            if not r["items"]:
                continue
            n = int(r["operation"])
            op = ops.setdefault(n, {
                "operation": n, "prefix": staging.bulkput_input_prefix(month, run, n),
                "report_prefix": staging.bulkput_report_prefix(month, run, n),
                "token": client_token(str(record["table_arn"]), month, run, n),
                "objects": 0, "items": 0, "bytes": 0, "stored_bytes": 0, "status": "NOT_STARTED"})
            op["objects"] += int(r["object_count"])
            for k in ("items", "bytes", "stored_bytes"):
                op[k] += int(r[k])
        for op in ops.values():
            if op["objects"] > MAX_OBJECTS_PER_OPERATION or op["bytes"] > limit:
                raise EtlError(f"load {month}: bulk put operation {op['operation']} would read {op['objects']:,} "
                               f"objects, {op['bytes'] / 1024**3:,.1f} GB: above {MAX_OBJECTS_PER_OPERATION:,} "
                               f"objects or [load] bulk_put_operation_gb = {self.cfg.load.bulk_put_operation_gb:g} "
                               "(the parts were sized from a sample)",
                               hint="raise [load] bulk_put_object_mb (fewer objects), then rerun with --force")
        return [ops[k] for k in sorted(ops)]

    def _client(self) -> Any:
        if self._ddb is None:
            self._ddb = aws.client(self.cfg.destination, "dynamodb")
        return self._ddb

    def _attach(self, month: str, record: dict[str, Any], op: dict[str, Any],
                reporter: Reporter) -> dict[str, Any]:
        """The operation's description: by its recorded ARN, else the one its token started (a start that
        answered before the crash recorded it), else a new start; the ARN is recorded before polling."""
        ddb = self._client()
        if op.get("arn"):
            d = ddb.describe_bulk_operation(BulkOperationArn=op["arn"])["BulkOperationDescription"]
            reporter.info(f"load {month}: re-attached to bulk put operation {op['operation']}: {op['arn']}")
            return dict(d)
        found = None
        if op.get("start_requested_at"):
            since = datetime.fromisoformat(op["start_requested_at"].replace("Z", "+00:00")) - timedelta(minutes=5)
            found = find_by_token(ddb, op["token"], since)
        if found is None:
            op["start_requested_at"] = staging.utcnow_iso()
            self._save(month, record)
            request = start_request(self.cfg, self.store, str(record["table"]), month, record, op)
            found = dict(ddb.start_bulk_put_items(**request)["BulkOperationDescription"])
            verb = "started"
        else:
            verb = "re-attached to"
        op["arn"] = found["BulkOperationArn"]
        self._save(month, record)
        reporter.info(f"load {month}: {verb} bulk put operation {op['operation']} ({op['objects']:,} object(s), "
                      f"{op['items']:,} items, {record['tier']}, MaxWriteRequestUnits "
                      f"{int(record['max_write_request_units']):,}): {op['arn']}")
        return found

    def _operation(self, month: str, record: dict[str, Any], op: dict[str, Any], ctx: TaskContext,
                   reporter: Reporter) -> None:
        """Start or re-attach, then poll until the operation ends, keeping its counts in the record (what
        `etl status` shows)."""
        d = self._attach(month, record, op, reporter)
        self._running[month] = op["arn"]
        first = _counts(d)["processed"]
        progress = reporter.task(f"load {month}: bulk put operation {op['operation']}",
                                 max(0, op["items"] - first), "items")
        seen, delay = first, 1.0
        ddb = self._client()
        try:
            while True:
                op.update(_counts(d), polled_at=staging.utcnow_iso())
                op["rate_items_per_s"] = round(progress.rate(), 1)
                eta = progress.eta()
                op["eta_s"] = None if eta is None else round(eta, 1)
                progress.advance(op["processed"] - seen, status=op["status"], failed=op["failed"])
                seen = op["processed"]
                self._save(month, record)
                if op["status"] in TERMINAL:
                    break
                ctx.stop.wait(min(delay, self.cfg.load.bulk_put_poll_seconds))
                ctx.check()  # interrupted: the operation keeps running, its ARN is recorded
                delay *= 2
                d = dict(ddb.describe_bulk_operation(BulkOperationArn=op["arn"])["BulkOperationDescription"])
        finally:
            progress.finish()
        self._running.pop(month, None)
        _ended(month, op)

    # ------------------------------------------------------------------ commit

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        [record] = results
        t = staging.read_manifest(self.store, month, "transform") or {}
        if self.dry_run:
            return dry_run_result(self.cfg, month, record, self._setup())
        return commit(self.cfg, self.store, month, record, t, plan.started, self._setup())

    def close(self) -> None:
        if self.setup is not None:
            self.setup.close()


def _ended(month: str, op: dict[str, Any]) -> None:
    """An operation that ended: FAILED and CANCELLED are one line; the others' counts must add up."""
    if op["status"] == "FAILED":
        raise EtlError(f"load {month}: bulk put operation {op['arn']} FAILED: {op.get('failure_code')}: "
                       f"{op.get('failure_message')}",
                       hint="what it wrote stays; fix the cause, then `etl load --month "
                            f"{month} --method bulk-put` starts over with new input")
    if op["status"] == "CANCELLED":
        why = f" ({op.get('failure_code')}: {op.get('failure_message')})" if op.get("failure_code") else ""
        raise EtlError(f"load {month}: bulk put operation {op['arn']} was CANCELLED{why}",
                       hint=f"what it wrote stays; `etl load --month {month} --method bulk-put` starts over")
    if op["processed"] != op["items"]:
        raise EtlError(f"load {month}: bulk put operation {op['arn']} ended {op['status']} having processed "
                       f"{op['processed']:,} items of the {op['items']:,} in its input: counts do not reconcile",
                       hint="check the operation with `aws dynamodb describe-bulk-operation`")


def _part_sums(parts: list[dict[str, Any]]) -> dict[str, Any]:
    sums: dict[str, Any] = {k: sum(int(r[k]) for r in parts)
                            for k in ("rows", "items", "skipped_expired", "deduplicated", "quarantined", "bytes",
                                      "stored_bytes", "object_count")}
    by: dict[str, int] = {}
    units: dict[str, float] = {}
    for r in parts:
        for k, v in r.get("quarantined_by", {}).items():
            by[k] = by.get(k, 0) + v
        for k, v in r.get("wcu_estimated", {}).items():
            units[k] = units.get(k, 0.0) + v
    return {**sums, "quarantined_by": by, "wcu_estimated": units}


def operations_for(sizes: list[float], cfg: Config) -> list[int]:
    """Each part's operation, in order: a new operation when the next part would take the current one above the
    input-size limit ([load] bulk_put_operation_gb) or the 50,000 objects an operation reads."""
    limit = cfg.load.bulk_put_operation_gb * 1024**3
    object_bytes = cfg.load.bulk_put_object_mb * 1024**2
    out, op, size, objects = [], 0, 0.0, 0
    for s in sizes:
        n = max(1, int(-(-s // object_bytes))) if s else 0
        if (size and size + s > limit) or objects + n > MAX_OBJECTS_PER_OPERATION:
            op, size, objects = op + 1, 0.0, 0
        out.append(op)
        size += s
        objects += n
    return out


def plan_lines(cfg: Config, total_bytes: float, part_bytes: list[float], units: int, items: float) -> list[str]:
    """The plan's bulk put lines for `total_bytes` of input in parts of `part_bytes`."""
    ld = cfg.load
    ops = operations_for(part_bytes, cfg)
    objects = sum(max(1, int(-(-b // (ld.bulk_put_object_mb * 1024**2)))) for b in part_bytes if b)
    gb = total_bytes / 1e9
    hours = items / units / 3600 if units else 0.0
    return [f"bulk put: about {gb:,.2f} GB of DynamoDB JSON in {objects:,} object(s) ({ld.bulk_put_compression}), "
            f"{(max(ops) + 1) if ops else 0} operation(s), {ld.bulk_put_tier} tier, MaxWriteRequestUnits {units:,}",
            f"bulk put cost: about ${gb * ld.bulk_put_price_per_gb:,.2f} at ${ld.bulk_put_price_per_gb:g} per GB "
            "([load] bulk_put_price_per_gb: an assumed default, see docs/load-methods.md); time: at least "
            f"{hours:,.2f} h at {units:,} write request units/s for items of 1 WCU, no loader running meanwhile"]


def dry_run_result(cfg: Config, month: str, record: dict[str, Any], setup: Setup) -> dict[str, Any]:
    """What the bulk put would write and cost, beside what batch-write would (its write units and cost)."""
    p = record["parts"]
    ld = cfg.load
    units = p["wcu_estimated"]
    total_wcu = sum(units.values())
    table_wcu = units.get("table", 0.0)
    ops = record["operations"]
    rate = setup.budget.bucket.target
    return {"month": month, "dry_run": True, "method": "bulk-put", "rows": p["rows"], "written": p["items"],
            "skipped_expired": p["skipped_expired"], "deduplicated": p["deduplicated"],
            "quarantined": p["quarantined"], "bytes": p["bytes"], "objects": p["object_count"],
            "operations": len(ops), "tier": ld.bulk_put_tier, "compression": ld.bulk_put_compression,
            "max_write_request_units": int(record["max_write_request_units"]),
            "cost_usd": round(p["bytes"] / 1e9 * ld.bulk_put_price_per_gb, 4),
            "price_per_gb": ld.bulk_put_price_per_gb,
            "batch_write": {"wcu_estimated": units, "wcu_estimated_total": total_wcu,
                            "cost_usd": round(setup.cost(total_wcu), 4),
                            "price_per_million_wcu": setup.price_per_million, "on_demand": setup.budget.on_demand,
                            "hours_at_budget": round(table_wcu / rate / 3600, 4) if rate else None,
                            "budget_wcu_per_s": round(rate, 1)}}


def commit(cfg: Config, store: staging.Store, month: str, record: dict[str, Any], t: dict[str, Any],
           started: float, setup: Setup) -> dict[str, Any]:
    """The month's load manifest from the operations' own counts; the record marked committed (a rerun starts
    over with new input)."""
    p = record["parts"]
    ops = record["operations"]
    processed = sum(int(op.get("processed", 0)) for op in ops)
    failed = sum(int(op.get("failed", 0)) for op in ops)
    written = processed - failed
    if written + failed + p["skipped_expired"] + p["deduplicated"] + p["quarantined"] != t.get("written"):
        raise EtlError(f"load {month}: counts do not reconcile with the Parquet rows: {written} written, {failed} "
                       f"failed, {p} vs {t.get('written')}")
    reports = [store.key_uri(op["report_prefix"]) for op in ops if op.get("failed")]
    manifest = staging.commit_manifest(store, month, "load", {
        "method": "bulk-put", "written": written, "failed": failed, "skipped_expired": p["skipped_expired"],
        "deduplicated": p["deduplicated"], "quarantined": p["quarantined"], "quarantined_by": p["quarantined_by"],
        "rows": p["rows"], "processed": processed, "partly_done": bool(failed), "reports": reports,
        "bytes": p["bytes"], "stored_bytes": p["stored_bytes"], "objects": p["object_count"],
        "bulk_put_bytes": sum(int(op.get("bulk_put_bytes") or 0) for op in ops),
        "tier": record["tier"], "max_write_request_units": record["max_write_request_units"],
        "input_run": record["run"],
        "operations": [{k: op.get(k) for k in ("operation", "arn", "status", "objects", "items", "processed",
                                               "failed", "bytes", "started_at", "ended_at")}
                       | {"report": store.key_uri(op["report_prefix"])} for op in ops],
        "duration_s": round(time.time() - started, 3),
        **setup.destination.record(), "region": setup.region,
        "include_expired": record["include_expired"], "expired_before": record["now"],
        "reconciles": "written + failed + skipped_expired + deduplicated + quarantined = rows in the Parquet; "
                      "written = processed - failed (DescribeBulkOperation)",
        "upstream_run": t.get("run_id"), "transform_run": t.get("run_id"),
        "config_hash": cfg.hash_of("load", "destination"),
    })
    store.write_json(staging.bulkput_state_key(month), {**record, "committed": True})
    _drop_older_input(store, month, str(record["run"]))
    return manifest


def _drop_older_input(store: staging.Store, month: str, run: str) -> None:
    """Earlier input runs of the month (a --force, a failed or cancelled operation) are not read again: their
    objects go once a load of the month is committed (this run's stay beside its manifest)."""
    top = staging.bulkput_input_prefix(month, run, 0).split(f"{run}/")[0]
    for other in {o.key[len(top):].split("/", 1)[0] for o in store.list(top)} - {run}:
        store.delete_prefix(f"{top}{other}/")
