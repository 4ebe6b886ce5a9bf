"""Catch-up from a real incremental export (the fixture AWS wrote), on DynamoDB Local; the PITR request on moto."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from etl import aws, pipeline, staging
from etl.catchup import stage
from etl.config import Config
from etl.errors import EtlError
from etl.pipeline import run_export, run_load, run_transform, run_verify
from tests.conftest import ddb_client, s3_client

M = "202405"
FIXTURE = Path(__file__).parent / "fixtures" / "aws-incremental-export" / "AWSDynamoDB"
INCREMENTAL = FIXTURE / "01716791487000-6ddcf8cf"
FROM = "2024-05-27T06:11:47.109Z"  # the fixture's exportFromTime
MAPPING = """
[transform]
non_empty = ["name"]
[[transform.columns]]
name = "CustomerID"
source = "name"
[load]
max_wcu = 100000
max_rcu = 100000
"""


def b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def fixture_changes() -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((FIXTURE / "data").glob("*.json.gz"))
            for line in gzip.decompress(f.read_bytes()).splitlines()]


def full_export(folder: Path, items: list[dict[str, Any]], export_time: str) -> Path:
    """A full export as AWS writes it, with its exportTime (the time the catch-up starts from)."""
    root = folder / "AWSDynamoDB" / "01716790000000-aaaabbbb"
    (root / "data").mkdir(parents=True)
    data = gzip.compress("".join(json.dumps({"Item": it}) + "\n" for it in items).encode())
    (root / "data" / "snapshotaaaaaaaaaaaaaaaaaa.json.gz").write_bytes(data)
    files = (json.dumps({"itemCount": len(items), "md5Checksum": b64md5(data), "etag": hashlib.md5(data).hexdigest(),
                         "dataFileS3Key": f"AWSDynamoDB/{root.name}/data/snapshotaaaaaaaaaaaaaaaaaa.json.gz"})
             + "\n").encode()
    (root / "manifest-files.json").write_bytes(files)
    summary = json.dumps({"version": "2020-06-30", "exportArn": "arn:aws:dynamodb:us-west-1:1:table/unicorn_activities/"
                          "export/x", "exportTime": export_time, "itemCount": len(items),
                          "outputFormat": "DYNAMODB_JSON", "manifestFilesS3Key": "x"}).encode()
    (root / "manifest-summary.json").write_bytes(summary)
    return root


@pytest.fixture()
def unicorn_index(ddb_local: str) -> Iterator[str]:
    table = f"shop_eu_AnniversaryPromo_2017_{uuid.uuid4().hex[:6]}"
    ddb_client(ddb_local).create_table(
        TableName=table, KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"}],
        ProvisionedThroughput={"ReadCapacityUnits": 1000, "WriteCapacityUnits": 1000})
    yield table
    ddb_client(ddb_local).delete_table(TableName=table)


def names(endpoint: str, table: str) -> set[str]:
    return {it["CustomerID"]["S"] for page in ddb_client(endpoint).get_paginator("scan").paginate(TableName=table)
            for it in page["Items"]}


def loaded_snapshot(cfg: Config, tmp_path: Path, export_time: str = FROM) -> set[str]:
    """The table as of the fixture's exportFromTime (every OldImage), plus one item no change touches."""
    before = [c["OldImage"] for c in fixture_changes() if "OldImage" in c] + [{"name": {"S": "Untouched1"}}]
    run_export(cfg, [M], use_existing=str(full_export(tmp_path / "full", before, export_time)))
    run_transform(cfg, [M])
    run_load(cfg, [M])
    return {it["name"]["S"] for it in before}


