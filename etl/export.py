"""Stage 1: each monthly table to `export/month=YYYYMM/AWSDynamoDB/<exportId>/` under the staging root.

Three ways in, one result (a committed `_state/month=M/export.json` listing validated data files):
  pitr          ExportTableToPointInTime (no read capacity used); S3 staging roots only
  scan          a parallel segment Scan within a read budget, writing the exact AWS export layout
  use-existing  adopt an export folder that already exists, after validating it

plan: one task per month. run_task: the export (its wait stays on the driver: DynamoDB does the work).
commit: the manifest, then the pending record of a PITR export is cleared.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions

from etl import aws, capacity, staging
from etl.config import Config
from etl.engine import MonthPlan, TaskContext
from etl.errors import EtlError, ValidationFailed
from etl.items import export_line
from etl.progress import QUIET, Reporter

NAME = "export"


def _err_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _iso_ms(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- validation


def inspect_export(folder: staging.Store) -> dict[str, Any]:
    """Check an `AWSDynamoDB/<exportId>/` folder and list its data files.

    With `manifest-summary.json` and `manifest-files.json` (the real layout): every listed file
    exists, its md5 matches `md5Checksum`, the item counts add up to the summary, no data file is
    unlisted, and the manifests match their `.md5` files. Without them (moto writes only one data
    file), the data files are listed and the export is recorded as unverified.

    An incremental export (`exportType: INCREMENTAL_EXPORT`) keeps its data files under the prefix's shared
    `AWSDynamoDB/data/`, beside the export's folder, not in it: they are looked up there (and files of
    other incremental exports in that shared folder are not "unlisted"). Its window and view are returned.
    """
    if folder.exists("manifest-summary.json") or folder.exists("manifest-files.json"):
        return _inspect_manifests(folder)
    data = [o for o in folder.list("data/") if o.key.endswith((".gz", ".json"))]
    if not data:
        raise ValidationFailed(f"{folder.uri} holds neither manifest files nor data files: not an export folder")
    files = [{"uri": folder.key_uri(o.key), "size": o.size, "etag": o.etag, "md5": None, "item_count": None}
             for o in data]
    return {
        "verified": False,
        "verification": "no manifest-summary.json/manifest-files.json (an emulator's export?): "
        f"{len(files)} data file(s) listed, checksums and counts not verified",
        "item_count": None,
        "files": files,
    }


def _inspect_manifests(folder: staging.Store) -> dict[str, Any]:
    """An export folder with manifests: every check of `inspect_export`, every problem found said at once."""
    problems: list[str] = []
    has_summary = folder.exists("manifest-summary.json")
    summary, entries = _read_manifests(folder, has_summary, problems)
    if summary.get("outputFormat", "DYNAMODB_JSON") != "DYNAMODB_JSON":
        raise ValidationFailed(
            f"{folder.uri}: outputFormat {summary.get('outputFormat')!r} is not supported; "
            "export with ExportFormat=DYNAMODB_JSON"
        )
    incremental = summary.get("exportType") == "INCREMENTAL_EXPORT"
    data_root = _parent(folder) if incremental else folder
    todo, listed = _listed_files(entries, problems)
    files = _check_data_files(data_root, todo, problems)
    counts = [_count(e.get("itemCount")) for e in entries]
    total = sum(c for c in counts if c is not None)
    if has_summary and None not in counts and total != _count(summary.get("itemCount")):
        problems.append(
            f"item counts in manifest-files.json add up to {total}, "
            f"but manifest-summary.json says {summary.get('itemCount')}"
        )
    unlisted = [] if incremental else [o.key for o in folder.list("data/") if o.key not in listed]
    if unlisted:
        problems.append(f"{len(unlisted)} data file(s) not listed in manifest-files.json, e.g. {unlisted[0]}")
    if problems:
        raise ValidationFailed(
            f"export at {folder.uri} failed validation: " + "; ".join(problems),
            hint="re-export the month (`etl export --month M --force`) or adopt an intact copy",
        )
    return {
        "verified": True,
        "verification": "manifest-files.json checked: files present, md5 match, item counts add up"
        if has_summary else "manifest-summary.json is missing: each listed file's md5 and item count checked",
        "export_arn": summary.get("exportArn"),
        "export_time": summary.get("exportTime"),
        "item_count": total,
        "files": files,
        **({"export_type": "INCREMENTAL_EXPORT", "export_from_time": summary.get("exportFromTime"),
            "export_to_time": summary.get("exportToTime"), "output_view": summary.get("outputView")}
           if incremental else {}),
    }


def _read_manifests(folder: staging.Store, has_summary: bool,
                    problems: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and the file entries, each manifest checked against its `.md5` file."""
    summary_raw = folder.read("manifest-summary.json") if has_summary else b"{}"
    files_raw = folder.read("manifest-files.json") if folder.exists("manifest-files.json") else None
    if files_raw is None:
        raise ValidationFailed(f"{folder.uri}: manifest-summary.json exists but manifest-files.json is missing")
    for name, raw in (("manifest-summary", summary_raw), ("manifest-files", files_raw)):
        if folder.exists(f"{name}.md5"):
            want = folder.read(f"{name}.md5").decode().strip()
            got = base64.b64encode(hashlib.md5(raw).digest()).decode()
            if want != got:
                problems.append(f"{name}.json md5 {got} does not match {name}.md5 ({want})")
    summary = _json_of(folder, "manifest-summary.json", summary_raw)
    entries = [_json_of(folder, "manifest-files.json", line, n)
               for n, line in enumerate(files_raw.splitlines(), 1) if line.strip()]
    return summary, entries


