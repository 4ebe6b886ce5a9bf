"""Where a catch-up window's changes come from. Every source ends in the incremental-export layout, so one
transform reads them all:

  pitr      ExportTableToPointInTime with ExportType=INCREMENTAL_EXPORT into
            `export/month=M/changes/window-NNNNN/` (AWS writes `AWSDynamoDB/<exportId>/manifest-*` and
            `AWSDynamoDB/data/*.json.gz` there); a window of 15 minutes to 24 hours
  adopt     an incremental export that already exists, validated where it is (md5s, counts)
  stream    the table's stream (NEW_AND_OLD_IMAGES or NEW_IMAGE): every shard read from the stored position
            (TRIM_HORIZON the first time), a closed one to its end, an open one until an empty page, written as
            change lines in the same layout; in sync only up to what was read. A stream keeps 24 hours of
            records: a catch-up must run at least that often.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError
from etl.export import pitr
from etl.export.inspect import check_source_table, inspect_export
from etl.progress import Reporter
from etl.times import iso_ms as iso
from etl.times import parse as parse_time

MIN_WINDOW = timedelta(minutes=15)
MAX_WINDOW = timedelta(hours=24)
STREAM_RETENTION = timedelta(hours=24)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def pitr_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into chained windows of at most 24 hours, none shorter than 15 minutes (a remainder
    under 15 minutes waits for the next catch-up)."""
    out = []
    while end - start >= MIN_WINDOW:
        stop = min(start + MAX_WINDOW, end)
        if end - stop and end - stop < MIN_WINDOW:
            stop = end - MIN_WINDOW if stop - start > MIN_WINDOW else stop
        out.append((start, stop))
        start = stop
    return out


# --------------------------------------------------------------------------- incremental exports


def _files(checked: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"uri": f["uri"], "size": f.get("size"), "md5": f.get("md5"), "item_count": f.get("item_count")}
            for f in checked["files"]]


def adopt(cfg: Config, month: str, uri: str, synced: datetime, *, adopt_other_table: bool = False) -> dict[str, Any]:
    """An existing incremental export as the month's next window: validated like a full one (files, md5s, counts)
    and checked to be of the month's source table, both before anything is applied. A window that starts after
    `synced` (the time the index is in sync up to) is refused: the changes between would be lost. One that ends at
    or before it is returned with `already_applied` (the stage skips it and says so)."""
    folder = staging.open_store(uri.rstrip("/"), cfg.staging)
    checked = inspect_export(folder)
    if checked.get("export_type") != "INCREMENTAL_EXPORT":
        raise EtlError(f"{folder.uri} is a full export, not an incremental one (its manifest has no exportType "
                       "INCREMENTAL_EXPORT)", hint="adopt a full export with `etl export --use-existing`")
    table_check = check_source_table(cfg, month, checked, folder.uri, adopt_other_table)
    start, end = parse_time(checked["export_from_time"]), parse_time(checked["export_to_time"])
    if start > synced:
        raise EtlError(f"catch-up {month}: the incremental export starts at {iso(start)}, after the time the index "
                       f"is in sync up to ({iso(synced)}): the changes between would be lost",
                       hint="adopt (or export) the window that starts at or before that time first")
    return {"mode": "adopted", "source": folder.uri, "export_arn": checked.get("export_arn"),
            "from": iso(start), "to": iso(end), "already_applied": end <= synced,
            "view": checked.get("output_view") or "NEW_AND_OLD_IMAGES", "verified": checked["verified"],
            "verification": checked["verification"], "item_count": checked["item_count"], "files": _files(checked),
            "table_arn": checked.get("table_arn"), **table_check}


def _window_folder(store: staging.Store, prefix: str) -> staging.Store | None:
    """The export's `AWSDynamoDB/<exportId>/` folder under a window's prefix (None: no manifest written)."""
    base = f"{prefix}/AWSDynamoDB/"
    for o in store.list(base):
        if o.key.endswith("/manifest-summary.json"):
            return store.sub(o.key.rsplit("/", 1)[0])
    return None


