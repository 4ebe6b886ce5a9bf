"""A scan export: a parallel segment Scan within a read budget, writing the exact AWS export layout, with a
checkpoint per segment and data file so a stopped scan goes on where it stopped."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from etl import aws, capacity, staging, times
from etl.config import Config
from etl.engine import TaskContext
from etl.export.inspect import inspect_export
from etl.export.pitr import describe_source
from etl.items import export_line
from etl.progress import Reporter
from etl.state import ScanSegment


class _PartWriter:
    """Gzip DynamoDB-JSON lines into `data/<name>.json.gz`; `flush` ends a file (the scan ends one at the first
    page boundary past `[export] scan_items_per_file` items, so a checkpoint can say where the next page starts)."""

    def __init__(self, folder: staging.Store, entries: list[dict[str, Any]] | None = None,
                 raw_bytes: int = 0) -> None:
        self.folder = folder
        self.entries: list[dict[str, Any]] = list(entries or [])  # the files written (by an earlier run too)
        self._tmp: Any = None
        self._gz: Any = None
        self.count = 0  # lines in the file being written
        self.raw_bytes = raw_bytes

    def add(self, line: bytes) -> None:
        if self._gz is None:
            self._tmp = tempfile.TemporaryFile()  # noqa: SIM115 (closed in flush)
            self._gz = gzip.GzipFile(fileobj=self._tmp, mode="wb", compresslevel=6, mtime=0)
            self.count = 0
        self._gz.write(line)
        self.count += 1
        self.raw_bytes += len(line)

    def flush(self) -> None:
        if self._gz is None:
            return
        self._gz.close()
        self._tmp.seek(0)
        h = hashlib.md5()
        while chunk := self._tmp.read(staging.CHUNK):
            h.update(chunk)
        self._tmp.seek(0)
        name = base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]
        rel = f"data/{name}.json.gz"
        with self.folder.open_write(rel) as out:
            while chunk := self._tmp.read(staging.CHUNK):
                out.write(chunk)
        self._tmp.close()
        info = self.folder.head(rel)
        etag = info.etag if info and info.etag else h.hexdigest()
        self.entries.append({"itemCount": self.count, "md5Checksum": base64.b64encode(h.digest()).decode(),
                             "etag": etag, "rel": rel})
        self._gz = None
        self.count = 0

    def discard(self) -> None:
        """Drop the file being written (a scan that stopped): the gzip stream closed before its file, so nothing
        is left for the garbage collector to finish writing into a closed file."""
        if self._gz is not None:
            self._gz.close()
            self._tmp.close()
            self._gz = None


def _key_json(key: dict[str, Any]) -> dict[str, Any]:
    """A scan's LastEvaluatedKey as JSON (a binary key attribute as base64)."""
    return {k: ({"B64": base64.b64encode(v["B"]).decode()} if "B" in v else v) for k, v in key.items()}


def _key_of(saved: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"B": base64.b64decode(v["B64"])} if "B64" in v else v) for k, v in saved.items()}


@dataclass
class _ScanRun:
    """What a scan export goes on from: its folder and start, and each segment's checkpoint (none yet: from the
    start)."""

    export_id: str
    start: datetime
    segments: dict[int, dict[str, Any]]


def _source_identity(cfg: Config, desc: dict[str, Any]) -> dict[str, Any]:
    """What a scan checkpoint must match to be gone on from: the same table (not one dropped and created again
    under its name), the same source config and the same number of segments."""
    created = staging.destination_of(desc).created  # UTC, whatever the process's time zone
    return {"table_arn": desc["TableArn"], "table_created": created,
            "config_hash": cfg.hash_of("source"), "segments": cfg.export.scan_segments}