def _data_path(entry: dict[str, Any]) -> str | None:
    """Where a manifest entry's data file is, relative to the export (`data/...`), or None: not under data/."""
    key = str(entry.get("dataFileS3Key", ""))
    if "/data/" not in "/" + key:
        return None
    return "data/" + key.rsplit("data/", 1)[1]


def _listed_files(entries: list[dict[str, Any]],
                  problems: list[str]) -> tuple[list[tuple[dict[str, Any], str]], set[str]]:
    """(entry, data path) of each file the manifest lists, in order, and the paths listed (those without a count of
    items too: they are not "unlisted" as well); an entry outside data/, listed twice or without a count of items
    is a problem. The paths come first: a file listed twice is refused, not read twice."""
    todo: list[tuple[dict[str, Any], str]] = []
    seen: set[str] = set()
    for entry in entries:
        rel = _data_path(entry)
        key = str(entry.get("dataFileS3Key", ""))
        if rel is None:
            problems.append(f"manifest-files.json lists {key!r}, which is not under data/")
            continue
        if ".." in rel.split("/") or "//" in rel:
            problems.append(f"manifest-files.json lists {key!r}, which points outside the export's data/")
            continue
        if rel in seen:
            problems.append(f"manifest-files.json lists {rel} twice (its items would be read twice)")
            continue
        seen.add(rel)
        if _count(entry.get("itemCount")) is None:
            problems.append(f"manifest-files.json gives {rel} the itemCount {entry.get('itemCount')!r}, "
                            "not a count of items")
            continue
        todo.append((entry, rel))
    return todo, seen


def _check_data_files(data_root: staging.Store, todo: list[tuple[dict[str, Any], str]],
                      problems: list[str]) -> list[dict[str, Any]]:
    """Each listed file exists, its md5 is the manifest's and a .gz file is gzip (8 at a time): the files'
    records for the export manifest."""

    def check(job: tuple[dict[str, Any], str]) -> dict[str, Any] | None:
        entry, rel = job
        info = data_root.head(rel)
        if info is None:
            problems.append(f"data file {data_root.key_uri(rel)} is listed in manifest-files.json but does not "
                            "exist")
            return None
        b64, hexd, head = data_root.md5_and_head(rel, len(_GZIP_MAGIC))
        if b64 != entry.get("md5Checksum"):
            problems.append(f"data file {rel}: md5 {b64} does not match the manifest's {entry.get('md5Checksum')}")
        elif rel.endswith(".gz") and head and head != _GZIP_MAGIC:
            problems.append(f"data file {rel} is not gzip (it begins {head!r}; gzip begins {_GZIP_MAGIC!r})")
        return {"uri": data_root.key_uri(rel), "size": info.size, "etag": info.etag or hexd,
                "md5": b64, "item_count": entry["itemCount"]}

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [f for f in pool.map(check, todo) if f]