def export_window(cfg: Config, store: staging.Store, month: str, window: int, start: datetime, end: datetime,
                  record: dict[str, Any], save: Any, reporter: Reporter) -> dict[str, Any]:
    """One incremental export, [start, end); its ARN is saved before the wait, so a rerun waits on it again."""
    prefix = staging.changes_source_prefix(month, window)
    arn = record.get("export_arn")
    if not arn:
        arn, token = pitr.start_incremental_export(cfg, store, month, prefix, start, end)
        save({**record, "export_arn": arn, "client_token": token})
        reporter.info(f"catch-up {month}: window {window} ({iso(start)} to {iso(end)}): started {arn}")
    d = pitr.wait_export(cfg, month, arn, reporter)
    folder = _window_folder(store, prefix)
    base = {"mode": "pitr", "export_arn": arn, "from": iso(start), "to": iso(end), "view": "NEW_AND_OLD_IMAGES",
            "describe_item_count": d.get("ItemCount")}
    if folder is not None:
        checked = inspect_export(folder)
        return {**base, "verified": checked["verified"], "verification": checked["verification"],
                "item_count": checked["item_count"], "files": _files(checked)}
    data = [o for o in store.list(f"{prefix}/AWSDynamoDB/") if o.key.endswith((".gz", ".json"))]
    reporter.warn(f"catch-up {month}: window {window}: no manifest-summary.json under {store.key_uri(prefix)} "
                  f"(an emulator's export?): {len(data)} data file(s) listed, not verified")
    return {**base, "verified": False, "verification": "no manifests: data files listed, not verified",
            "item_count": None, "files": [{"uri": store.key_uri(o.key), "size": o.size, "md5": None,
                                           "item_count": None} for o in data]}


# --------------------------------------------------------------------------- the stream


def _shards(streams: Any, arn: str) -> list[dict[str, Any]]:
    """Every shard of the stream, parents before their children."""
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamArn": arn}
    while True:
        d = streams.describe_stream(**kwargs)["StreamDescription"]
        shards += d.get("Shards", [])
        if not d.get("LastEvaluatedShardId"):
            break
        kwargs["ExclusiveStartShardId"] = d["LastEvaluatedShardId"]
    ids = {s["ShardId"] for s in shards}
    done: set[str] = set()
    ordered: list[dict[str, Any]] = []
    while len(ordered) < len(shards):
        for s in shards:
            parent = s.get("ParentShardId")
            if s["ShardId"] not in done and (not parent or parent not in ids or parent in done):
                ordered.append(s)
                done.add(s["ShardId"])
    return ordered


def _when(record: dict[str, Any]) -> datetime:
    when: datetime = record["dynamodb"]["ApproximateCreationDateTime"]
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _line(record: dict[str, Any]) -> bytes:
    d = record["dynamodb"]
    when = _when(record)
    body: dict[str, Any] = {"Metadata": {"WriteTimestampMicros": {"N": str(micros(when))}}, "Keys": d["Keys"]}
    for image in ("OldImage", "NewImage"):
        if image in d:
            body[image] = d[image]
    return json.dumps(body, separators=(",", ":"), default=_b64).encode()