def test_the_real_incremental_export_is_adopted_transformed_and_applied(
        ddb_local: str, unicorn_index: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=unicorn_index, extra=MAPPING, ETL_DESTINATION_SORT_KEY="")
    with pytest.raises(EtlError, match="is an incremental export"):  # not a full export: said so, not "missing"
        run_export(cfg, ["202404"], use_existing=str(INCREMENTAL))
    snapshot = loaded_snapshot(cfg, tmp_path)
    assert names(ddb_local, unicorn_index) == snapshot and len(snapshot) == 15
    [r] = pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL))
    lines = fixture_changes()
    deleted = {c["Keys"]["name"]["S"] for c in lines if "NewImage" not in c}
    added = {c["Keys"]["name"]["S"] for c in lines if "OldImage" not in c}
    assert (len(lines), len(deleted), len(added)) == (15, 6, 1)
    # every change applies; the 8 updates change only `activities`, which the mapping does not read
    assert (r["changes_in"], r["applied"], r["filtered"], r["rejected"], r["before_sync"]) == (15, 15, 0, 0, 0)
    assert (r["keys_touched"], r["puts"], r["deletes"], r["unchanged"]) == (15, 1, 6, 8)
    assert (r["written"], r["synced_to"]) == (7, "2024-05-27T06:26:47.109Z")
    [w] = r["windows"]
    assert w["verified"] and w["mode"] == "adopted" and w["view"] == "NEW_AND_OLD_IMAGES"
    assert names(ddb_local, unicorn_index) == (snapshot - deleted) | added
    store = staging.open_store(cfg.staging.root, cfg.staging)
    import pyarrow.parquet as pq

    ops = pq.read_table(store.key_uri(staging.changes_key(M, 1))).to_pylist()
    assert sorted((o["op"], o["CustomerID"]) for o in ops) == sorted(
        [("delete", n) for n in deleted] + [("put", n) for n in added])
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["undeleted"] == 0 and v["checked"] == 10 + 6
    ddb_client(ddb_local).put_item(TableName=unicorn_index, Item={"CustomerID": {"S": sorted(deleted)[0]}})
    [v] = run_verify(cfg, [M])
    assert not v["ok"] and v["undeleted"] == 1
    [again] = pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL))  # already applied: skipped
    assert again["windows_this_run"] == 0 and len(again["windows"]) == 1
    assert again["windows_skipped"] == ["the adopted export is already applied"]


def test_a_window_after_the_synced_time_is_refused(ddb_local: str, unicorn_index: str,
                                                   make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=unicorn_index, extra=MAPPING, ETL_DESTINATION_SORT_KEY="")
    loaded_snapshot(cfg, tmp_path, export_time="2024-05-27T06:00:00.000Z")
    with pytest.raises(EtlError, match="after the time the index is in sync up to"):
        pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL))


def test_pitr_windows_are_chained_incremental_exports_with_idempotent_tokens(
        moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage/pfx", extra="[load]\nmax_wcu = 1000\n")
    s3_client(moto).create_bucket(Bucket="stage")
    ddb = ddb_client(moto)
    table = cfg.source_table(M)
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "DateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "DateTime", "AttributeType": "S"}])
    ddb.update_continuous_backups(TableName=table,
                                  PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    ddb.create_table(TableName=cfg.destination_table(), BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "CreationDateTime", "AttributeType": "N"}])
    ddb.put_item(TableName=table, Item={"CustomerID": {"S": "C1"}, "DateTime": {"S": "2024-05-01T10:00:00Z"},
                                        "OrderID": {"S": "O1"}})
    [e] = run_export(cfg, [M])
    run_transform(cfg, [M])
    run_load(cfg, [M], include_expired=True)
    sent: list[dict[str, Any]] = []

    def record(request: Any, **_: Any) -> None:
        if request.headers.get("X-Amz-Target", b"").endswith(b"ExportTableToPointInTime"):
            sent.append(json.loads(request.body))

    aws.session_for(cfg.source).events.register("before-send.dynamodb", record)
    from datetime import timedelta

    start = stage.source.parse_time(e["export_time"])
    [r] = pipeline.run_catchup(cfg, [M], to=start + timedelta(hours=30))
    arn = ddb.describe_table(TableName=table)["Table"]["TableArn"]
    windows = [(start, start + timedelta(hours=24)), (start + timedelta(hours=24), start + timedelta(hours=30))]
    assert [(s["ExportType"], s["IncrementalExportSpecification"], s["S3Prefix"], s["ClientToken"]) for s in sent] == [
        ("INCREMENTAL_EXPORT", {"ExportFromTime": a.timestamp(), "ExportToTime": b.timestamp(),
                                "ExportViewType": "NEW_AND_OLD_IMAGES"}, f"pfx/export/month={M}/changes/window-{i:05d}",
         str(uuid.uuid5(uuid.NAMESPACE_URL, f"{arn}|{a.isoformat()}|{b.isoformat()}")))
        for i, (a, b) in enumerate(windows, 1)]
    assert all("ExportTime" not in s for s in sent)
    # moto writes a full export's `Item` lines, no change lines: quarantined as such, nothing applied
    assert len(r["windows"]) == 2 and r["synced_to"] == stage.source.iso(windows[1][1])
    assert r["applied"] == 0 and r["rejected"] == r["changes_in"] and r["puts"] == r["deletes"] == 0
    # under 15 minutes: nothing to do
    [again] = pipeline.run_catchup(cfg, [M], to=start + timedelta(hours=30, minutes=10))
    assert again["windows_this_run"] == 0 and len(sent) == 2