_GZIP_MAGIC = b"\x1f\x8b"


def _count(value: Any) -> int | None:
    """A manifest's itemCount, or None when it is not one (a string, a negative or missing number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _json_of(folder: staging.Store, name: str, raw: bytes, line: int | None = None) -> dict[str, Any]:
    """One JSON object of a manifest, or a refusal naming the file (and line)."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        where = f"{name}, line {line}" if line else name
        raise ValidationFailed(f"{folder.key_uri(name)}: {where} is not valid JSON ({exc})",
                               hint="re-export the month (`etl export --month M --force`) or adopt an intact copy"
                               ) from None
    if not isinstance(value, dict):
        raise ValidationFailed(f"{folder.key_uri(name)}: {name}{f', line {line}' if line else ''} is not a JSON object")
    return value


def _parent(folder: staging.Store) -> staging.Store:
    """The store one folder up (an incremental export's `AWSDynamoDB/`, which holds the shared `data/`)."""
    if isinstance(folder, staging.S3Store):
        return staging.S3Store(folder.bucket, folder.prefix.rsplit("/", 1)[0] if "/" in folder.prefix else "",
                               folder.s3)
    assert isinstance(folder, staging.LocalStore)
    return staging.LocalStore(folder.root.parent)


# --------------------------------------------------------------------------- PITR export


def export_destination(cfg: Config) -> dict[str, str]:
    """Who owns the staging bucket (AWS requires it when that is another account than the table's) and how
    the export's files are encrypted, as ExportTableToPointInTime parameters."""
    st = cfg.staging
    owner = st.account or aws.account_of(st)
    out = {"S3BucketOwner": owner} if owner != "?" else {}
    if st.sse == "aws:kms":
        out["S3SseAlgorithm"] = "KMS"
        if st.kms_key_id:
            out["S3SseKmsKeyId"] = st.kms_key_id
    elif st.sse == "AES256":
        out["S3SseAlgorithm"] = "AES256"
    return out


def _describe_source(cfg: Config, ddb: Any, table: str, month: str) -> dict[str, Any]:
    try:
        return dict(ddb.describe_table(TableName=table)["Table"])
    except botocore.exceptions.ClientError as exc:
        if _err_code(exc) == "ResourceNotFoundException":
            raise EtlError(
                f"source table {table} (month {month}) not found in {cfg.source.aws_region}",
                hint="check [source] table_template and aws_region in the config, or the month",
            ) from None
        raise


def _check_pitr(ddb: Any, table: str, enable: bool, reporter: Reporter) -> None:
    desc = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    status = desc.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
    if status == "ENABLED":
        return
    if not enable:
        raise EtlError(
            f"point-in-time recovery is {status or 'DISABLED'} on {table}; a PITR export needs it",
            hint=f"rerun with --enable-pitr, or `aws dynamodb update-continuous-backups --table-name {table} "
            "--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true`, "
            "or use --mode scan (reads within a read-capacity budget)",
        )
    reporter.info(f"enabling point-in-time recovery on {table}")
    ddb.update_continuous_backups(
        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
    )


def _check_bucket(cfg: Config, store: staging.S3Store) -> None:
    loc = store.bucket_region()
    bucket, _ = store.s3_location("")
    if loc != cfg.staging.aws_region:
        raise EtlError(
            f"staging bucket {bucket} is in {loc}, but [staging] aws_region is {cfg.staging.aws_region}",
            hint="set [staging] aws_region to the bucket's region",
        )


