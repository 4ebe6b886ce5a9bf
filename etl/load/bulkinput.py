"""Bulk put's input: the rows BatchWriteItem would send, as DynamoDB JSON lines (`{"Item": {...}}`) in compressed
objects under `bulkput/month=M/<run>/op-NNN/`, which StartBulkPutItems reads.

One task per Parquet part, on the engine like the batch-write task. The rows are judged by the very same rules
(`etl.load.rows.select`: collision losers and expired rows left out, what DynamoDB would refuse quarantined into
`rejected/month=M/load-part-NNNNN.jsonl.gz`), so both methods write the same items. A part's lines are spilled to a
local temporary file, then dealt round-robin into objects of about `[load] bulk_put_object_mb` each, every object
shuffled (seeded by the run, the part and the object: the same input gives the same bytes). An export lists items
partition by partition, so without the shuffle consecutive writes would walk one partition after another (the
developer guide's "rolling hot partition"); dealt and shuffled, every object is a random sample of its part.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import mmap
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from etl import items, mapping, staging
from etl.config import Config
from etl.engine import TaskContext
from etl.errors import EtlError
from etl.load.rows import Counters, LoadPartTask, WriteTarget, _kept, select, write_units
from etl.state import BulkPutPart

PUT_PREFIX = b'{"PutRequest":'  # a put fragment is PUT_PREFIX + {"Item":{...}} + "}"
MAX_OBJECTS_PER_OPERATION = 50_000  # the developer guide: each operation reads up to 50,000 S3 objects


def line_of(put: bytes) -> bytes:
    """A `{"PutRequest":{"Item":{...}}}` fragment -> the bulk put input line `{"Item":{...}}` (the same item)."""
    if not put.startswith(PUT_PREFIX):
        raise EtlError("bulk put writes puts only: a delete reached its input")
    return put[len(PUT_PREFIX):-1] + b"\n"


def compress(data: bytes, compression: str) -> bytes:
    """A whole object's bytes, compressed as StartBulkPutItems' InputCompressionType says (a standard zstd frame,
    or gzip without a timestamp: the same lines give the same bytes)."""
    if compression == "ZSTD":
        return bytes(pa.compress(data, codec="zstd", asbytes=True))
    return gzip.compress(data, mtime=0)


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "ZSTD":
        return bytes(pa.input_stream(pa.BufferReader(data), compression="zstd").read())
    return gzip.decompress(data)


def object_count(total: int, object_bytes: int) -> int:
    """How many objects a part's `total` bytes of lines make: none for no lines, else about `object_bytes` each."""
    return max(1, math.ceil(total / object_bytes)) if total else 0


