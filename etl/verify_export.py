"""`etl verify --method export`: the destination compared with what the index must hold, through a PITR export of
the table (no read capacity used at all).

The table holds every month in one, so the comparison is one for the run, shared by its months:
  export    ExportTableToPointInTime of the destination into `verify/export/<time>/` (a wait on DynamoDB, on the
            driver; a rerun waits on the export recorded in `_state/verify/export.json`), or an adopted export
            whose table is checked to be the destination;
  split     on the engine, a task per export data file and per expected file (every loaded month's transformed
            parts and catch-up final state, by `etl.expected`'s rule): its rows split by a hash of the key into
            N buckets, written to `verify/buckets/<run>/bucket=B/` (N from `[verify] bucket_rows`);
  compare   on the engine, a task per bucket: its expected rows and its exported items joined on the key. A task
            holds one bucket of each side, so memory is bounded by the bucket, never by the table;
  report    per month asked: missing, different and extra rows with example keys, and the differences as Parquet
            (`verify/month=M/part-BBBBB.parquet`: the key, `kind`, `differing_columns`).

Which month an item belongs to: the month whose expected rows hold its key. An item no month expects is `extra`
for a loaded month when its creation time lies within that month's expected rows' creation times (and before
`[export] forward_writes_since`, from when the live service writes orders itself); otherwise it is counted apart as
`not_backfilled` (the forward writer's, or a month not loaded), never as an error. A key a catch-up deleted that is
still in the table is `extra` for its month. An expected row whose TTL had passed at the export's time and that is
not in the table is counted as `expired` (DynamoDB's TTL may have removed it), not as missing.

plan: per month, one task on the driver (the month's share of the run's comparison). commit: `verify.json`.
"""

from __future__ import annotations

import io
import math
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from isal import igzip

from etl import aws, expected, mapping, staging
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.errors import EtlError, ValidationFailed
from etl.export import pitr
from etl.export.inspect import inspect_export
from etl.freshness import Verdict
from etl.progress import QUIET, Reporter
from etl.runner import StageBase
from etl.transform.collisions import fingerprints
from etl.transform.lines import Truncated, chunks, parse

NAME = "verify"
EXAMPLES = 5
KINDS = ("missing", "different", "extra")
READ_INSTEAD = "use --method read (BatchGetItem of every loaded key, within a read budget)"
GB = 1024**3
_INTEGER = r"^-?[0-9]{1,18}$"


# --------------------------------------------------------------------------- the columns of a bucket


def _values(cfg: Config) -> list[pa.Field]:
    """The output columns that are not the key: compared as their DynamoDB JSON type and text (`S:x`, `N:1`)."""
    keys = set(mapping.key_columns(cfg))
    return [f for f in mapping.output_schema(cfg) if f.name not in keys]


def _created_column(cfg: Config) -> str | None:
    """The mapping's creation time (its first datetime column): which month an unexpected item falls in."""
    return next((c.name for c in cfg.transform.columns if c.converter == "datetime"), None)


def bucket_schema(cfg: Config, side: str) -> pa.Schema:
    """A bucket file's columns: the key as text, each value column as `v:NAME`, and per side what classifies a
    row (expected: its month, whether the key must be absent, its TTL; both: its creation time)."""
    fields = [pa.field(k, pa.string()) for k in mapping.key_columns(cfg)]
    fields += [pa.field(f"v:{f.name}", pa.string()) for f in _values(cfg)]
    if side == "expected":
        fields += [pa.field("_month", pa.string()), pa.field("_absent", pa.bool_()), pa.field("_expires", pa.int64())]
    return pa.schema([*fields, pa.field("_created", pa.int64())])


def diff_schema(cfg: Config) -> pa.Schema:
    """The differences dataset (sql/create_verify_table.sql): the key, the kind, the columns that differ."""
    return pa.schema([*(f.with_nullable(True) for f in mapping.output_schema(cfg) if f.name in
                        mapping.key_columns(cfg)),
                      pa.field("kind", pa.string()), pa.field("differing_columns", pa.list_(pa.string()))])


def _typed(cfg: Config, f: pa.Field, text: pa.Array) -> pa.Array:
    """A column as text -> `S:text` / `N:text` (null stays null)."""
    return pc.binary_join_element_wise("S:" if pa.types.is_string(f.type) else "N:", text, "")