def _wait(ddb: Any, arn: str, cfg: Config, month: str, reporter: Reporter,
          ctx: TaskContext | None = None) -> dict[str, Any]:
    """DescribeExport with backoff until the export ends; an interrupt (`ctx`) ends the wait at once (the export
    goes on in DynamoDB, and the next run waits on the same one)."""
    task = reporter.task(f"export {month}", None, "s")
    delay = 1.0
    start = time.monotonic()
    while True:
        d = ddb.describe_export(ExportArn=arn)["ExportDescription"]
        state = d["ExportStatus"]
        elapsed = time.monotonic() - start
        task.update(state=state, elapsed_s=round(elapsed))
        if state == "COMPLETED":
            task.finish(state=state, items=d.get("ItemCount"))
            return dict(d)
        if state == "FAILED":
            task.finish(state=state)
            raise EtlError(
                f"export of month {month} FAILED: {d.get('FailureCode')}: {d.get('FailureMessage')}",
                hint=f"fix the cause, then `etl export --month {month} --force` starts a new export",
            )
        if elapsed > cfg.export.timeout_seconds:
            task.finish(state=state)
            raise EtlError(
                f"export of month {month} still {state} after {elapsed:.0f}s ({arn})",
                hint=f"`etl export --month {month}` resumes waiting on the same export",
            )
        if ctx is None:
            time.sleep(delay)
        elif ctx.stop.wait(delay):
            task.finish(state=state)
            ctx.check()
        delay = min(cfg.export.poll_max_seconds, delay * 1.6)


def _find_folder(store: staging.S3Store, month: str, d: dict[str, Any]) -> staging.Store:
    base = f"{staging.export_prefix(month)}/AWSDynamoDB/"
    manifest = d.get("ExportManifest")
    if manifest:
        _, root = store.s3_location("")
        rel = manifest[len(root) + 1 :] if root else manifest
        return store.sub(rel.rsplit("/", 1)[0])
    export_id = d["ExportArn"].rsplit("/", 1)[-1]
    if store.list(base + export_id + "/"):
        return store.sub(base + export_id)
    folders: dict[str, float] = {}
    for o in store.list(base):
        name = o.key[len(base) :].split("/", 1)[0]
        folders[name] = max(folders.get(name, 0.0), o.mtime)
    if not folders:
        raise EtlError(f"export {d['ExportArn']} completed but nothing was written under {store.key_uri(base)}")
    return store.sub(base + max(folders, key=lambda k: folders[k]))


def _find_started(ddb: Any, table_arn: str, bucket: str, prefix: str) -> str | None:
    """An export of this table into this prefix that is running or done (a start whose reply was lost).

    DynamoDB deduplicates by ClientToken; this also covers emulators that ignore the token."""
    kwargs: dict[str, Any] = {"TableArn": table_arn}
    while True:
        page = ddb.list_exports(**kwargs)
        for summary in page.get("ExportSummaries", []):
            if summary.get("ExportStatus") not in ("IN_PROGRESS", "COMPLETED"):
                continue
            d = ddb.describe_export(ExportArn=summary["ExportArn"])["ExportDescription"]
            if d.get("S3Bucket") == bucket and d.get("S3Prefix", "").rstrip("/") == prefix:
                return str(summary["ExportArn"])
        if not page.get("NextToken"):
            return None
        kwargs["NextToken"] = page["NextToken"]


