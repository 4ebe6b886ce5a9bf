"""Stage 2: export data files -> projected, converted Parquet; rows that fail go to quarantine.

Plan: one task per export data file (part NNNNN = its index). A task streams the gzip file in
chunks, parses each chunk with pyarrow's JSON reader against an explicit schema of only the mapped
attributes, converts whole columns at once (`etl.convert`), and writes
`transformed/month=M/part-NNNNN.parquet` plus `rejected/month=M/part-NNNNN.jsonl.gz`.
Commit: per-part counts, `items_in = written + filtered + rejected` (checked), key collisions, and the
manifest last.

Row outcome, first match wins: malformed_line > type_mismatch > filtered > missing_attribute >
bad_datetime / bad_int. Key collisions (two rows, one (CustomerID, CreationDateTime)) stay in the
Parquet; the losers are listed in `_state/month=M/transform-collisions.parquet` and the load skips
them. The winner is the row with the greatest OrderID (then the first in file order).
"""

from __future__ import annotations

import gzip
import importlib
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from etl import convert, staging
from etl.config import ColumnSpec, Config
from etl.engine import run_months
from etl.errors import EtlError, StageNotReady
from etl.progress import QUIET, Reporter, Task

CHUNK = 32 * 1024 * 1024
REASONS = ("malformed_line", "type_mismatch", "missing_attribute", "bad_datetime", "bad_int")
COLLISIONS = "transform-collisions.parquet"
_ATTR = pa.struct([
    ("S", pa.string()), ("N", pa.string()), ("B", pa.string()), ("BOOL", pa.bool_()), ("NULL", pa.bool_()),
    ("SS", pa.list_(pa.string())), ("NS", pa.list_(pa.string())), ("BS", pa.list_(pa.string())),
])
_TYPE_NAMES = ("S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS")


def output_schema(cfg: Config) -> pa.Schema:
    fields = [pa.field(c.name, pa.string() if c.converter == "string" else pa.int64(),
                       nullable=not (c.required or c.name in (cfg.destination.partition_key, cfg.destination.sort_key)))
              for c in cfg.transform.columns]
    return pa.schema(fields)


def source_attributes(cfg: Config) -> list[str]:
    names = [c.source for c in cfg.transform.columns if c.converter != "ttl"]
    return list(dict.fromkeys([*names, *cfg.transform.non_empty]))


def parse_schema(cfg: Config) -> pa.Schema:
    return pa.schema([("Item", pa.struct([(a, _ATTR) for a in source_attributes(cfg)]))])


def load_hook(spec: str | None) -> Callable[[pa.Table], pa.Table] | None:
    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise EtlError(f"transform hook {spec!r} cannot be loaded: {exc}",
                       hint="hook = \"module:function\", with the module importable (on PYTHONPATH)") from None
    if not callable(fn):
        raise EtlError(f"transform hook {spec!r} is not a function")
    return fn


# --------------------------------------------------------------------------- one chunk


@dataclass
class ChunkResult:
    table: pa.Table
    items_in: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)  # (reason, message, raw line)


def _lines(chunk: bytes) -> list[bytes]:
    return [line for line in chunk.split(b"\n") if line.strip()]


def _parse(chunk: bytes, schema: pa.Schema, attrs: list[str]) -> tuple[pa.Table, list[bytes], list[tuple[bytes, str]]]:
    """Parse a chunk; if pyarrow refuses it, find the bad lines one by one and parse the rest.

    Returns the table, the raw lines behind its rows (only when the slow path ran, else []), and
    malformed lines with their message."""
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    ropts = pj.ReadOptions(use_threads=True, block_size=4 << 20)
    try:
        return pj.read_json(io.BytesIO(chunk), read_options=ropts, parse_options=opts), [], []
    except pa.ArrowInvalid:
        pass
    good: list[bytes] = []
    bad: list[tuple[bytes, str]] = []
    for line in _lines(chunk):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append((line, f"not JSON: {exc}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("Item"), dict):
            bad.append((line, "no Item object"))
            continue
        wrong = [a for a in attrs if a in obj["Item"] and not isinstance(obj["Item"][a], dict)]
        if wrong:
            bad.append((line, f"attribute {wrong[0]} is not DynamoDB JSON (a {{type: value}} object)"))
            continue
        try:
            pj.read_json(io.BytesIO(line), read_options=ropts, parse_options=opts)
        except pa.ArrowInvalid as exc:
            bad.append((line, f"not DynamoDB JSON: {exc}"))
            continue
        good.append(line)
    if not good:
        return pa.table({"Item": pa.array([], schema.field("Item").type)}), [], bad
    return pj.read_json(io.BytesIO(b"\n".join(good)), read_options=ropts, parse_options=opts), good, bad


def _np(a: pa.Array) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False))