def _b64(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _stream_of(cfg: Config, month: str) -> tuple[str, str, str]:
    ddb = aws.client(cfg.source, "dynamodb")
    table = cfg.source_table(month)
    d = ddb.describe_table(TableName=table)["Table"]
    spec = d.get("StreamSpecification") or {}
    arn = d.get("LatestStreamArn")
    if not arn or not spec.get("StreamEnabled"):
        raise EtlError(f"{table} has no stream: --mode stream reads the table's stream",
                       hint=f"`aws dynamodb update-table --table-name {table} --stream-specification "
                            "StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES` (changes before it are not in "
                            "it: export the month again after), or use --mode pitr")
    view = spec.get("StreamViewType", "")
    if view not in ("NEW_AND_OLD_IMAGES", "NEW_IMAGE"):
        raise EtlError(f"the stream of {table} is {view}; catch-up needs NEW_AND_OLD_IMAGES (or NEW_IMAGE)")
    return table, str(arn), view


def read_stream(cfg: Config, store: staging.Store, month: str, window: int, since: datetime,
                previous: dict[str, Any] | None, reporter: Reporter) -> dict[str, Any]:
    """Every stream record after the stored positions (all of them the first time) -> change lines, one data
    file per shard (in shard order, so the transform keeps each shard's order). The new positions are
    returned for the window's record; they become the month's only when the window commits.

    The window's `to` (the time the index is in sync up to once it is applied) is only what was read: an open
    shard can answer an empty page while records are still to come (GetRecords: "it might take multiple calls to
    get to a portion of the shard that contains stream records"), so each open shard holds it back to its last
    record's ApproximateCreationDateTime (`since` when none was read on it); a shard read to its end (closed, no
    NextShardIterator) holds nothing back. Never later than the listing of the shards (a shard that closes while
    it is read has children not listed, whose records come after it closed) nor earlier than `since`."""
    listed_at = datetime.now(UTC)
    table, arn, view = _stream_of(cfg, month)
    previous = previous or {}
    positions: dict[str, dict[str, Any]] = dict(previous.get("positions") or {})
    if previous and previous.get("stream_arn") != arn:
        raise EtlError(f"the stream of {table} is not the one the last catch-up read ({previous.get('stream_arn')})"
                       ": changes between the two streams are not in either",
                       hint=f"export the month again (`etl export --month {month} --force`), then run every stage")
    if not positions and listed_at - since > STREAM_RETENTION:
        raise EtlError(f"the month's index was last in sync at {iso(since)}, more than the stream's 24-hour "
                       "retention ago: changes may have been trimmed",
                       hint="use --mode pitr, or export the month again")
    streams = aws.client(cfg.source, "dynamodbstreams")
    shards = _shards(streams, arn)
    ids = {s["ShardId"] for s in shards}
    gone = [s for s, p in positions.items() if s not in ids and not p.get("closed")]
    if gone:
        raise EtlError(f"the stream of {table} no longer has shard {gone[0]}, read only in part: records were "
                       "trimmed (24-hour retention)", hint="use --mode pitr, or export the month again")
    prefix = staging.changes_source_prefix(month, window)
    store.delete_prefix(prefix + "/")
    task = reporter.task(f"stream {month}", None, "records")
    written: list[tuple[str, bytes, int]] = []
    whole_minutes = True  # every record time a whole minute: the emulator's rounding (DynamoDB Local)
    synced = listed_at
    for n, shard in enumerate(shards):
        sid = shard["ShardId"]
        if positions.get(sid, {}).get("closed"):
            continue
        read = _read_shard(streams, arn, shard, positions.get(sid, {}), task)
        positions[sid] = read.position
        whole_minutes &= read.whole_minutes
        if not read.position.get("closed"):
            synced = min(synced, read.last or since)
        if read.lines:
            data = gzip.compress(b"\n".join(read.lines) + b"\n", mtime=0)
            written.append((f"shard-{n:05d}-{hashlib.md5(sid.encode()).hexdigest()[:12]}.json.gz", data,
                            len(read.lines)))
    task.finish()
    synced = max(synced, since)
    folder = write_layout(store, prefix, f"{micros(listed_at) // 1000:014d}-stream{window:05d}", written,
                          {"tableArn": arn.split("/stream/")[0], "exportFromTime": iso(since),
                           "exportToTime": iso(synced), "outputView": view})
    checked = inspect_export(folder)
    return {"mode": "stream", "stream_arn": arn, "from": iso(since), "to": iso(synced), "read_at": iso(listed_at),
            "view": view, "positions": positions, "times_in_minutes": bool(written) and whole_minutes,
            "verified": checked["verified"], "verification": checked["verification"],
            "item_count": checked["item_count"], "files": _files(checked)}


@dataclass
class _ShardRead:
    lines: list[bytes] = field(default_factory=list)
    position: dict[str, Any] = field(default_factory=dict)  # the last sequence read; closed: read to its end
    last: datetime | None = None  # the last record's ApproximateCreationDateTime
    whole_minutes: bool = True


EMPTY_PAGES = 3  # an open shard: empty pages in a row, nothing read, before this catch-up leaves it (the next
# one goes on from the same position)


def _read_shard(streams: Any, arn: str, shard: dict[str, Any], position: dict[str, Any], task: Any) -> _ShardRead:
    """One shard from its stored position. A closed shard (DescribeStream gives its EndingSequenceNumber) is read
    to its end, through empty pages. An open one until an empty page after records, or EMPTY_PAGES empty pages:
    the rest is read by the next catch-up, and the shard's last record bounds the in-sync time meanwhile."""
    kwargs: dict[str, Any] = {"StreamArn": arn, "ShardId": shard["ShardId"]}
    if position.get("sequence"):
        kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=position["sequence"])
    else:
        kwargs["ShardIteratorType"] = "TRIM_HORIZON"
    closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
    out = _ShardRead(position=dict(position))
    iterator = streams.get_shard_iterator(**kwargs)["ShardIterator"]
    empty = 0
    while iterator:
        page = streams.get_records(ShardIterator=iterator, Limit=1000)
        records = page.get("Records", [])
        out.lines += [_line(r) for r in records]
        out.whole_minutes &= all(_when(r).second == 0 and _when(r).microsecond == 0 for r in records)
        if records:
            out.position = {"sequence": records[-1]["dynamodb"]["SequenceNumber"]}
            out.last = _when(records[-1])
            task.advance(len(records))
            empty = 0
        iterator = page.get("NextShardIterator")
        if iterator is None:
            out.position = {**out.position, "closed": True}
        elif not records and not closed:
            empty += 1
            if out.lines or empty >= EMPTY_PAGES:
                break
    return out