def export_pitr(
    cfg: Config, store: staging.Store, month: str, force: bool, enable_pitr: bool, reporter: Reporter,
    ctx: TaskContext | None = None,
) -> dict[str, Any]:
    if not isinstance(store, staging.S3Store):
        raise EtlError(
            f"DynamoDB can only export to S3, but the staging root is the local directory {store.uri}",
            hint="use --mode scan to export into a local directory, or set [staging] root to s3://bucket/prefix",
        )
    started = time.time()
    ddb = aws.client(cfg.source, "dynamodb")
    table = cfg.source_table(month)
    desc = _describe_source(cfg, ddb, table, month)
    table_arn = desc["TableArn"]
    _check_pitr(ddb, table, enable_pitr, reporter)
    _check_bucket(cfg, store)
    pending_key = staging.pending_export_key(month)
    bucket, prefix = store.s3_location(staging.export_prefix(month))
    pending = None if force or not store.exists(pending_key) else store.read_json(pending_key)
    if pending and pending.get("table_arn") != table_arn:
        pending = None
    arn = None
    if pending and pending.get("export_arn"):
        try:
            st = ddb.describe_export(ExportArn=pending["export_arn"])["ExportDescription"]["ExportStatus"]
        except botocore.exceptions.ClientError:
            st = "UNKNOWN"
        if st in ("IN_PROGRESS", "COMPLETED"):
            arn = pending["export_arn"]
            reporter.info(f"export {month}: resuming export {arn} ({st})")
    if arn is None and pending:
        arn = _find_started(ddb, table_arn, bucket, prefix)
        if arn:
            reporter.info(f"export {month}: found the export started before ({arn})")
            pending = {**pending, "export_arn": arn}
            store.write_json(pending_key, pending)
    if arn is None:
        if pending:
            export_time = datetime.fromisoformat(pending["export_time"])
            token = pending["client_token"]
        else:
            store.delete_prefix(staging.export_prefix(month) + "/")
            export_time = datetime.now(UTC).replace(microsecond=0)
            token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table_arn}|{export_time.isoformat()}"))
            pending = {"table": table, "table_arn": table_arn, "export_time": export_time.isoformat(),
                       "client_token": token, "started_at": staging.utcnow_iso()}
            store.write_json(pending_key, pending)
        _warn_forward_writes(cfg, export_time, month, reporter)
        r = ddb.export_table_to_point_in_time(
            TableArn=table_arn,
            ExportTime=export_time,
            ClientToken=token,
            S3Bucket=bucket,
            S3Prefix=prefix,
            ExportFormat="DYNAMODB_JSON",
            **export_destination(cfg),
        )
        arn = r["ExportDescription"]["ExportArn"]
        pending = {**pending, "export_arn": arn}
        store.write_json(pending_key, pending)
        reporter.info(f"export {month}: started {arn}")
    d = _wait(ddb, arn, cfg, month, reporter, ctx)
    folder = _find_folder(store, month, d)
    checked = inspect_export(folder)
    if not checked["verified"]:
        reporter.warn(f"export {month}: {checked['verification']}")
    return {
        "mode": "pitr",
        "table": table,
        "table_arn": table_arn,
        "export_arn": arn,
        "export_time": pending.get("export_time") if pending else None,
        "export_folder": folder.uri,
        "describe_item_count": d.get("ItemCount"),
        "billed_size_bytes": d.get("BilledSizeBytes"),
        **{k: v for k, v in checked.items() if k not in ("export_arn", "export_time")},
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg.hash_of("source"),
    }


def _warn_forward_writes(cfg: Config, export_time: datetime, month: str, reporter: Reporter) -> None:
    since = cfg.export.forward_writes_since
    if not since:
        return
    fw = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if fw.tzinfo is None:
        fw = fw.replace(tzinfo=UTC)
    if export_time < fw:
        reporter.warn(
            f"export {month}: export time {export_time.isoformat()} is before forward_writes_since "
            f"{since}: orders written between the two would be missing from the index"
        )


# --------------------------------------------------------------------------- incremental export (catch-up)


def start_incremental_export(cfg: Config, store: staging.Store, month: str, prefix: str, start: datetime,
                             end: datetime, view: str = "NEW_AND_OLD_IMAGES") -> tuple[str, str]:
    """Start (or find again) an incremental export of the month's table: the changes in [start, end) into
    `prefix`. The ClientToken, derived from (table ARN, start, end), makes a retried start the same export;
    returns (its ARN, the token)."""
    if not isinstance(store, staging.S3Store):
        raise EtlError(
            f"DynamoDB can only export to S3, but the staging root is the local directory {store.uri}",
            hint="use `etl catch-up --mode stream` with a local staging root, or set [staging] root to s3://...",
        )
    ddb = aws.client(cfg.source, "dynamodb")
    table = cfg.source_table(month)
    table_arn = _describe_source(cfg, ddb, table, month)["TableArn"]
    _check_pitr(ddb, table, False, QUIET)
    bucket, key_prefix = store.s3_location(prefix)
    token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table_arn}|{start.isoformat()}|{end.isoformat()}"))
    found = _find_started(ddb, table_arn, bucket, key_prefix)
    if found:
        return found, token
    r = ddb.export_table_to_point_in_time(
        TableArn=table_arn,
        ClientToken=token,
        S3Bucket=bucket,
        S3Prefix=key_prefix,
        ExportFormat="DYNAMODB_JSON",
        ExportType="INCREMENTAL_EXPORT",
        IncrementalExportSpecification={"ExportFromTime": start, "ExportToTime": end, "ExportViewType": view},
        **export_destination(cfg),
    )
    return str(r["ExportDescription"]["ExportArn"]), token