def _scan_to_resume(cfg: Config, store: staging.Store, month: str, desc: dict[str, Any],
                    reporter: Reporter) -> _ScanRun | None:
    """The checkpoints of an earlier scan of this month that stopped, when they can be gone on from."""
    saved = [store.read_json(o.key) for o in store.list(staging.scan_state_prefix(month)) if o.key.endswith(".json")]
    if not saved:
        return None
    first = saved[0]
    same = _source_identity(cfg, desc)
    folder = store.sub(staging.export_folder_key(month, str(first.get("export_id"))))
    why = None
    segments = [ScanSegment(s) for s in saved]
    files = folder.exists("_started") and all(folder.head(e["rel"]) is not None for s in saved
                                               for e in s.get("entries", []))
    if not files or any(s.get("export_id") != first.get("export_id") for s in saved):
        why = "some of its files are gone"
    elif not all(s.valid_for(same, str(first.get("export_id")), files) for s in segments):
        why = "the table, the source config or the number of segments changed since"
    if why:
        reporter.info(f"export {month}: an earlier scan stopped, but {why}: scanning from the start")
        return None
    return _ScanRun(str(first["export_id"]), datetime.fromisoformat(first["start"]),
                    {int(s["segment"]): s for s in saved})


def _remove_unlisted(folder: staging.Store, run: _ScanRun) -> None:
    """Data files no checkpoint lists: written after a segment's last checkpoint by a run that was killed."""
    kept = {e["rel"] for s in run.segments.values() for e in s["entries"]}
    for o in folder.list("data/"):
        if o.key not in kept:
            folder.delete(o.key)


def export_scan(cfg: Config, store: staging.Store, month: str, reporter: Reporter,
                ctx: TaskContext | None = None, force: bool = False) -> dict[str, Any]:
    """The month's table read with parallel Scan segments within a read budget, into the AWS export layout.

    Each segment ends a data file at the first page boundary past `scan_items_per_file` items and then saves a
    checkpoint (its files and the key it goes on from), so a scan that stopped (Ctrl-C, a crash, kill -9) goes on
    where each segment's last checkpoint left off when run again, keeping the files written; `force` starts over."""
    began = datetime.now(UTC)
    ddb = aws.client(cfg.source, "dynamodb")
    table = cfg.source_table(month)
    desc = describe_source(cfg, ddb, table, month)
    budget = capacity.budget_for(desc, unit="RCU", fraction=cfg.export.scan_read_fraction or 0.5,
                                 absolute=cfg.export.scan_max_rcu, fraction_key="[export] scan_read_fraction",
                                 absolute_key="[export] scan_max_rcu").bucket
    run = None if force else _scan_to_resume(cfg, store, month, desc, reporter)
    if run is None:
        start = datetime.now(UTC)
        run = _ScanRun(f"{int(start.timestamp() * 1000):014d}-{secrets.token_hex(4)}", start, {})
        store.delete_prefix(staging.scan_state_prefix(month))
        store.delete_prefix(staging.export_prefix(month) + "/")
    folder_key = staging.export_folder_key(month, run.export_id)
    folder = store.sub(folder_key)
    if run.segments:
        _remove_unlisted(folder, run)
    else:
        folder.write("_started", b"")
    segments = cfg.export.scan_segments
    kept = {seg: sum(e["itemCount"] for e in s["entries"]) for seg, s in run.segments.items()}
    task = reporter.task(f"scan {month}", desc.get("ItemCount") or None, "items")
    if kept:
        task.advance(sum(kept.values()))
        reporter.info(f"export {month}: going on with the scan that stopped ({sum(kept.values()):,} items in "
                      f"{sum(len(s['entries']) for s in run.segments.values())} files kept)")
    writers = [_PartWriter(folder, run.segments.get(seg, {}).get("entries"),
                           run.segments.get(seg, {}).get("raw_bytes", 0)) for seg in range(segments)]
    consumed = [float(run.segments.get(seg, {}).get("rcu_consumed", 0.0)) for seg in range(segments)]
    identity = _source_identity(cfg, desc)

    def save(seg: int, next_key: dict[str, Any] | None) -> None:
        store.write_json(staging.scan_segment_key(month, seg), {
            "export_id": run.export_id, "start": run.start.isoformat(), **identity, "segment": seg,
            "done": next_key is None, "next_key": None if next_key is None else _key_json(next_key),
            "entries": writers[seg].entries, "raw_bytes": writers[seg].raw_bytes,
            "rcu_consumed": consumed[seg]})

    def scan_segment(seg: int) -> None:
        saved = run.segments.get(seg)
        if saved is not None and saved.get("done"):
            return
        writer = writers[seg]
        kwargs: dict[str, Any] = {"TableName": table, "Segment": seg, "TotalSegments": segments,
                                  "ReturnConsumedCapacity": "TOTAL",
                                  "Limit": min(500, cfg.export.scan_items_per_file)}  # a file: whole pages
        if saved is not None and saved.get("next_key"):
            kwargs["ExclusiveStartKey"] = _key_of(saved["next_key"])
        estimate = 1.0
        while True:
            if ctx is not None:
                ctx.check()  # interrupted: stop at the next page
            budget.acquire(estimate)
            page = ddb.scan(**kwargs)
            actual = float(page.get("ConsumedCapacity", {}).get("CapacityUnits", estimate))
            budget.settle(estimate, actual)
            estimate = max(0.5, actual)
            consumed[seg] += actual
            for item in page.get("Items", []):
                writer.add(export_line(item))
            task.advance(len(page.get("Items", [])), rcu_per_s=round(budget.rate, 1))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            if writer.count >= cfg.export.scan_items_per_file:
                writer.flush()
                save(seg, page["LastEvaluatedKey"])
        writer.flush()
        save(seg, None)

    try:
        with ThreadPoolExecutor(max_workers=segments) as pool:
            list(pool.map(scan_segment, range(segments)))
    except BaseException:
        for w in writers:
            w.discard()
        raise
    task.finish()
    return _finish_scan(cfg, store, month, desc, run, folder_key, writers, budget.target, sum(consumed), kept,
                        began)


