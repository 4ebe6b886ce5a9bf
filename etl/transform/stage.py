"""Stage 2: export data files -> projected, converted Parquet; rows that fail go to quarantine.

plan:     one task per export data file (part NNNNN = its index in the export's file list) without a checkpoint
          of this export, transform config and tool version (a run stopped midway redoes only its unfinished parts).
run_task: streams the file in chunks of whole lines, converts each (`rows.convert_chunk`), and writes
          `transformed/month=M/part-NNNNN.parquet` plus `rejected/month=M/part-NNNNN.jsonl.gz` and its rows'
          key fingerprints (`_state/month=M/transform/part-NNNNN.keys-<scheme>.npy`, for the collision check),
          then the part's checkpoint `_state/month=M/transform/part-NNNNN.done` (its counts).
commit:   the parts' counts (this run's and the checkpoints'), `items_in = written + filtered + rejected` (checked),
          the export's item count (checked), key collisions (`collisions`), stale outputs of an earlier run removed,
          manifest last.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from isal import igzip

from etl import __version__, mapping, staging
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.errors import EtlError, StageNotReady
from etl.runner import StageBase
from etl.state import TransformPartCheckpoint
from etl.transform import collisions
from etl.transform.collisions import find_collisions, fingerprints
from etl.transform.lines import Truncated, chunks
from etl.transform.rows import ChunkResult, convert_chunk

NAME = "transform"


@dataclass(frozen=True)
class FileTask:
    month: str
    part: int
    input: str  # the data file's URI
    output: str  # staging keys
    rejected: str
    upstream_run: str  # the export's run id
    helpers: int = 0  # threads of its own converting this file's chunks, when the context lends none
    md5: str | None = None  # base64 md5 the export's manifest gave the file (checked as it is read)
    config_hash: str = ""  # the transform config it runs with (its checkpoint says so)


def plan(cfg: Config, store: staging.Store, month: str, force: bool = False) -> MonthPlan:
    export = staging.read_manifest(store, month, "export")
    if export is None:
        raise StageNotReady(f"month {month} has no committed export", hint=f"run `etl export --month {month}` first")
    if force:
        store.delete_prefix(staging.transformed_parts_prefix(month))
    files = sorted(export["files"], key=lambda f: f["uri"])  # part numbers: the files in name order
    size = {f["uri"]: f.get("size") or 0 for f in files}
    tasks = [FileTask(month, i, f["uri"], staging.transformed_key(month, i), staging.rejected_key(month, i),
                      str(export.get("run_id", "")), _helpers(cfg, size[f["uri"]], list(size.values())),
                      md5=f.get("md5"), config_hash=cfg.hash_of("transform")) for i, f in enumerate(files)]
    done = {t.part: cp for t in tasks if (cp := _checkpoint(store, t)) is not None}
    tasks = [t for t in tasks if t.part not in done]
    # the largest files first, so a big file listed last does not run alone at the end
    tasks.sort(key=lambda t: -size[t.input])
    total = export.get("item_count") or export.get("describe_item_count")
    if not done:
        return MonthPlan(tasks, total, "items")
    left = None if total is None else total - sum(int(cp.get("items_in", 0)) for cp in done.values())
    return MonthPlan(tasks, left, "items", f"{len(done)} of {len(files)} parts were transformed by an earlier "
                                            "run that stopped (their checkpoints): the others are transformed")


def _checkpoint(store: staging.Store, task: FileTask) -> dict[str, Any] | None:
    """A part's checkpoint, when it was written for this export, transform config and tool version, and its
    outputs are still there."""
    cp = TransformPartCheckpoint.read(store, staging.transformed_part_key(task.month, task.part))
    if cp is None or not cp.valid_for(task.upstream_run, task.config_hash, __version__, task.input,
                                      store.exists(task.output)):
        return None
    return cp.body


def _helpers(cfg: Config, size: int, sizes: list[int]) -> int:
    """Threads of its own a file's task converts chunks on, besides its own.

    A month of fewer files than workers lends the idle workers to its files; a file larger than a worker's fair
    share of the month (one big file beside small ones) gets one, so the workers that finish the small files are
    not idle while it runs alone. Files of even size get none: a shared conversion pool for every file cost ~10%
    CPU on even exports (BENCHMARKS.md)."""
    workers = cfg.transform.concurrency
    spare = max(0, workers - len(sizes)) // max(1, len(sizes))
    if spare == 0 and workers > 1 and size > sum(sizes) / workers:
        return 1
    return spare


class _Hashed:
    """A file object that hashes the bytes read through it (the data file's md5, checked as it is read)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.md5 = hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.md5.update(data)
        return data

    def readinto(self, b: Any) -> int:  # how the gzip reader pulls the compressed bytes
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def digest(self) -> str:
        while self.read(1 << 20):  # bytes after the compressed data count too
            pass
        return base64.b64encode(self.md5.digest()).decode()


@contextlib.contextmanager
def open_data(uri: str, cfg: Config) -> Iterator[tuple[IO[bytes], _Hashed]]:
    """A readable stream of the data file's decompressed bytes, and the hashing reader under it. Decompression
    is ISA-L's igzip (zlib-compatible, 2.8x faster here than zlib: BENCHMARKS.md); S3 objects stream, never land
    on disk."""
    with staging.open_uri(uri, cfg.staging) as raw:
        hashed = _Hashed(raw)
        if uri.endswith(".gz"):
            with igzip.IGzipFile(fileobj=hashed, mode="rb") as stream:
                yield stream, hashed  # type: ignore[misc]
        else:
            yield hashed, hashed  # type: ignore[misc]


def gzip_damage(uri: str, cfg: Config) -> str | None:
    """What is wrong with a data file the decompressor refused (only read on that failure): the gzip data ends
    early, or bytes that are not gzip follow its last whole member (the decompressor says "ends early" for both)."""
    try:
        with staging.open_uri(uri, cfg.staging) as raw:
            data = memoryview(raw.read())
    except OSError:
        return None
    at, members = 0, 0
    while at < len(data):
        if bytes(data[at:at + 2]) != b"\x1f\x8b":
            return (f"{len(data) - at} bytes after the end of the gzip data are not gzip (appended to the file after "
                    f"{'its gzip data' if members == 1 else f'{members} gzip members'})") if members else None
        d = zlib.decompressobj(31)  # one member, a MB of compressed bytes at a time (the output is dropped)
        start = at
        while not d.eof:
            if at >= len(data):
                return "the gzip data ends early (the file is cut short)"
            piece = data[at:at + (1 << 20)]
            try:
                d.decompress(piece, 0)
            except zlib.error as exc:
                return f"the gzip data is damaged in the gzip member at byte {start} ({exc})"
            at += len(piece) - len(d.unused_data)
        members += 1
    return None


class _Part:
    """What one file's task accumulates: counts, the quarantine stream, the rows not yet written."""

    def __init__(self, cfg: Config, task: FileTask, writer: pq.ParquetWriter, ctx: TaskContext,
                 hook: mapping.Hook | None) -> None:
        self.cfg, self.task, self.writer, self.ctx, self.hook = cfg, task, writer, ctx, hook
        self.schema = mapping.output_schema(cfg)
        self.lines = 0  # lines of the file handled so far
        self.counts: dict[str, Any] = {"items_in": 0, "written": 0, "filtered": 0, "rejected": 0,
                                       "filtered_by": {}, "rejected_by": {}}
        self.rej_buf = io.BytesIO()
        self.rej_gz = igzip.IGzipFile(fileobj=self.rej_buf, mode="wb", mtime=0, compresslevel=1)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.keys = mapping.key_columns(cfg)
        self.prints: list[np.ndarray] = []  # the written rows' key fingerprints, in row order

    def flush(self, final: bool = False) -> None:
        """Write whole row groups of `row_group_rows`; the last one takes the rest."""
        size = self.cfg.transform.row_group_rows
        while self.pending_rows >= size or (final and self.pending_rows):
            t = pa.concat_tables(self.pending)
            take = min(size, t.num_rows)
            self.writer.write_table(t.slice(0, take), row_group_size=take)
            rest = t.slice(take)
            self.pending, self.pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    def handle(self, r: ChunkResult, size: int) -> None:
        c = self.counts
        if self.hook is not None and r.table.num_rows:
            r.table, dropped = mapping.apply_hook(self.hook, self.cfg, r.table, self.schema)
            if dropped:
                r.filtered["hook"] = r.filtered.get("hook", 0) + dropped
        c["items_in"] += r.items_in
        self.lines += r.newlines
        c["written"] += r.table.num_rows
        for k, v in r.filtered.items():
            c["filtered_by"][k] = c["filtered_by"].get(k, 0) + v
            c["filtered"] += v
        for reason, _, _ in r.rejected:
            c["rejected_by"][reason] = c["rejected_by"].get(reason, 0) + 1
        c["rejected"] += len(r.rejected)
        if r.rejected:
            self.rej_gz.write(b"".join(orjson.dumps({"reason": reason, "message": message, "file": self.task.input,
                                                     "line": line.decode("utf-8", "replace")}) + b"\n"
                                       for reason, message, line in r.rejected))
        if r.table.num_rows:
            self.prints.append(r.fingerprints if r.fingerprints is not None and self.hook is None
                               else fingerprints(r.table, self.keys))
            self.pending.append(r.table)
            self.pending_rows += r.table.num_rows
            self.flush()
        # items of the known total, and uncompressed MB read by every task together
        self.ctx.progress(r.items_in, add={"MB": size / 1e6})


def run_task(cfg: Config, task: FileTask, ctx: TaskContext) -> dict[str, Any]:
    """One export data file -> one Parquet part (+ its quarantine file).

    Chunks are converted on `ctx.io` when the engine lends threads, or on `task.helpers` + 1 threads of its own
    (a month of fewer files than workers), while this thread decompresses and writes; results are taken in file
    order, so the output is the same either way."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    schema, out_schema = mapping.parse_schema(cfg), mapping.output_schema(cfg)
    hook = mapping.load_hook(cfg.transform.hook)
    keys = mapping.key_columns(cfg)

    def convert(chunk: bytes | memoryview) -> ChunkResult:
        r = convert_chunk(chunk, cfg, schema, out_schema)
        if hook is None and r.table.num_rows:  # on the converting thread (a hook's rows are printed after it)
            r.fingerprints = fingerprints(r.table, keys)
        return r

    read = 0
    with store.open_write(task.output) as sink, open_data(task.input, cfg) as (stream, hashed):
        part = _Part(cfg, task, pq.ParquetWriter(sink, out_schema, **mapping.parquet_options(cfg)), ctx, hook)
        ahead: collections.deque[tuple[Future[ChunkResult], int]] = collections.deque()
        own = ThreadPoolExecutor(task.helpers + 1, thread_name_prefix=f"part{task.part}") \
            if task.helpers > 0 and ctx.io is None else None
        converters = ctx.io or own
        window = task.helpers + 1 if own is not None else cfg.transform.concurrency + 1

        def drain(keep: int = 0) -> None:
            """Handle the oldest results, in file order, until at most `keep` are in flight."""
            while len(ahead) > keep:
                fut, size = ahead.popleft()
                part.handle(fut.result(), size)

        try:
            for chunk, size in chunks(stream):
                ctx.check()
                read += size
                if converters is None:
                    part.handle(convert(chunk), size)
                else:
                    ahead.append((converters.submit(convert, chunk), size))
                    drain(keep=window)
            drain()
            part.flush(final=True)
            if task.md5 and (got := hashed.digest()) != task.md5:
                raise EtlError(f"{task.input}: its md5 is {got}, not the {task.md5} the export was verified with: "
                               "the file changed after the export was adopted",
                               hint=f"re-export or re-adopt the month (`etl export --month {task.month} --force`)")
        except Truncated as exc:
            drain()
            raise EtlError(
                f"{task.input}: {gzip_damage(task.input, cfg) or f'the gzip data is damaged ({exc})'} after line "
                f"{part.lines + exc.carried}; {part.counts['items_in']} items were read before it",
                hint=f"the export file is damaged: re-export the month (`etl export --month {task.month} --force`)",
            ) from None
        finally:
            for fut, _ in ahead:  # after an error: what is still queued never starts
                fut.cancel()
            if own is not None:
                own.shutdown(wait=True, cancel_futures=True)
            part.writer.close()
            part.rej_gz.close()
    counts = part.counts
    if counts["rejected"]:
        store.write(task.rejected, part.rej_buf.getvalue())
    else:
        store.delete(task.rejected)  # an earlier run's quarantine of this part
    if counts["items_in"] != counts["written"] + counts["filtered"] + counts["rejected"]:
        raise EtlError(f"{task.input}: counts do not reconcile: {counts}")
    staging.write_key_fingerprints(store, task.month, task.part, collisions.scheme(cfg),
                                   np.concatenate(part.prints) if part.prints else np.zeros(0, np.int64))
    info = store.head(task.output)
    result = {"part": task.part, "input": task.input, "output": task.output, "rows": counts["written"],
              "bytes": info.size if info else None, "rejected_key": task.rejected if counts["rejected"] else None,
              "uncompressed_bytes": read, **counts}
    ctx.check()  # the month was stopped meanwhile: no checkpoint for a part it did not wait for
    store.write_json(staging.transformed_part_key(task.month, task.part),
                     {**result, "upstream_run": task.upstream_run, "config_hash": task.config_hash,
                      "tool_version": __version__})
    return result


def _remove_stale(store: staging.Store, month: str, parts: list[dict[str, Any]]) -> int:
    """Outputs of an earlier run of the month that this run did not write (it had more files)."""
    mine = {p["output"] for p in parts} | {p["rejected_key"] for p in parts if p["rejected_key"]}
    stale = [o.key for prefix in (staging.transformed_prefix(month), staging.rejected_prefix(month))
             for o in store.list(prefix) if o.key not in mine]
    for key in stale:
        store.delete(key)
    return len(stale)


def _with_checkpoints(cfg: Config, store: staging.Store, month: str, export: dict[str, Any],
                      parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's parts and the ones an earlier run of this export and config finished (their checkpoints), in
    part order; every file of the export must be one of them."""
    files = sorted(export.get("files", []), key=lambda f: f["uri"])
    mine = {p["part"] for p in parts}
    keep = ("upstream_run", "config_hash", "tool_version")
    for i, f in enumerate(files):
        if i in mine:
            continue
        task = FileTask(month, i, f["uri"], staging.transformed_key(month, i), staging.rejected_key(month, i),
                        str(export.get("run_id", "")), config_hash=cfg.hash_of("transform"))
        cp = _checkpoint(store, task)
        if cp is None:
            raise EtlError(f"transform {month}: part {i} ({f['uri']}) has neither a result nor a checkpoint",
                           hint=f"`etl transform --month {month} --force` transforms every part again")
        parts.append({k: v for k, v in cp.items() if k not in keep})
    return sorted(parts, key=lambda p: p["part"])


def commit(cfg: Config, store: staging.Store, month: str, tasks: list[FileTask], parts: list[dict[str, Any]],
           started: float) -> dict[str, Any]:
    export = staging.read_manifest(store, month, "export") or {}
    if tasks and export.get("run_id") != tasks[0].upstream_run:
        raise EtlError(f"transform {month}: the export changed while the month was transformed",
                       hint=f"`etl transform --month {month}` transforms the new export")
    parts = _with_checkpoints(cfg, store, month, export, parts)
    totals = {k: sum(p[k] for p in parts) for k in ("items_in", "written", "filtered", "rejected")}
    by: dict[str, dict[str, int]] = {"filtered_by": {}, "rejected_by": {}}
    for p in parts:
        for group in by:
            for k, v in p[group].items():
                by[group][k] = by[group].get(k, 0) + v
    if totals["items_in"] != totals["written"] + totals["filtered"] + totals["rejected"]:
        raise EtlError(f"transform {month}: counts do not reconcile: {totals}")
    total = export.get("item_count") or export.get("describe_item_count")
    if total is not None and totals["items_in"] != total:
        raise EtlError(
            f"transform {month}: read {totals['items_in']} items, but the export says {total}",
            hint=f"the export looks incomplete: `etl export --month {month} --force`",
        )
    _remove_stale(store, month, parts)
    with ThreadPoolExecutor(cfg.transform.concurrency, thread_name_prefix="collisions") as pool:
        collisions = find_collisions(cfg, store, month, parts, pool)
    files = sorted(export.get("files", []), key=lambda f: f["uri"])
    return staging.commit_manifest(store, month, "transform", {
        **totals, **by,
        "reconciles": "items_in = written + filtered + rejected",
        "collisions": collisions,
        "inputs": [{"uri": f["uri"], "size": f.get("size"), "etag": f.get("etag")} for f in files],
        "parts": parts,
        "schema": {f.name: str(f.type) for f in mapping.output_schema(cfg)},
        "upstream_run": export.get("run_id"),
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg.hash_of("transform"),
    })


class TransformStage(StageBase):
    """The transform on the Runner: a task per export data file, on the engine."""

    name = NAME
    pool = "transform"
    run_task = staticmethod(run_task)

    def __init__(self, cfg: Config, store: staging.Store, *, force: bool = False) -> None:
        super().__init__(cfg, store, force=force)
        self.workers = cfg.transform.concurrency

    def plan(self, month: str) -> MonthPlan:
        return plan(self.cfg, self.store, month, self.force)

    def commit(self, month: str, plan: MonthPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
        return commit(self.cfg, self.store, month, plan.tasks, results, plan.started)