def wait_export(cfg: Config, month: str, arn: str, reporter: Reporter) -> dict[str, Any]:
    """DescribeExport until the export is COMPLETED (a FAILED one or the timeout is an error)."""
    return _wait(aws.client(cfg.source, "dynamodb"), arn, cfg, month, reporter)


# --------------------------------------------------------------------------- adopt


def adopt_existing(cfg: Config, store: staging.Store, month: str, uri: str, reporter: Reporter) -> dict[str, Any]:
    started = time.time()
    folder = staging.open_store(uri.rstrip("/"), cfg.staging)
    checked = inspect_export(folder)
    if checked.get("export_type") == "INCREMENTAL_EXPORT":
        raise EtlError(
            f"{folder.uri} is an incremental export (changes from {checked['export_from_time']} to "
            f"{checked['export_to_time']}), not a full export of the table",
            hint=f"adopt it with `etl catch-up --month {month} --use-existing {uri}` once the month's full export "
                 "is loaded",
        )
    if not checked["verified"]:
        reporter.warn(f"export {month}: {checked['verification']}")
    return {
        "mode": "adopted",
        "table": cfg.source_table(month),
        "export_folder": folder.uri,
        **checked,
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg.hash_of("source"),
    }


# --------------------------------------------------------------------------- scan export


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
    if any(s.get("export_id") != first.get("export_id") for s in saved) or not folder.exists("_started") \
            or any(folder.head(e["rel"]) is None for s in saved for e in s.get("entries", [])):
        why = "some of its files are gone"
    elif any({k: s.get(k) for k in same} != same for s in saved):
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
    desc = _describe_source(cfg, ddb, table, month)
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
        "startTime": _iso_ms(run.start),
        "endTime": _iso_ms(end),
        "tableArn": desc["TableArn"],
        "tableId": desc.get("TableId"),
        "exportTime": _iso_ms(run.start),
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


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class ExportTask:
    month: str
    mode: str  # pitr | scan | adopt
    use_existing: str | None = None
    force: bool = False
    enable_pitr: bool = False


def plan(cfg: Config, store: staging.Store, month: str, *, mode: str | None = None, use_existing: str | None = None,
         force: bool = False, enable_pitr: bool = False) -> MonthPlan:
    how = "adopt" if use_existing else (mode or cfg.export.mode)
    return MonthPlan([ExportTask(month, how, use_existing, force, enable_pitr)], None, "s")


def run_task(cfg: Config, task: ExportTask, ctx: TaskContext, reporter: Reporter = QUIET) -> dict[str, Any]:
    """The month's export, as the body of its manifest (runs on the driver: an export is a wait)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    if task.mode == "adopt":
        assert task.use_existing is not None
        return adopt_existing(cfg, store, task.month, task.use_existing, reporter)
    if task.mode == "scan":
        return export_scan(cfg, store, task.month, reporter, ctx, task.force)
    return export_pitr(cfg, store, task.month, task.force, task.enable_pitr, reporter, ctx)


def commit(cfg: Config, store: staging.Store, month: str, tasks: list[ExportTask], results: list[dict[str, Any]],
           started: float) -> dict[str, Any]:
    [body] = results
    manifest = staging.commit_manifest(store, month, "export", body)
    store.delete(staging.pending_export_key(month))
    store.delete_prefix(staging.scan_state_prefix(month))  # a scan's checkpoints: the export is committed
    return manifest