def _present_types(attr: pa.Array, idx: int) -> str:
    present = [t for t in _TYPE_NAMES if attr.field(t)[idx].is_valid]
    return "/".join(present) or "L or M"


def _message(kind: str, source: str, attr: pa.Array, i: int, expected: str) -> str:
    if kind == "missing_attribute":
        return f"{source} is missing"
    if kind == "type_mismatch":
        return f"{source}: expected {expected}, got {_present_types(attr, i)}"
    value = attr.field("S")[i].as_py() or attr.field("N")[i].as_py()
    if kind == "bad_int":
        return f"{source}: {value!r} is not an integer"
    return f"{source}: {value!r} is not a date-time (ISO-8601, yyyy-MM-dd, epoch or a configured pattern)"


def convert_chunk(chunk: bytes, cfg: Config, schema: pa.Schema, out_schema: pa.Schema) -> ChunkResult:
    attrs = source_attributes(cfg)
    t = cfg.transform
    table, raw, malformed = _parse(chunk, schema, attrs)
    result = ChunkResult(table=out_schema.empty_table())
    result.rejected.extend(("malformed_line", msg, line) for line, msg in malformed)
    n = table.num_rows
    result.items_in = n + len(malformed)
    if n == 0:
        return result
    item = table.column("Item").combine_chunks()
    reason = np.full(n, -1, dtype=np.int8)  # index into REASONS, -1 = fine
    messages: dict[int, str] = {}
    filtered = np.zeros(n, dtype=bool)
    filter_reason = np.full(n, "", dtype=object)
    no_item = ~_np(pc.is_valid(item))
    values: dict[str, pa.Array] = {}
    problems: list[tuple[np.ndarray, str, str, pa.Array, str]] = []  # (rows, reason, attribute, values, expected)

    def attr_of(name: str) -> pa.Array:
        a = item.field(name)
        return a

    for col in t.columns:
        if col.converter == "ttl":
            continue
        a = attr_of(col.source)
        present = _np(pc.is_valid(a)) & ~no_item
        s_ok = _np(pc.is_valid(a.field("S")))
        n_ok = _np(pc.is_valid(a.field("N")))
        if col.converter == "string":
            expected, mismatch = "S", present & ~s_ok
            values[col.name] = a.field("S")
        elif col.converter == "int":
            expected, mismatch = "N", present & ~n_ok
            ints = convert.parse_epoch_numbers(a.field("N"))
            whole = _np(pc.fill_null(pc.match_substring_regex(a.field("N"), r"^\s*[+-]?\d+\s*$"), False))
            values[col.name] = pc.if_else(pa.array(whole), ints, pa.scalar(None, pa.int64()))
            bad = present & n_ok & ~whole
            problems.append((bad, "bad_int", col.source, a, "N"))
        else:  # datetime
            expected, mismatch = "S or N", present & ~s_ok & ~n_ok
            from_s = convert.parse_datetimes(a.field("S"), t.date_zone, t.date_formats)
            from_n = convert.parse_epoch_numbers(a.field("N"), t.epoch_unit)
            values[col.name] = pc.coalesce(from_s, from_n)
            bad = present & (s_ok | n_ok) & ~_np(pc.is_valid(values[col.name]))
            problems.append((bad, "bad_datetime", col.source, a, "S or N"))
        if col.required:
            problems.append((~present & ~no_item, "missing_attribute", col.source, a, expected))
        problems.append((mismatch, "type_mismatch", col.source, a, expected))
    for name in t.non_empty:
        a = attr_of(name)
        s = a.field("S")
        present = _np(pc.is_valid(a))
        empty = _np(pc.fill_null(pc.equal(s, ""), False))
        wrong_type = present & ~_np(pc.is_valid(s))
        mask = (~present | empty) & ~wrong_type & ~no_item
        filter_reason[mask & ~filtered] = np.where(empty[mask & ~filtered], f"empty_{name}", f"missing_{name}")
        filtered |= mask
        if not any(c.source == name and c.converter == "string" for c in t.columns):
            problems.append((wrong_type & ~no_item, "type_mismatch", name, a, "S"))
    # priority: lower list position of REASONS wins; filtered sits between type_mismatch and the rest
    for mask, kind, source, attr, expected in sorted(problems, key=lambda p: -REASONS.index(p[1])):
        reason[mask] = REASONS.index(kind)
        for i in np.nonzero(mask)[0]:
            messages[int(i)] = _message(kind, source, attr, int(i), expected)
    type_mm = reason == REASONS.index("type_mismatch")
    filtered &= ~type_mm
    reason[filtered] = -1
    reason[no_item] = REASONS.index("malformed_line")
    for i in np.nonzero(no_item)[0]:
        messages[int(i)] = "no Item object"
    filtered &= ~no_item
    keep = (reason < 0) & ~filtered
    if (reason >= 0).any():
        lines = raw or _lines(chunk)
        if len(lines) != n:
            raise EtlError(f"internal: {len(lines)} lines for {n} parsed rows")
        for i in np.nonzero(reason >= 0)[0]:
            result.rejected.append((REASONS[reason[i]], messages.get(int(i), ""), lines[i]))
    for r in filter_reason[filtered]:
        result.filtered[r] = result.filtered.get(r, 0) + 1
    keep_arr = pa.array(keep)
    cols = {}
    for col in t.columns:
        if col.converter == "ttl":
            continue
        cols[col.name] = pc.filter(values[col.name], keep_arr)
    for col in t.columns:
        if col.converter == "ttl":
            cols[col.name] = convert.ttl(cols[col.base], t.ttl_seconds)
    result.table = pa.table([cols[c.name] for c in t.columns], schema=out_schema)
    return result