def incremental_export(folder: Path, lines: list[dict[str, Any]], start: str, end: str) -> Path:
    """An incremental export as AWS lays it out: manifests under AWSDynamoDB/<id>/, data under AWSDynamoDB/data/."""
    root = folder / "AWSDynamoDB" / "01716800000000-ccccdddd"
    (folder / "AWSDynamoDB" / "data").mkdir(parents=True)
    root.mkdir()
    data = gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())
    (folder / "AWSDynamoDB" / "data" / "changesaaaaaaaaaaaaaaaaaaa.json.gz").write_bytes(data)
    files = (json.dumps({"itemCount": len(lines), "md5Checksum": b64md5(data), "etag": hashlib.md5(data).hexdigest(),
                         "dataFileS3Key": "AWSDynamoDB/data/changesaaaaaaaaaaaaaaaaaaa.json.gz"}) + "\n").encode()
    (root / "manifest-files.json").write_bytes(files)
    (root / "manifest-summary.json").write_bytes(json.dumps({
        "version": "2023-08-01", "exportArn": "arn:aws:dynamodb:us-east-1:1:table/T/export/y", "itemCount": len(lines),
        "exportFromTime": start, "exportToTime": end, "outputFormat": "DYNAMODB_JSON",
        "outputView": "NEW_AND_OLD_IMAGES", "exportType": "INCREMENTAL_EXPORT", "manifestFilesS3Key": "x"}).encode())
    return root


def test_two_items_with_one_identical_row_are_counted_apart(ddb_local: str, dest_table: Callable[..., str],
                                                            make_config: Callable[..., Config], tmp_path: Path) -> None:
    """Two source items give the same index row (one customer, one second, one OrderID): deleting one of them
    leaves the row, which the other still gives."""
    from datetime import UTC, datetime, timedelta

    day = datetime.now(UTC) - timedelta(days=3)  # recent: not past its TTL
    month, t0 = day.strftime("%Y%m"), day.replace(hour=12, minute=0, second=0, microsecond=0)

    def item(ms: int) -> dict[str, Any]:
        return {"CustomerID": {"S": "C1"}, "DateTime": {"S": f"{day:%Y-%m-%d}T10:00:00.{ms:03d}Z"},
                "OrderID": {"S": "O1"}}

    def micros(minutes: int) -> dict[str, Any]:
        return {"WriteTimestampMicros": {"N": str(int((t0 + timedelta(minutes=minutes)).timestamp() * 1e6))}}

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    cfg = make_config(dest_endpoint=ddb_local, dest_table=dest_table(),
                      extra="[load]\nmax_wcu = 100000\nmax_rcu = 100000\n")
    run_export(cfg, [month], use_existing=str(full_export(tmp_path / "full", [item(100)], iso(t0))))
    run_transform(cfg, [month])
    run_load(cfg, [month])
    b, a = item(900), item(100)
    changes = incremental_export(tmp_path / "inc", [
        {"Metadata": micros(1), "Keys": {k: b[k] for k in ("CustomerID", "DateTime")}, "NewImage": b},  # B added
        {"Metadata": micros(2), "Keys": {k: a[k] for k in ("CustomerID", "DateTime")}, "OldImage": a},  # A deleted
    ], iso(t0), iso(t0 + timedelta(minutes=15)))
    [r] = pipeline.run_catchup(cfg, [month], use_existing=str(changes))
    assert (r["applied"], r["keys_touched"], r["puts"], r["deletes"], r["unchanged"]) == (2, 1, 0, 0, 1)
    rows = [it for page in ddb_client(ddb_local).get_paginator("scan").paginate(TableName=cfg.destination_table())
            for it in page["Items"]]
    assert [(it["CustomerID"]["S"], it["OrderID"]["S"]) for it in rows] == [("C1", "O1")]
    [v] = run_verify(cfg, [month])
    assert v["ok"]


def test_quiet_catch_up_says_when_a_window_was_skipped_as_already_applied(
        ddb_local: str, unicorn_index: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    cfg = make_config(dest_endpoint=ddb_local, dest_table=unicorn_index, extra=MAPPING, ETL_DESTINATION_SORT_KEY="")
    loaded_snapshot(cfg, tmp_path)
    args = ["--config", str(tmp_path / "pipeline.toml"), "--progress", "quiet", "catch-up", "--month", M,
            "--use-existing", str(INCREMENTAL), "--yes"]
    env = {"ETL_DESTINATION_SORT_KEY": ""}
    first = CliRunner().invoke(cli, args, env=env)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, args, env=env)
    assert again.exit_code == 0, again.output
    assert "already applied" not in first.output and "15 changes after the export" in first.output
    assert "nothing applied this run (the adopted export is already applied, skipped)" in again.output
    assert again.output != first.output