def _seed(run: str, part: int, obj: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{run}/{part}/{obj}".encode()).digest()[:8], "big")


@dataclass(frozen=True, kw_only=True)
class BulkInputTask:
    """One Parquet part's items, written as bulk put input objects of operation `operation` of input run `run`."""

    load: LoadPartTask  # the part, its rows and the rules (cut-off, expiry choice, the table's key types)
    run: str
    operation: int
    object_bytes: int  # an object's target size, uncompressed
    compression: str  # ZSTD | GZIP
    record: str  # the part's record (`BulkPutPart`), written once its objects are
    dry_run: bool = False


def _lines(cfg: Config, store: staging.Store, task: BulkInputTask, ctx: TaskContext, c: Counters,
           quarantine: list[bytes], spill: Any) -> tuple[list[int], dict[str, float]]:
    """Every line the part sends, spilled in row order; returns each line's end offset, and (dry run) the write
    units BatchWriteItem would use for the same items."""
    ends: list[int] = []
    at = 0
    units: dict[str, float] = {}
    for s in select(cfg, store, task.load, ctx, c, quarantine):
        ctx.check()
        send = s.send
        if s.deletes.any():
            raise EtlError(f"bulk put {task.load.month} part {task.load.part}: the part has deletes; bulk put only "
                           "puts", hint="catch-up's windows load with batch-write")
        sent = np.asarray(send, dtype=bool)
        for put, ok in zip(s.puts, send, strict=True):
            if ok:
                line = line_of(put)
                at += len(line)
                ends.append(at)
                if spill is not None:
                    spill.write(line)
        c.written += int(sent.sum())
        ctx.progress(int(sent.sum()))
        if task.dry_run:
            for k, v in write_units(s.sel.filter(pa.array(sent)), s.sizes[sent], task.load.target.indexes).items():
                units[k] = units.get(k, 0.0) + v
    return ends, units


def _objects(store: staging.Store, task: BulkInputTask, spill: Any, ends: list[int]) -> list[dict[str, Any]]:
    """Deal the spilled lines round-robin into objects of about the target size, shuffle each, compress, write."""
    n = len(ends)
    count = object_count(ends[-1] if ends else 0, task.object_bytes)
    out: list[dict[str, Any]] = []
    if not n:
        return out
    spill.flush()
    offsets = np.concatenate([[0], np.asarray(ends, dtype=np.int64)])
    with mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for j in range(count):
            ids = np.random.default_rng(_seed(task.run, task.load.part, j)).permutation(np.arange(j, n, count))
            data = b"".join(mm[offsets[i]:offsets[i + 1]] for i in ids.tolist())
            body = compress(data, task.compression)
            key = staging.bulkput_object_key(task.load.month, task.run, task.operation, task.load.part, j,
                                             task.compression)
            store.write(key, body)
            out.append({"key": key, "items": len(ids), "bytes": len(data), "stored_bytes": len(body)})
    return out


def run_input_task(cfg: Config, task: BulkInputTask, ctx: TaskContext) -> dict[str, Any]:
    """Write one part's input objects (a dry run writes nothing and says what it would); counts reconcile:
    items + skipped_expired + deduplicated + quarantined = the part's rows."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    c = Counters()
    quarantine: list[bytes] = []
    part = task.load
    with tempfile.TemporaryFile(prefix="etl-bulkput-") as spill:
        ends, units = _lines(cfg, store, task, ctx, c, quarantine, None if task.dry_run else spill)
        objects = [] if task.dry_run else _objects(store, task, spill, ends)
    total = ends[-1] if ends else 0
    quarantined_by: dict[str, int] = {}
    for line in quarantine:
        reason = str(orjson.loads(line)["reason"])
        quarantined_by[reason] = quarantined_by.get(reason, 0) + 1
    if quarantine and not task.dry_run:
        store.write(part.rejected, gzip.compress(b"\n".join(quarantine) + b"\n"))
    result = {"part": part.part, "rows": part.rows, "run": task.run, "operation": task.operation,
              "transform_run": part.transform_run, "items": c.written, "skipped_expired": c.skipped_expired,
              "deduplicated": c.deduplicated, "quarantined": c.quarantined, "quarantined_by": quarantined_by,
              "bytes": total, "stored_bytes": sum(o["stored_bytes"] for o in objects),
              "object_count": len(objects) if not task.dry_run else object_count(total, task.object_bytes),
              "objects": objects, "wcu_estimated": {k or "table": v for k, v in units.items()}}
    if c.written + c.skipped_expired + c.deduplicated + c.quarantined != part.rows:
        raise EtlError(f"bulk put {part.month} part {part.part}: counts do not reconcile ({result})")
    if not task.dry_run:
        store.write_json(task.record, result)
    return result


def part_record(store: staging.Store, month: str, part: int, run: str) -> dict[str, Any] | None:
    """A part's input objects, when this input run wrote them."""
    r = BulkPutPart.read(store, staging.bulkput_part_key(month, part))
    return r.body if r is not None and r.valid_for(run) else None


def sample_line_bytes(cfg: Config, store: staging.Store, month: str, part: dict[str, Any], now: int,
                      include_expired: bool, rows: int = 20_000) -> tuple[float, float]:
    """(share of rows sent, bytes per input line), from the first rows of a part: how the plan sizes objects and
    operations before the input is written."""
    pf = pq.ParquetFile(pa.BufferReader(store.read(part["output"])))
    rb = next(pf.iter_batches(batch_size=rows), None)
    if rb is None or rb.num_rows == 0:
        return 1.0, 100.0
    target = WriteTarget(table="", now=now, include_expired=include_expired, dry_run=True)
    keep, _, _ = _kept(rb, 0, staging.read_losers(store, month).get(part["part"]), mapping.ttl_column(cfg), target)
    sel = rb.filter(pa.array(keep))
    if not sel.num_rows:
        return 0.0, 100.0
    lengths = [len(p) - len(PUT_PREFIX) for p in items.to_puts(sel)]  # minus the closing brace, plus "\n"
    return sel.num_rows / rb.num_rows, sum(lengths) / len(lengths)