# --------------------------------------------------------------------------- one task (one data file)


def _open_data(uri: str, cfg: Config) -> Any:
    if uri.startswith("s3://"):
        bucket, key = staging.split_s3(uri)
        store = staging.open_store(f"s3://{bucket}", cfg.staging)
        body = store.s3.get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[attr-defined]
        raw = pa.PythonFile(body, mode="r")
    else:
        raw = pa.OSFile(uri, "rb")
    if uri.endswith(".gz"):
        return pa.CompressedInputStream(raw, "gzip")
    return raw


def transform_file(cfg: Config, store: staging.Store, month: str, part: int, uri: str,
                   hook: Callable[[pa.Table], pa.Table] | None, task: Task | None = None) -> dict[str, Any]:
    schema = parse_schema(cfg)
    out_schema = output_schema(cfg)
    counts: dict[str, Any] = {"items_in": 0, "written": 0, "filtered": 0, "rejected": 0,
                              "filtered_by": {}, "rejected_by": {}}
    line_no = 0
    rej_key = staging.rejected_key(month, part)
    out_key = staging.transformed_key(month, part)
    rej_buf = io.BytesIO()
    rej_gz = gzip.GzipFile(fileobj=rej_buf, mode="wb", mtime=0)
    stream = _open_data(uri, cfg)
    with store.open_write(out_key) as sink, stream:
        writer = pq.ParquetWriter(sink, out_schema, compression="zstd")
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush(final: bool = False) -> None:
            nonlocal pending, pending_rows
            while pending_rows >= cfg.transform.row_group_rows or (final and pending_rows):
                t = pa.concat_tables(pending)
                take = min(cfg.transform.row_group_rows, t.num_rows)
                writer.write_table(t.slice(0, take), row_group_size=take)
                rest = t.slice(take)
                pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

        def handle(chunk: bytes) -> None:
            nonlocal line_no, pending_rows
            r = convert_chunk(chunk, cfg, schema, out_schema)
            if hook is not None and r.table.num_rows:
                r.table = _apply_hook(hook, cfg, r.table, out_schema, counts)
            counts["items_in"] += r.items_in
            counts["written"] += r.table.num_rows
            for k, v in r.filtered.items():
                counts["filtered_by"][k] = counts["filtered_by"].get(k, 0) + v
                counts["filtered"] += v
            for reason, message, line in r.rejected:
                counts["rejected_by"][reason] = counts["rejected_by"].get(reason, 0) + 1
                counts["rejected"] += 1
                rej_gz.write(orjson.dumps({"reason": reason, "message": message, "file": uri,
                                           "line": line.decode("utf-8", "replace")}) + b"\n")
            line_no += chunk.count(b"\n")
            if r.table.num_rows:
                pending.append(r.table)
                pending_rows += r.table.num_rows
                flush()
            if task is not None:
                task.advance(r.items_in, MB=round(counts.get("bytes", 0) / 1e6))

        try:
            carry = b""
            while True:
                try:
                    block = stream.read(CHUNK)
                except OSError as exc:
                    reached = line_no + carry.count(b"\n")
                    raise EtlError(
                        f"{uri}: the gzip data ends early ({exc}) after line {reached}; "
                        f"{counts['items_in']} items were read before it",
                        hint="the export file is damaged: re-export the month (`etl export --month "
                        f"{month} --force`)",
                    ) from None
                counts["bytes"] = counts.get("bytes", 0) + len(block)
                if not block:
                    if carry.strip():
                        handle(carry + b"\n")
                    break
                data = carry + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry = data[cut + 1 :]
                handle(data[: cut + 1])
            flush(final=True)
        finally:
            writer.close()
    rej_gz.close()
    if counts["rejected"]:
        store.write(rej_key, rej_buf.getvalue())
    if counts["items_in"] != counts["written"] + counts["filtered"] + counts["rejected"]:
        raise EtlError(f"{uri}: counts do not reconcile: {counts}")
    info = store.head(out_key)
    return {"part": part, "input": uri, "output": out_key, "rows": counts["written"],
            "bytes": info.size if info else None, "rejected_key": rej_key if counts["rejected"] else None,
            "uncompressed_bytes": counts.pop("bytes", 0), **counts}