def _int_of(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Integer text -> int64; anything else (a fraction, another type) -> null."""
    ok = pc.fill_null(pc.match_substring_regex(text, _INTEGER), False)
    return pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.int64())


def _expected_rows(cfg: Config, month: str, rows: pa.Table, absent: pa.Table) -> pa.Table:
    schema = bucket_schema(cfg, "expected")
    keys = mapping.key_columns(cfg)
    ttl_col, created = mapping.ttl_column(cfg), _created_column(cfg)
    out: dict[str, Any] = {k: pc.cast(rows[k], pa.string()) for k in keys}
    out.update({f"v:{f.name}": _typed(cfg, f, pc.cast(rows[f.name], pa.string())) for f in _values(cfg)})
    n = rows.num_rows
    out["_month"] = pa.array([month] * n, pa.string())
    out["_absent"] = pa.array(np.zeros(n, dtype=bool))
    out["_expires"] = pc.cast(rows[ttl_col], pa.int64()) if ttl_col else pa.nulls(n, pa.int64())
    out["_created"] = pc.cast(rows[created], pa.int64()) if created else pa.nulls(n, pa.int64())
    puts = pa.table(out, schema=schema)
    gone = {name: pa.nulls(absent.num_rows, schema.field(name).type) for name in schema.names}
    gone.update({k: pc.cast(absent[k], pa.string()) for k in keys})
    gone["_month"] = pa.array([month] * absent.num_rows, pa.string())
    gone["_absent"] = pa.array(np.ones(absent.num_rows, dtype=bool))
    return pa.concat_tables([puts, pa.table(gone, schema=schema)])


def item_schema(cfg: Config) -> pa.Schema:
    """What is read of an exported item: each output column as its S and N tags (another type parses too: a
    struct with neither set, which compares as different)."""
    attr = pa.struct([("S", pa.string()), ("N", pa.string())])
    return pa.schema([("Item", pa.struct([(f.name, attr) for f in mapping.output_schema(cfg)]))])


def _actual_rows(cfg: Config, items: pa.Table) -> tuple[pa.Table, int]:
    """Exported items -> bucket rows, and how many had no readable key (a key of another type than the mapping's)."""
    item = items["Item"].combine_chunks() if items.num_rows else pa.array([], item_schema(cfg).field("Item").type)
    schema = bucket_schema(cfg, "actual")
    out: dict[str, Any] = {}
    for f in mapping.output_schema(cfg):
        attr = pc.struct_field(item, f.name)
        s, n = pc.struct_field(attr, "S"), pc.struct_field(attr, "N")
        if f.name in mapping.key_columns(cfg):
            out[f.name] = s if pa.types.is_string(f.type) else n
        else:
            out[f"v:{f.name}"] = pc.coalesce(pc.binary_join_element_wise("S:", s, ""),
                                              pc.binary_join_element_wise("N:", n, ""))
    created = _created_column(cfg)
    if created:
        out["_created"] = _int_of(pc.struct_field(pc.struct_field(item, created), "N"))
    else:
        out["_created"] = pa.nulls(len(item), pa.int64())
    table = pa.table(out, schema=schema)
    readable = np.ones(table.num_rows, dtype=bool)
    for k in mapping.key_columns(cfg):
        readable &= np.asarray(pc.is_valid(table[k]).to_numpy(zero_copy_only=False), dtype=bool)
    return table.filter(pa.array(readable)), int((~readable).sum())


# --------------------------------------------------------------------------- tasks on the engine


@dataclass(frozen=True, kw_only=True)
class SplitExportTask:
    """One data file of the destination's export, split by key hash."""

    uri: str
    index: int
    run: str
    buckets: int


@dataclass(frozen=True, kw_only=True)
class SplitExpectedTask:
    """One file of what a loaded month must hold (`etl.expected`), split by key hash."""

    source: expected.Source
    index: int
    run: str
    buckets: int


@dataclass(frozen=True, kw_only=True)
class CompareTask:
    """One key-hash bucket: its expected rows and exported items joined on the key."""

    bucket: int
    run: str
    expected: tuple[str, ...]  # the bucket files of each side
    actual: tuple[str, ...]
    report: tuple[str, ...]  # the months asked for: their differences are written and counted
    ranges: tuple[tuple[str, int, int], ...]  # each loaded month's creation times (lowest, highest)
    since: int | None  # [export] forward_writes_since, epoch seconds
    export_time: int  # expected rows whose TTL passed by then may be gone


Task = SplitExportTask | SplitExpectedTask | CompareTask


def _write_buckets(cfg: Config, store: staging.Store, run: str, name: str, table: pa.Table,
                   buckets: int) -> list[int]:
    """The rows split by a hash of the key, one file per bucket they fall in; the buckets written."""
    if table.num_rows == 0:
        return []
    b = np.asarray(fingerprints(table, mapping.key_columns(cfg)), dtype=np.int64) % buckets
    order = np.argsort(b, kind="stable")
    b = b[order]
    table = table.take(pa.array(order))
    cuts = [0, *(np.flatnonzero(np.diff(b)) + 1).tolist(), len(b)]
    written = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        buf = io.BytesIO()
        pq.write_table(table.slice(lo, hi - lo), buf, compression="zstd")
        store.write(staging.verify_bucket_key(run, int(b[lo]), name), buf.getvalue())
        written.append(int(b[lo]))
    return written


def _split_export(cfg: Config, store: staging.Store, task: SplitExportTask, ctx: TaskContext) -> dict[str, Any]:
    schema = item_schema(cfg)
    names = [f.name for f in mapping.output_schema(cfg)]
    parts: list[pa.Table] = []
    unreadable = 0
    try:
        with staging.open_uri(task.uri, cfg.staging) as raw:
            stream: Any = igzip.IGzipFile(fileobj=raw, mode="rb") if task.uri.endswith(".gz") else raw
            for chunk, _ in chunks(stream):
                ctx.check()
                parsed = parse(chunk, schema, names)
                rows, bad = _actual_rows(cfg, parsed.table)
                parts.append(rows)
                unreadable += bad + len(parsed.malformed)
    except Truncated as exc:
        raise ValidationFailed(f"export data file {task.uri} is damaged: {exc}",
                               hint="take a new export: rerun without --use-existing") from None
    table = pa.concat_tables(parts) if parts else bucket_schema(cfg, "actual").empty_table()
    name = f"actual-{task.index:05d}"
    written = _write_buckets(cfg, store, task.run, name, table, task.buckets)
    ctx.progress(1)
    return {"side": "actual", "name": name, "buckets": written, "items": table.num_rows, "unreadable": unreadable}


def _split_expected(cfg: Config, store: staging.Store, task: SplitExpectedTask, ctx: TaskContext) -> dict[str, Any]:
    src = task.source
    rows, absent, _ = expected.expected(cfg, store, src)
    table = _expected_rows(cfg, src.month, rows, absent)
    name = f"expected-{src.month}-{task.index:05d}"
    written = _write_buckets(cfg, store, task.run, name, table, task.buckets)
    created = table["_created"]
    lo, hi = pc.min(created).as_py(), pc.max(created).as_py()
    ctx.progress(1)
    return {"side": "expected", "name": name, "buckets": written, "month": src.month, "rows": rows.num_rows,
            "absent": absent.num_rows, "created_min": lo, "created_max": hi}


def _read_side(store: staging.Store, run: str, bucket: int, names: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    tables = [pq.read_table(pa.BufferReader(store.read(staging.verify_bucket_key(run, bucket, n))))
              for n in names]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _mask(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)


def _unexpected_months(task: CompareTask, created: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For items no month expects: the loaded month (index into `task.ranges`) whose creation times hold the
    item's, or -1 (not backfilled: the forward writer's, or a month not loaded)."""
    t = np.asarray(pc.fill_null(created, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False))
    known = _mask(pc.is_valid(created))
    if task.since is not None:
        known &= t < task.since
    out = np.full(len(t), -1, dtype=np.int64)
    for i, (_, lo, hi) in enumerate(task.ranges):
        out[(out < 0) & known & (t >= lo) & (t <= hi)] = i
    return out


def _key_of(cfg: Config, table: pa.Table, i: int) -> dict[str, Any]:
    """A row's key as the manifest shows it (an integer key as a number)."""
    out: dict[str, Any] = {}
    for f in mapping.output_schema(cfg):
        if f.name in mapping.key_columns(cfg):
            v = table[f.name][i].as_py()
            out[f.name] = int(v) if v is not None and not pa.types.is_string(f.type) and _is_int(v) else v
    return out


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and len(text.lstrip("-")) <= 18


def _compare(cfg: Config, store: staging.Store, task: CompareTask, ctx: TaskContext) -> dict[str, Any]:
    keys = mapping.key_columns(cfg)
    values = [f.name for f in _values(cfg)]
    exp = _read_side(store, task.run, task.bucket, task.expected, bucket_schema(cfg, "expected"))
    act = _read_side(store, task.run, task.bucket, task.actual, bucket_schema(cfg, "actual"))
    act = act.rename_columns([f"a:{n[2:]}" if n.startswith("v:") else ("_a_created" if n == "_created" else n)
                              for n in act.column_names])
    act = act.append_column("_in_table", pa.array(np.ones(act.num_rows, dtype=bool)))
    ctx.check()
    j = exp.join(act, keys=keys, join_type="full outer")
    has_e, has_a = _mask(pc.is_valid(j["_month"])), _mask(pc.is_valid(j["_in_table"]))
    absent = _mask(j["_absent"])
    expired = _mask(pc.less_equal(j["_expires"], task.export_time))
    gone = has_e & ~absent & ~has_a
    both = has_e & ~absent & has_a
    differs = {c: both & _mask(pc.is_valid(j[f"v:{c}"])) & ~_mask(pc.equal(j[f"v:{c}"], j[f"a:{c}"]))
               for c in values}
    different = np.zeros(j.num_rows, dtype=bool)
    for d in differs.values():
        different |= d
    unexpected = ~has_e & has_a
    where = _unexpected_months(task, j["_a_created"])
    month = np.asarray(j["_month"].to_pylist(), dtype=object)
    months = [m for m, _, _ in task.ranges]
    un_month = np.array([months[i] if i >= 0 else None for i in where.tolist()], dtype=object)
    month = np.where(unexpected, un_month, month)
    kind = np.zeros(j.num_rows, dtype=np.int8)  # 0: as expected, else 1 + its index in KINDS
    kind[gone & ~expired] = 1
    kind[different] = 2
    kind[(has_e & absent & has_a) | (unexpected & (where >= 0))] = 3
    nb = np.flatnonzero(unexpected & (where < 0))
    result: dict[str, Any] = {"months": {}, "not_backfilled": len(nb), "in_table": int(has_a.sum()),
                              "not_backfilled_examples": [_key_of(cfg, j, int(i)) for i in nb[:EXAMPLES]]}
    for m in task.report:
        mine = month == m
        counts: dict[str, Any] = {"checked": int((has_e & mine).sum()), "expired": int((gone & expired & mine).sum())}
        rows = np.flatnonzero(mine & (kind > 0))
        for code, k in enumerate(KINDS, 1):
            idx = rows[kind[rows] == code]
            counts[k] = len(idx)
            counts[f"{k}_examples"] = [
                {**_key_of(cfg, j, int(i)), **({"columns": [c for c in values if differs[c][i]]}
                                               if k == "different" else {})} for i in idx[:EXAMPLES]]
        if len(rows):
            _write_diffs(cfg, store, m, task.bucket, j, rows, kind, differs)
        result["months"][m] = counts
    ctx.progress(1)
    return result


def _write_diffs(cfg: Config, store: staging.Store, month: str, bucket: int, j: pa.Table, rows: np.ndarray,
                 kind: np.ndarray, differs: dict[str, np.ndarray]) -> None:
    schema = diff_schema(cfg)
    sel = j.take(pa.array(rows))
    out: dict[str, Any] = {}
    for f in schema:
        if f.name == "kind":
            out["kind"] = pa.array([KINDS[k - 1] for k in kind[rows].tolist()], pa.string())
        elif f.name == "differing_columns":
            out[f.name] = pa.array([[c for c, d in differs.items() if d[i]] for i in rows.tolist()],
                                   pa.list_(pa.string()))
        else:
            out[f.name] = sel[f.name] if pa.types.is_string(f.type) else _int_of(sel[f.name])
    buf = io.BytesIO()
    pq.write_table(pa.table(out, schema=schema), buf, compression="zstd")
    store.write(staging.verify_diffs_key(month, bucket), buf.getvalue())


def run_task(cfg: Config, task: Task, ctx: TaskContext) -> dict[str, Any]:
    """One task of the comparison on the engine: split a file by key hash, or compare one bucket."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    if isinstance(task, SplitExportTask):
        return _split_export(cfg, store, task, ctx)
    if isinstance(task, SplitExpectedTask):
        return _split_expected(cfg, store, task, ctx)
    return _compare(cfg, store, task, ctx)


# --------------------------------------------------------------------------- the destination's export


def _epoch(iso: str | None) -> int | None:
    if not iso:
        return None
    t = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    return int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())


def take_export(cfg: Config, store: staging.Store, desc: dict[str, Any], reporter: Reporter, ctx: TaskContext,
                enable_pitr: bool, again: str) -> dict[str, Any]:
    """A PITR export of the destination into `verify/export/<time>/`, or the one a run before started (recorded
    in `_state/verify/export.json` until its comparison ends); waits until it is complete."""
    if not isinstance(store, staging.S3Store):
        raise EtlError(f"DynamoDB can only export to S3, but the staging root is the local directory {store.uri}",
                       hint=f"{READ_INSTEAD}, or adopt an export of the destination with --use-existing URI")
    ddb = aws.client(cfg.destination, "dynamodb")
    table, table_arn = desc["TableName"], desc["TableArn"]
    pitr.check_pitr(ddb, table, enable_pitr, reporter, instead=READ_INSTEAD)
    pitr.check_bucket(cfg, store)
    key = staging.verify_export_state_key()
    rec = store.read_json(key) if store.exists(key) else None
    if rec and rec.get("table_arn") == table_arn and rec.get("export_arn"):
        try:
            state = ddb.describe_export(ExportArn=rec["export_arn"])["ExportDescription"]["ExportStatus"]
        except botocore.exceptions.ClientError:
            state = "UNKNOWN"
        if state in ("IN_PROGRESS", "COMPLETED"):
            reporter.info(f"verify: using the export of {table} a run before started at {rec['export_time']} "
                          f"({state})")
        else:
            rec = None
    else:
        rec = None
    if rec is None:
        at = datetime.now(UTC).replace(microsecond=0)
        prefix = staging.verify_export_prefix(at.strftime("%Y%m%dT%H%M%SZ"))
        bucket, s3_prefix = store.s3_location(prefix)
        token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table_arn}|{at.isoformat()}|verify"))
        rec = {"table": table, "table_arn": table_arn, "export_time": at.isoformat(), "prefix": prefix,
               "client_token": token, "started_at": staging.utcnow_iso()}
        store.write_json(key, rec)
        r = ddb.export_table_to_point_in_time(TableArn=table_arn, ExportTime=at, ClientToken=token, S3Bucket=bucket,
                                              S3Prefix=s3_prefix, ExportFormat="DYNAMODB_JSON",
                                              **pitr.export_destination(cfg))
        rec = {**rec, "export_arn": r["ExportDescription"]["ExportArn"]}
        store.write_json(key, rec)
        reporter.info(f"verify: started an export of {table} ({rec['export_arn']})")
    d = pitr.wait_for(ddb, rec["export_arn"], cfg, reporter, ctx, what=f"verify export of {table}",
                      label=f"the verify's export of {table}", again=again)
    folder = pitr.find_folder(store, rec["prefix"], d)
    checked = inspect_export(folder)
    return {"mode": "pitr", "export_arn": rec["export_arn"], "export_time": rec["export_time"],
            "export_folder": folder.uri, "item_count": d.get("ItemCount", checked.get("item_count")),
            "billed_size_bytes": d.get("BilledSizeBytes"), "verified": checked["verified"],
            "verification": checked["verification"], "files": [f["uri"] for f in checked["files"]]}


def _exported_by(ddb: Any, table_arn: str, folder: staging.Store) -> dict[str, Any] | None:
    """The destination's export that wrote `folder` (an emulator's export has no manifest naming its table)."""
    kwargs: dict[str, Any] = {"TableArn": table_arn}
    while True:
        page = ddb.list_exports(**kwargs)
        for s in page.get("ExportSummaries", []):
            d = ddb.describe_export(ExportArn=s["ExportArn"])["ExportDescription"]
            base = f"s3://{d.get('S3Bucket')}/{str(d.get('S3Prefix') or '').strip('/')}".rstrip("/") + "/"
            if d.get("TableArn") == table_arn and folder.uri.startswith(base):
                return dict(d)
        if not page.get("NextToken"):
            return None
        kwargs["NextToken"] = page["NextToken"]


def adopt_export(cfg: Config, desc: dict[str, Any], uri: str) -> dict[str, Any]:
    """An export folder that already exists, checked to be a full export of the destination: its
    manifest-summary.json's tableArn, else the destination's own export that wrote it."""
    folder = staging.open_store(uri.rstrip("/"), cfg.staging)
    checked = inspect_export(folder)
    if checked.get("export_type") == "INCREMENTAL_EXPORT":
        raise EtlError(f"{folder.uri} is an incremental export, not a full export of {desc['TableName']}",
                       hint="adopt a full export of the destination, or run without --use-existing")
    summary = folder.read_json("manifest-summary.json") if folder.exists("manifest-summary.json") else {}
    made = None if summary.get("tableArn") else _exported_by(aws.client(cfg.destination, "dynamodb"),
                                                             desc["TableArn"], folder)
    arn = summary.get("tableArn") or (made or {}).get("TableArn")
    if arn is None:
        raise EtlError(f"cannot tell which table {folder.uri} is an export of: it has no manifest-summary.json and "
                       f"no export of {desc['TableName']} wrote it", hint="adopt an export with its manifests")
    if arn != desc["TableArn"]:
        raise EtlError(f"{folder.uri} is an export of {arn}, not of the destination {desc['TableArn']}",
                       hint="adopt an export of the destination table, or run without --use-existing")
    when = summary.get("exportTime") or (made or {}).get("ExportTime")
    return {"mode": "adopted", "export_arn": summary.get("exportArn") or (made or {}).get("ExportArn"),
            "export_time": when.isoformat() if isinstance(when, datetime) else when, "export_folder": folder.uri,
            "item_count": checked.get("item_count") or (made or {}).get("ItemCount"),
            "billed_size_bytes": summary.get("billedSizeBytes") or (made or {}).get("BilledSizeBytes"),
            "verified": checked["verified"], "verification": checked["verification"],
            "files": [f["uri"] for f in checked["files"]]}


# --------------------------------------------------------------------------- the plan


def plan_text(cfg: Config, desc: dict[str, Any], rows: int, adopted: str | None) -> list[str]:
    """The export's cost beside a BatchGetItem read-back's (time at the read budget, and its read units' cost)."""
    v, ld = cfg.verify, cfg.load
    size, items = int(desc.get("TableSizeBytes") or 0), int(desc.get("ItemCount") or 0)
    lines = [f"verify by export of {desc['TableName']}: {size / GB:,.2f} GB, {items:,} items (DescribeTable's "
             "figures, refreshed about every 6 hours); no read capacity used"]
    if adopted:
        lines.append(f"  export:    adopted {adopted}: no export cost")
    else:
        lines.append(f"  export:    ${size / GB * v.export_price_per_gb:,.2f} at ${v.export_price_per_gb:g} per GB "
                     "of table size ([verify] export_price_per_gb); DynamoDB's own time, minutes to hours")
    rcu = rows * 0.5
    provisioned = float((desc.get("ProvisionedThroughput") or {}).get("ReadCapacityUnits") or 0)
    rate = ld.max_rcu or (provisioned * (ld.read_capacity_fraction or 0.5) if provisioned else 0.0)
    when = (f"{rcu / rate / 3600:,.1f} h at {rate:,.0f} RCU/s" if rate else
            "no read budget for an on-demand table without [load] max_rcu")
    lines.append(f"  read-back: {rows:,} loaded items x 0.5 RCU (eventually consistent) = {rcu:,.0f} RCU: {when}, "
                 f"${rcu / 1e6 * v.price_per_million_rcu:,.2f} at ${v.price_per_million_rcu:g} per million read "
                 "units ([verify] price_per_million_rcu)")
    return lines


def plan(cfg: Config, store: staging.Store, month: str, destination: staging.Destination | None = None) -> MonthPlan:
    """The month's share of the run's comparison: one task on the driver; its load must be of this table."""
    expected.loaded_into(store, month, destination)
    return MonthPlan([month], None, "s")


def loaded_months(store: staging.Store, destination: staging.Destination | None) -> dict[str, dict[str, Any]]:
    """Every month with a committed load into the destination (each one's load manifest): what the table must
    hold is theirs together."""
    out = {}
    for m in staging.known_months(store):
        load = staging.read_manifest(store, m, "load")
        if load and not load.get("dry_run") and (destination is None or destination.holds(load)):
            out[m] = load
    return out


def commit(cfg: Config, store: staging.Store, month: str, result: dict[str, Any], started: float) -> dict[str, Any]:
    load = staging.read_manifest(store, month, "load") or {}
    bad = result["missing"] + result["different"] + result["extra"] + result["unreadable"]
    return staging.commit_manifest(store, month, NAME, {
        "ok": bad == 0, "method": "export", **result, "table": cfg.destination_table(),
        "upstream_run": load.get("run_id"), "duration_s": round(time.time() - started, 3)})


# --------------------------------------------------------------------------- the stage


class VerifyExportStage(StageBase):
    """The verify by export on the Runner. The export and the comparison are one for the run (the table holds
    every month): the first month's driver thread takes the export and runs the split and compare tasks on the
    engine; every month's task then takes its share of the result and commits it."""

    name = NAME
    pool = "verify"
    on_driver = True

    def __init__(self, cfg: Config, store: staging.Store, reporter: Reporter = QUIET, *, force: bool = False,
                 destination: staging.Destination | None = None, desc: dict[str, Any] | None = None,
                 use_existing: str | None = None, enable_pitr: bool = False) -> None:
        super().__init__(cfg, store, force=force)
        self.reporter, self.destination, self.desc = reporter, destination, desc
        self.use_existing, self.enable_pitr = use_existing, enable_pitr
        self.months: list[str] = []
        self._lock = threading.Lock()
        self._outcome: dict[str, Any] | BaseException | None = None

    def skip(self, month: str, verdict: Verdict) -> str | None:
        return "already verified, skipped" if verdict.current else None

    def command(self, months: list[str]) -> str:
        extra = f" --use-existing {self.use_existing}" if self.use_existing else ""
        return super().command(months) + " --method export" + extra

    def _describe(self) -> dict[str, Any]:
        if self.desc is None:
            ddb = aws.client(self.cfg.destination, "dynamodb")
            self.desc = dict(ddb.describe_table(TableName=self.cfg.destination_table())["Table"])
        return self.desc

    def preflight(self, months: list[str]) -> None:
        self.months = sorted(months)
        desc = self._describe()
        if self.destination is None:
            self.destination = staging.destination_of(desc)
        loads = loaded_months(self.store, self.destination)
        rows = sum(int(loads[m].get("written", 0)) for m in self.months if m in loads)
        for line in plan_text(self.cfg, desc, rows, self.use_existing):
            self.reporter.info(line)
        if not self.use_existing:
            if not isinstance(self.store, staging.S3Store):
                raise EtlError(f"DynamoDB can only export to S3, but the staging root is the local directory "
                               f"{self.store.uri}", hint=f"{READ_INSTEAD}, or adopt an export of the destination "
                                                         "with --use-existing URI")
            ddb = aws.client(self.cfg.destination, "dynamodb")
            pitr.check_pitr(ddb, desc["TableName"], self.enable_pitr, self.reporter, instead=READ_INSTEAD)

    def plan(self, month: str) -> MonthPlan:
        return plan(self.cfg, self.store, month, self.destination)

    def run_task(self, cfg: Config, task: str, ctx: TaskContext) -> dict[str, Any]:
        """The month's share of the run's comparison (made by the first month to get here; the others wait)."""
        with self._lock:
            if self._outcome is None:
                try:
                    self._outcome = self._compare_all(ctx)
                except BaseException as exc:
                    self._outcome = exc
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return dict(self._outcome["months"][task])

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        [result] = results
        return commit(self.cfg, self.store, month, result, plan.started)

    # ------------------------------------------------------------------ the run's comparison

    def _compare_all(self, ctx: TaskContext) -> dict[str, Any]:
        cfg, store = self.cfg, self.store
        reporter: Reporter = ctx.reporter or self.reporter
        desc = self._describe()
        export = (adopt_export(cfg, desc, self.use_existing) if self.use_existing else
                  take_export(cfg, store, desc, reporter, ctx, self.enable_pitr, self.command(self.months)))
        if not export["verified"]:
            reporter.warn(f"verify: {export['verification']}")
        loads = loaded_months(store, self.destination)
        self._warn_older(export, loads, reporter)
        sources = [s for m in sorted(loads) for s in expected.sources(store, m, loads[m])]
        staged = sum(int(p.get("rows", 0)) for m in loads
                     for p in (staging.read_manifest(store, m, "transform") or {}).get("parts", []))
        buckets = max(1, math.ceil(max(staged, int(export.get("item_count") or 0)) / cfg.verify.bucket_rows))
        run = uuid.uuid4().hex
        try:
            split = self._engine(ctx, reporter, "verify split", [
                *(SplitExportTask(uri=u, index=i, run=run, buckets=buckets) for i, u in enumerate(export["files"])),
                *(SplitExpectedTask(source=s, index=i, run=run, buckets=buckets) for i, s in enumerate(sources))])
            for m in self.months:  # a rerun's differences replace the last ones
                store.delete_prefix(staging.verify_diffs_prefix(m))
            compared = self._engine(ctx, reporter, "verify compare",
                                    self._compare_tasks(cfg, run, buckets, split, export))
        finally:
            store.delete_prefix(staging.verify_buckets_prefix(run))
        store.delete(staging.verify_export_state_key())  # compared: the next verify takes a new export
        return self._results(export, buckets, split, compared)

    def _engine(self, ctx: TaskContext, reporter: Reporter, what: str, tasks: list[Task]) -> list[dict[str, Any]]:
        progress = reporter.task(what, len(tasks), "tasks")
        ctx.progress = progress.advance
        try:
            return list(ctx.engine.run(self.pool, self.cfg.verify.concurrency, run_task, self.cfg, tasks, ctx))
        finally:
            progress.finish()

    def _compare_tasks(self, cfg: Config, run: str, buckets: int, split: list[dict[str, Any]],
                       export: dict[str, Any]) -> list[Task]:
        sides: dict[int, dict[str, list[str]]] = {}
        ranges: dict[str, tuple[int, int]] = {}
        for r in split:
            for b in r["buckets"]:
                sides.setdefault(b, {"expected": [], "actual": []})[r["side"]].append(r["name"])
            if r["side"] == "expected" and r["created_min"] is not None:
                lo, hi = ranges.get(r["month"], (r["created_min"], r["created_max"]))
                ranges[r["month"]] = (min(lo, r["created_min"]), max(hi, r["created_max"]))
        at = _epoch(export.get("export_time")) or int(time.time())
        since = _epoch(cfg.export.forward_writes_since)
        spans = tuple((m, lo, hi) for m, (lo, hi) in sorted(ranges.items()))
        return [CompareTask(bucket=b, run=run, expected=tuple(s["expected"]), actual=tuple(s["actual"]),
                            report=tuple(self.months), ranges=spans, since=since, export_time=at)
                for b, s in sorted(sides.items())]

    def _results(self, export: dict[str, Any], buckets: int, split: list[dict[str, Any]],
                 compared: list[dict[str, Any]]) -> dict[str, Any]:
        used = {k: export.get(k) for k in ("mode", "export_arn", "export_time", "export_folder", "item_count",
                                           "billed_size_bytes", "verified")}
        nb = sum(r["not_backfilled"] for r in compared)
        nb_examples = [e for r in compared for e in r["not_backfilled_examples"]][:EXAMPLES]
        unreadable = sum(r.get("unreadable", 0) for r in split)
        months: dict[str, dict[str, Any]] = {}
        for m in self.months:
            got = [r["months"][m] for r in compared if m in r["months"]]
            out: dict[str, Any] = {k: sum(g[k] for g in got) for k in ("checked", "expired", *KINDS)}
            for k in KINDS:
                out[f"{k}_examples"] = [e for g in got for e in g[f"{k}_examples"]][:EXAMPLES]
            diffs = self.store.list(staging.verify_diffs_prefix(m))
            months[m] = {**out, "not_backfilled": nb, "not_backfilled_examples": nb_examples,
                         "unreadable": unreadable, "export": used, "buckets": buckets,
                         "differences": self.store.key_uri(staging.verify_diffs_prefix(m)) if diffs else None}
        return {"months": months}

    def _warn_older(self, export: dict[str, Any], loads: dict[str, dict[str, Any]], reporter: Reporter) -> None:
        """An export taken before a month's load (or catch-up) committed cannot hold what it wrote."""
        at = _epoch(export.get("export_time"))
        if at is None:
            return
        late = [m for m in self.months if m in loads and (_epoch(loads[m].get("committed_at")) or 0) > at]
        if late:
            reporter.warn(f"verify: the export was taken at {export['export_time']}, before the load of "
                          f"{', '.join(late)} committed: what that load wrote after it shows as missing")
