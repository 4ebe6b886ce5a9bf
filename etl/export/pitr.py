"""ExportTableToPointInTime: full exports of a month's table (no read capacity used), incremental exports
for catch-up, resuming the wait for one started before, and adopting an export folder that already exists."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions

from etl import aws, staging, times
from etl.config import Config
from etl.engine import TaskContext
from etl.errors import EtlError
from etl.export.inspect import _err_code, check_source_table, inspect_export
from etl.progress import QUIET, Reporter


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


def describe_source(cfg: Config, ddb: Any, table: str, month: str) -> dict[str, Any]:
    try:
        return dict(ddb.describe_table(TableName=table)["Table"])
    except botocore.exceptions.ClientError as exc:
        if _err_code(exc) == "ResourceNotFoundException":
            raise EtlError(
                f"source table {table} (month {month}) not found in {cfg.source.aws_region}",
                hint="check [source] table_template and aws_region in the config, or the month",
            ) from None
        raise


SCAN_INSTEAD = "use --mode scan (reads within a read-capacity budget)"


def check_pitr(ddb: Any, table: str, enable: bool, reporter: Reporter, instead: str = SCAN_INSTEAD) -> None:
    """PITR must be on for an export of `table`; `enable` turns it on, else the refusal names `instead` (the way
    that needs no export)."""
    desc = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    status = desc.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
    if status == "ENABLED":
        return
    if not enable:
        raise EtlError(
            f"point-in-time recovery is {status or 'DISABLED'} on {table}; a PITR export needs it",
            hint=f"rerun with --enable-pitr, or `aws dynamodb update-continuous-backups --table-name {table} "
            f"--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true`, or {instead}",
        )
    reporter.info(f"enabling point-in-time recovery on {table}")
    ddb.update_continuous_backups(
        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
    )


def check_bucket(cfg: Config, store: staging.S3Store) -> None:
    loc = store.bucket_region()
    bucket, _ = store.s3_location("")
    if loc != cfg.staging.aws_region:
        raise EtlError(
            f"staging bucket {bucket} is in {loc}, but [staging] aws_region is {cfg.staging.aws_region}",
            hint="set [staging] aws_region to the bucket's region",
        )


def _wait(ddb: Any, arn: str, cfg: Config, month: str, reporter: Reporter,
          ctx: TaskContext | None = None) -> dict[str, Any]:
    return wait_for(ddb, arn, cfg, reporter, ctx, what=f"export {month}", label=f"export of month {month}",
                    again=f"etl export --month {month}")


def wait_for(ddb: Any, arn: str, cfg: Config, reporter: Reporter, ctx: TaskContext | None, *, what: str,
             label: str, again: str) -> dict[str, Any]:
    """DescribeExport with backoff until the export ends; an interrupt (`ctx`) ends the wait at once (the export
    goes on in DynamoDB, and the next run waits on the same one). `what` names its progress line, `label` the
    export in messages, `again` the command that starts a new one (with --force) or waits again."""
    task = reporter.task(what, None, "s")
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
                f"{label} FAILED: {d.get('FailureCode')}: {d.get('FailureMessage')}",
                hint=f"fix the cause, then `{again} --force` starts a new export",
            )
        if elapsed > cfg.export.timeout_seconds:
            task.finish(state=state)
            raise EtlError(
                f"{label} still {state} after {elapsed:.0f}s ({arn})",
                hint=f"`{again}` resumes waiting on the same export",
            )
        if ctx is None:
            time.sleep(delay)
        elif ctx.stop.wait(delay):
            task.finish(state=state)
            ctx.check()
        delay = min(cfg.export.poll_max_seconds, delay * 1.6)


def find_folder(store: staging.S3Store, prefix: str, d: dict[str, Any]) -> staging.Store:
    """The `AWSDynamoDB/<exportId>/` folder a completed export (`d`, its description) wrote under `prefix`: from
    its manifest's key, else its id, else (an emulator's export) the newest folder there."""
    base = f"{prefix}/AWSDynamoDB/"
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


def find_started(ddb: Any, table_arn: str, bucket: str, prefix: str) -> str | None:
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
    desc = describe_source(cfg, ddb, table, month)
    table_arn = desc["TableArn"]
    check_pitr(ddb, table, enable_pitr, reporter)
    check_bucket(cfg, store)
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
        arn = find_started(ddb, table_arn, bucket, prefix)
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
                       "client_token": token, "started_at": times.iso_seconds()}
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
    folder = find_folder(store, staging.export_prefix(month), d)
    checked = inspect_export(folder)
    if not checked["verified"]:
        reporter.warn(f"export {month}: {checked['verification']}")
    return {
        "mode": "pitr",
        "table": table,
        "table_arn": table_arn,
        "table_created": staging.destination_of(desc).created,  # a table created again is another table
        "export_arn": arn,
        "export_time": pending.get("export_time") if pending else None,
        "export_folder": folder.uri,
        "describe_item_count": d.get("ItemCount"),
        "billed_size_bytes": d.get("BilledSizeBytes"),
        **{k: v for k, v in checked.items() if k not in ("export_arn", "export_time", "table_arn")},
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg.hash_of("source"),
    }


def _warn_forward_writes(cfg: Config, export_time: datetime, month: str, reporter: Reporter) -> None:
    since = cfg.export.forward_writes_since
    if not since:
        return
    fw = times.parse(since)
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
    table_arn = describe_source(cfg, ddb, table, month)["TableArn"]
    check_pitr(ddb, table, False, QUIET)
    bucket, key_prefix = store.s3_location(prefix)
    token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table_arn}|{start.isoformat()}|{end.isoformat()}"))
    found = find_started(ddb, table_arn, bucket, key_prefix)
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


def adopt_existing(cfg: Config, store: staging.Store, month: str, uri: str, reporter: Reporter,
                   adopt_other_table: bool = False) -> dict[str, Any]:
    """A full export that already exists, as the month's export: validated (files, md5s, counts) and checked to be
    of the month's source table (refused before anything is written unless `adopt_other_table`)."""
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
    table_check = check_source_table(cfg, month, checked, folder.uri, adopt_other_table)
    if not checked["verified"]:
        reporter.warn(f"export {month}: {checked['verification']}")
    if "adopted_other_table" in table_check:
        reporter.warn(f"export {month}: {table_check['table_check']}")
    return {
        "mode": "adopted",
        "table": cfg.source_table(month),
        "export_folder": folder.uri,
        **checked,
        **table_check,
        "duration_s": round(time.time() - started, 3),
        "config_hash": cfg.hash_of("source"),
    }