def _apply_hook(hook: Callable[[pa.Table], pa.Table], cfg: Config, table: pa.Table, schema: pa.Schema,
                counts: dict[str, Any]) -> pa.Table:
    name = cfg.transform.hook
    try:
        out = hook(table)
    except Exception as exc:
        raise EtlError(f"transform hook {name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, pa.Table):
        raise EtlError(f"transform hook {name} returned {type(out).__name__}, not a pyarrow.Table")
    if out.num_rows > table.num_rows:
        raise EtlError(f"transform hook {name} added rows ({table.num_rows} -> {out.num_rows}); it may only "
                       "change or drop rows")
    for key in (cfg.destination.partition_key, cfg.destination.sort_key):
        if key not in out.column_names or out.column(key).null_count:
            raise EtlError(f"transform hook {name} dropped or nulled the key column {key}")
    dropped = table.num_rows - out.num_rows
    if dropped:
        counts["filtered_by"]["hook"] = counts["filtered_by"].get("hook", 0) + dropped
        counts["filtered"] += dropped
    try:
        return out.select(schema.names).cast(schema) if set(out.column_names) >= set(schema.names) else out
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise EtlError(f"transform hook {name} returned columns that do not fit the schema: {exc}") from None


# --------------------------------------------------------------------------- collisions and the stage


def find_collisions(cfg: Config, store: staging.Store, month: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    pk, sk = cfg.destination.partition_key, cfg.destination.sort_key
    order_col = "OrderID" if any(c.name == "OrderID" for c in cfg.transform.columns) else None
    cols = [pk, sk] + ([order_col] if order_col else [])
    tables = []
    for p in parts:
        with store.open_read(p["output"]) as f:
            t = pq.read_table(pa.BufferReader(f.read()), columns=cols)
        n = t.num_rows
        tables.append(t.append_column("_part", pa.array(np.full(n, p["part"], np.int32)))
                      .append_column("_row", pa.array(np.arange(n, dtype=np.int64))))
    if not tables:
        return {"rows": 0, "keys": 0, "losers": 0, "examples": []}
    keys = pa.concat_tables(tables)
    counts = keys.group_by([pk, sk]).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts["count_all"], 1))
    if dup.num_rows == 0:
        store.delete(staging.state_key(month, COLLISIONS))
        return {"rows": 0, "keys": 0, "losers": 0, "examples": []}
    rows = keys.join(dup.select([pk, sk]), [pk, sk], join_type="inner")
    sort = [(pk, "ascending"), (sk, "ascending")]
    if order_col:
        sort.append((order_col, "descending"))
    sort += [("_part", "ascending"), ("_row", "ascending")]
    rows = rows.sort_by(sort)
    first = np.ones(rows.num_rows, dtype=bool)
    pkv = rows[pk].to_pylist()
    skv = rows[sk].to_numpy()
    for i in range(1, rows.num_rows):
        first[i] = not (pkv[i] == pkv[i - 1] and skv[i] == skv[i - 1])
    losers = rows.filter(pa.array(~first))
    buf = io.BytesIO()
    pq.write_table(losers, buf, compression="zstd")
    store.write(staging.state_key(month, COLLISIONS), buf.getvalue())
    examples = [{pk: r[pk], sk: r[sk], "orders": [x[order_col] for x in rows.to_pylist()
                                                  if x[pk] == r[pk] and x[sk] == r[sk]] if order_col else None}
                for r in dup.slice(0, 5).to_pylist()]
    return {"rows": rows.num_rows, "keys": dup.num_rows, "losers": losers.num_rows,
            "losers_file": staging.state_key(month, COLLISIONS),
            "winner_rule": "greatest OrderID, then first in file order", "examples": examples}