def _finish_scan(cfg: Config, store: staging.Store, month: str, desc: dict[str, Any], run: _ScanRun,
                 folder_key: str, writers: list[_PartWriter], budget_rcu: float, consumed: float,
                 kept: dict[int, int], began: datetime) -> dict[str, Any]:
    """The manifests of a scan whose segments all finished, checked as any export is: the body of the export
    manifest."""
    end = datetime.now(UTC)
    folder = store.sub(folder_key)
    s3 = isinstance(store, staging.S3Store)
    bucket, base_key = store.s3_location(folder_key) if s3 else (None, folder_key)
    entries = [e for w in writers for e in w.entries]
    lines = "".join(
        json.dumps({"itemCount": e["itemCount"], "md5Checksum": e["md5Checksum"], "etag": e["etag"],
                    "dataFileS3Key": f"{base_key}/{e['rel']}"}, separators=(",", ":")) + "\n"
        for e in entries
    ).encode()
    folder.write("manifest-files.json", lines)
    folder.write("manifest-files.md5", base64.b64encode(hashlib.md5(lines).digest()))
    summary = {
        "version": "2020-06-30",
        "exportArn": f"{desc['TableArn']}/export/{run.export_id}",
        "startTime": times.iso_ms(run.start),
        "endTime": times.iso_ms(end),
        "tableArn": desc["TableArn"],
        "tableId": desc.get("TableId"),
        "exportTime": times.iso_ms(run.start),
        "s3Bucket": bucket,
        "s3Prefix": base_key.rsplit("/AWSDynamoDB/", 1)[0],
        "s3SseAlgorithm": "AES256" if s3 else None,
        "s3SseKmsKeyId": None,
        "manifestFilesS3Key": f"{base_key}/manifest-files.json",
        "billedSizeBytes": sum(w.raw_bytes for w in writers),
        "itemCount": sum(e["itemCount"] for e in entries),
        "outputFormat": "DYNAMODB_JSON",
    }
    summary_raw = json.dumps(summary, separators=(",", ":")).encode()
    folder.write("manifest-summary.json", summary_raw)
    folder.write("manifest-summary.md5", base64.b64encode(hashlib.md5(summary_raw).digest()))
    checked = inspect_export(folder)
    return {
        "mode": "scan",
        "table": cfg.source_table(month),
        "table_arn": desc["TableArn"],
        "table_created": staging.destination_of(desc).created,  # a table created again is another table
        "export_folder": folder.uri,
        "export_time": summary["exportTime"],
        "read_budget_rcu_per_s": budget_rcu,
        "rcu_consumed": round(consumed, 1),
        **({"resumed": {"items_kept": sum(kept.values()),
                        "files_kept": sum(len(s["entries"]) for s in run.segments.values())}} if kept else {}),
        **{k: v for k, v in checked.items() if k not in ("export_time",)},
        "duration_s": round((end - began).total_seconds(), 3),  # this run's (a scan gone on with: since then)
        "config_hash": cfg.hash_of("source"),
    }