def write_layout(store: staging.Store, prefix: str, export_id: str, files: list[tuple[str, bytes, int]],
                 summary: dict[str, Any]) -> staging.Store:
    """Data files and manifests as an incremental export writes them: `AWSDynamoDB/data/` beside
    `AWSDynamoDB/<exportId>/manifest-summary.json`, `manifest-files.json` and their `.md5`s."""
    folder_key = f"{prefix}/AWSDynamoDB/{export_id}"
    folder = store.sub(folder_key)
    folder.write("_started", b"")
    entries: list[dict[str, Any]] = []
    for name, data, count in files:
        store.write(f"{prefix}/AWSDynamoDB/data/{name}", data)
        entries.append({"itemCount": count, "md5Checksum": base64.b64encode(hashlib.md5(data).digest()).decode(),
                        "etag": hashlib.md5(data).hexdigest(), "dataFileS3Key": f"AWSDynamoDB/data/{name}"})
    listing = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries).encode()
    folder.write("manifest-files.json", listing)
    folder.write("manifest-files.md5", base64.b64encode(hashlib.md5(listing).digest()))
    body = {"version": "2023-08-01", "exportArn": f"{summary.get('tableArn')}/export/{export_id}",
            "manifestFilesS3Key": f"AWSDynamoDB/{export_id}/manifest-files.json",
            "itemCount": sum(e["itemCount"] for e in entries), "outputFormat": "DYNAMODB_JSON",
            "exportType": "INCREMENTAL_EXPORT", **summary}
    raw = json.dumps(body, separators=(",", ":")).encode()
    folder.write("manifest-summary.json", raw)
    folder.write("manifest-summary.md5", base64.b64encode(hashlib.md5(raw).digest()))
    return folder