def transform_month(cfg: Config, store: staging.Store, month: str, pool: ThreadPoolExecutor, reporter: Reporter,
                    force: bool = False) -> dict[str, Any]:
    export = staging.read_manifest(store, month, "export")
    if export is None:
        raise StageNotReady(f"month {month} has no committed export",
                            hint=f"run `etl export --month {month}` first")
    done = staging.read_manifest(store, month, "transform")
    cfg_hash = cfg.hash_of("transform")
    if done and not force:
        if done.get("export_committed_at") == export.get("committed_at") and done.get("config_hash") == cfg_hash:
            reporter.info(f"transform {month}: already committed, skipped; --force redoes it")
            return {**done, "skipped": True}
        reporter.info(f"transform {month}: the export or the mapping changed since the last transform; redoing it")
    hook = load_hook(cfg.transform.hook)
    started = time.time()
    store.delete_prefix(f"transformed/{staging.month_dir(month)}/")
    store.delete_prefix(f"rejected/{staging.month_dir(month)}/")
    files = sorted(export["files"], key=lambda f: f["uri"])
    total = export.get("item_count") or export.get("describe_item_count")
    task = reporter.task(f"transform {month}", total, "items")
    futures = [pool.submit(transform_file, cfg, store, month, i, f["uri"], hook, task) for i, f in enumerate(files)]
    parts = [f.result() for f in futures]
    task.finish()
    totals = {k: sum(p[k] for p in parts) for k in ("items_in", "written", "filtered", "rejected")}
    by: dict[str, dict[str, int]] = {"filtered_by": {}, "rejected_by": {}}
    for p in parts:
        for group in by:
            for k, v in p[group].items():
                by[group][k] = by[group].get(k, 0) + v
    if totals["items_in"] != totals["written"] + totals["filtered"] + totals["rejected"]:
        raise EtlError(f"transform {month}: counts do not reconcile: {totals}")
    if total is not None and totals["items_in"] != total:
        raise EtlError(
            f"transform {month}: read {totals['items_in']} items, but the export says {total}",
            hint=f"the export looks incomplete: `etl export --month {month} --force`",
        )
    collisions = find_collisions(cfg, store, month, parts)
    if collisions["keys"]:
        reporter.warn(f"transform {month}: {collisions['rows']} rows share {collisions['keys']} destination keys; "
                      f"{collisions['losers']} will not be loaded ({collisions['winner_rule']} wins)")
    return staging.commit_manifest(store, month, "transform", {
        **totals, **by,
        "reconciles": "items_in = written + filtered + rejected",
        "collisions": collisions,
        "inputs": [{"uri": f["uri"], "size": f.get("size"), "etag": f.get("etag")} for f in files],
        "parts": parts,
        "schema": {f.name: str(f.type) for f in output_schema(cfg)},
        "export_committed_at": export.get("committed_at"),
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg_hash,
    })


def run_transform(cfg: Config, months: list[str], *, force: bool = False,
                  reporter: Reporter = QUIET) -> list[dict[str, Any]]:
    store = staging.open_store(cfg.staging.root, cfg.staging)
    with ThreadPoolExecutor(max_workers=cfg.transform.concurrency, thread_name_prefix="transform") as pool:
        return run_months("transform", months, store,
                          lambda m: transform_month(cfg, store, m, pool, reporter, force),
                          max(1, len(months)), reporter)


__all__ = ["run_transform", "transform_month", "transform_file", "convert_chunk", "ColumnSpec", "REASONS"]
