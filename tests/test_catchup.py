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
from etl.errors import EtlError, ValidationFailed
from etl.pipeline import run_export, run_load, run_transform, run_verify
from tests.conftest import ddb_client, s3_client

M = "202405"
FIXTURE = Path(__file__).parent / "fixtures" / "aws-incremental-export" / "AWSDynamoDB"
INCREMENTAL = FIXTURE / "01716791487000-6ddcf8cf"
FROM = "2024-05-27T06:11:47.109Z"  # the fixture's exportFromTime
UNICORN = "arn:aws:dynamodb:us-west-1:060119642692:table/unicorn_activities"  # the fixture's tableArn
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
    store = staging.open_store(cfg.staging.root, cfg.staging)
    # the fixture is an export of unicorn_activities in us-west-1, not of the month's CustomerTracker_shop_eu_202405
    with pytest.raises(ValidationFailed) as refused:
        pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL))
    assert "\n" not in refused.value.message and "--adopt-other-table" in (refused.value.hint or "")
    assert (f"of table {UNICORN}, not of month {M}'s source table CustomerTracker_shop_eu_{M} (us-east-1) "
            "(table name and region differ)") in refused.value.message
    assert staging.read_manifest(store, M, "catchup") is None and not store.exists(staging.catchup_window_key(M, 1))
    assert names(ddb_local, unicorn_index) == snapshot  # nothing applied
    [r] = pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL), adopt_other_table=True)  # on purpose: recorded
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
    assert w["adopted_other_table"] == {"export_table": UNICORN, "month_table": f"CustomerTracker_shop_eu_{M}",
                                        "month_region": "us-east-1", "month_account": None}
    assert names(ddb_local, unicorn_index) == (snapshot - deleted) | added
    import pyarrow.parquet as pq

    ops = pq.read_table(store.key_uri(staging.changes_key(M, 1))).to_pylist()
    assert sorted((o["op"], o["CustomerID"]) for o in ops) == sorted(
        [("delete", n) for n in deleted] + [("put", n) for n in added])
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["undeleted"] == 0 and v["checked"] == 10 + 6
    ddb_client(ddb_local).put_item(TableName=unicorn_index, Item={"CustomerID": {"S": sorted(deleted)[0]}})
    [v] = run_verify(cfg, [M])
    assert not v["ok"] and v["undeleted"] == 1
    # already applied: skipped, and said so
    [again] = pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL), adopt_other_table=True)
    assert again["windows_this_run"] == 0 and len(again["windows"]) == 1
    assert again["windows_skipped"] == ["the adopted export is already applied"]


def test_a_window_after_the_synced_time_is_refused(ddb_local: str, unicorn_index: str,
                                                   make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=unicorn_index, extra=MAPPING, ETL_DESTINATION_SORT_KEY="")
    loaded_snapshot(cfg, tmp_path, export_time="2024-05-27T06:00:00.000Z")
    with pytest.raises(EtlError, match="after the time the index is in sync up to"):
        pipeline.run_catchup(cfg, [M], use_existing=str(INCREMENTAL), adopt_other_table=True)


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


def incremental_export(folder: Path, lines: list[dict[str, Any]], start: str, end: str,
                       table_arn: str | None = None) -> Path:
    """An incremental export as AWS lays it out: manifests under AWSDynamoDB/<id>/, data under AWSDynamoDB/data/
    (the summary's tableArn only when given)."""
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
        "outputView": "NEW_AND_OLD_IMAGES", "exportType": "INCREMENTAL_EXPORT", "manifestFilesS3Key": "x",
        **({"tableArn": table_arn} if table_arn else {})}).encode())
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
    ], iso(t0), iso(t0 + timedelta(minutes=15)),
        table_arn=f"arn:aws:dynamodb:us-east-1:1:table/{cfg.source_table(month)}")
    [r] = pipeline.run_catchup(cfg, [month], use_existing=str(changes))
    assert r["windows"][0]["table_check"].startswith("tableArn ") and "adopted_other_table" not in r["windows"][0]
    assert (r["applied"], r["keys_touched"], r["puts"], r["deletes"], r["unchanged"]) == (2, 1, 0, 0, 1)
    rows = [it for page in ddb_client(ddb_local).get_paginator("scan").paginate(TableName=cfg.destination_table())
            for it in page["Items"]]
    assert [(it["CustomerID"]["S"], it["OrderID"]["S"]) for it in rows] == [("C1", "O1")]
    [v] = run_verify(cfg, [month])
    assert v["ok"]


# --------------------------------------------------------------------------- change lines, adopted windows


class Month:
    """A recent month (its orders not past their TTL) backfilled with one order, C1's, on DynamoDB Local."""

    def __init__(self, cfg: Config, tmp_path: Path) -> None:
        from datetime import UTC, datetime, timedelta

        day = datetime.now(UTC) - timedelta(days=3)
        self.cfg, self.tmp, self.day = cfg, tmp_path, day
        self.month, self.t0 = day.strftime("%Y%m"), day.replace(hour=12, minute=0, second=0, microsecond=0)
        self.arn = f"arn:aws:dynamodb:us-east-1:123456789012:table/{cfg.source_table(self.month)}"
        run_export(cfg, [self.month], use_existing=str(full_export(tmp_path / "full", [self.item(1, "O1")],
                                                                   self.iso(0))))
        run_transform(cfg, [self.month])
        run_load(cfg, [self.month])

    def item(self, customer: int, order: str) -> dict[str, Any]:
        return {"CustomerID": {"S": f"C{customer}"}, "DateTime": {"S": f"{self.day:%Y-%m-%d}T10:00:00.000Z"},
                "OrderID": {"S": order}}

    def iso(self, minutes: int) -> str:
        from datetime import timedelta

        return (self.t0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def micros(self, minutes: int) -> dict[str, Any]:
        from datetime import timedelta

        return {"WriteTimestampMicros": {"N": str(int((self.t0 + timedelta(minutes=minutes)).timestamp() * 1e6))}}

    def put(self, minutes: int, image: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
        keys = {k: image[k] for k in ("CustomerID", "DateTime")}
        return {"Metadata": self.micros(minutes), "Keys": keys, "NewImage": image, **({"OldImage": old} if old else {})}

    def changes(self, name: str, lines: list[dict[str, Any]], table_arn: str | None = None) -> Path:
        return incremental_export(self.tmp / name, lines, self.iso(0), self.iso(15), table_arn or self.arn)

    def index(self, endpoint: str) -> dict[str, str]:
        return {it["CustomerID"]["S"]: it["OrderID"]["S"] for page in ddb_client(endpoint).get_paginator("scan")
                .paginate(TableName=self.cfg.destination_table()) for it in page["Items"]}


def test_change_lines_whose_metadata_or_keys_are_not_dynamodb_json_of_the_right_types_are_quarantined(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=dest_table(),
                      extra="[load]\nmax_wcu = 100000\nmax_rcu = 100000\n")
    m = Month(cfg, tmp_path)
    assert m.index(ddb_local) == {"C1": "O1"}

    def bad(customer: int, **fields: Any) -> dict[str, Any]:
        """A line that would add customer C<customer>'s order if it were applied."""
        return {**m.put(3, m.item(customer, f"O{customer}")), **fields}

    date = m.item(0, "")["DateTime"]
    malformed = [
        ("Metadata is not an object", bad(10, Metadata="soon")),
        ("no Metadata.WriteTimestampMicros", bad(11, Metadata={})),
        ("Metadata.WriteTimestampMicros is not a whole number", bad(12, Metadata={"WriteTimestampMicros": {
            "N": int(m.micros(3)["WriteTimestampMicros"]["N"])}})),  # a bare JSON number, not DynamoDB JSON's string
        ("Metadata.WriteTimestampMicros is not a whole number", bad(13, Metadata={"WriteTimestampMicros": {
            "N": "1.7e15"}})),
        ("Keys.CustomerID is not a key attribute value", bad(14, Keys={"CustomerID": "C14", "DateTime": date})),
        ("Keys.CustomerID is not a key attribute value", bad(15, Keys={"CustomerID": {"BOOL": True},
                                                                       "DateTime": date})),
        ("Keys.DateTime is not a non-empty S value", bad(16, Keys={"CustomerID": {"S": "C16"}, "DateTime": {"S": 7}})),
        ("Keys.CustomerID is of type N, but the NewImage holds it as S", bad(
            17, Keys={"CustomerID": {"N": "17"}, "DateTime": date})),
    ]
    good = [m.put(1, m.item(2, "O2")), m.put(2, m.item(1, "O9"), old=m.item(1, "O1"))]  # C2 added, C1's order changed
    lines = [good[0], *(line for _, line in malformed), good[1]]
    [r] = pipeline.run_catchup(cfg, [m.month], use_existing=str(m.changes("inc", lines)))
    assert (r["changes_in"], r["applied"], r["rejected"]) == (10, 2, 8)
    assert r["windows"][0]["rejected_by"] == {"malformed_line": 8}
    assert r["changes_in"] == r["before_sync"] + r["applied"] + r["filtered"] + r["rejected"]
    assert m.index(ddb_local) == {"C1": "O9", "C2": "O2"}  # nothing of a malformed line applied
    store = staging.open_store(cfg.staging.root, cfg.staging)
    quarantined = [json.loads(line) for line in gzip.decompress(store.read(staging.changes_rejected_key(m.month, 1)))
                   .splitlines()]
    assert [q["reason"] for q in quarantined] == ["malformed_line"] * 8
    for q, (why, line) in zip(quarantined, malformed, strict=True):
        assert q["message"].startswith(why) and json.loads(q["line"]) == line


def test_an_incremental_export_of_another_table_is_refused_by_the_cli_before_anything_is_applied(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    cfg = make_config(dest_endpoint=ddb_local, dest_table=dest_table(),
                      extra="[load]\nmax_wcu = 100000\nmax_rcu = 100000\n")
    m = Month(cfg, tmp_path)
    other = "arn:aws:dynamodb:us-east-1:123456789012:table/CustomerTracker_Devo_NA_202405"
    folder = m.changes("other", [m.put(2, m.item(1, "O9"), old=m.item(1, "O1"))], table_arn=other)
    base = ["--config", cfg.path, "--progress", "quiet", "catch-up", "--month", m.month, "--use-existing",
            str(folder), "--yes"]
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 1 and "Traceback" not in r.output
    line = r.output.strip().splitlines()[0]
    assert other in line and f"{cfg.source_table(m.month)} (us-east-1)" in line
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, m.month, "catchup") is None
    assert store.list(staging.catchup_prefix(m.month)) == [] and m.index(ddb_local) == {"C1": "O1"}
    r = CliRunner().invoke(cli, [*base, "--adopt-other-table"])
    assert r.exit_code == 0, r.output
    assert m.index(ddb_local) == {"C1": "O9"}
    [w] = staging.read_manifest(store, m.month, "catchup")["windows"]
    assert w["adopted_other_table"]["export_table"] == other


def test_an_adopted_window_says_whether_it_is_already_applied(make_config: Callable[..., Config],
                                                              tmp_path: Path) -> None:
    cfg = make_config()
    arn = f"arn:aws:dynamodb:us-east-1:1:table/{cfg.source_table(M)}"
    line = {"Metadata": {"WriteTimestampMicros": {"N": "1716790400000000"}}, "Keys": {"name": {"S": "a"}},
            "NewImage": {"name": {"S": "a"}}}
    folder = incremental_export(tmp_path / "inc", [line], "2024-05-27T06:00:00.000Z", "2024-05-27T06:15:00.000Z",
                                table_arn=arn)
    at = stage.source.parse_time
    got = stage.source.adopt(cfg, M, str(folder), at("2024-05-27T06:05:00Z"))
    assert got["already_applied"] is False and (got["from"], got["to"]) == ("2024-05-27T06:00:00.000Z",
                                                                            "2024-05-27T06:15:00.000Z")
    assert stage.source.adopt(cfg, M, str(folder), at("2024-05-27T06:15:00Z"))["already_applied"] is True
    with pytest.raises(EtlError, match="after the time the index is in sync up to"):
        stage.source.adopt(cfg, M, str(folder), at("2024-05-27T05:59:59Z"))
    with pytest.raises(ValidationFailed, match="unicorn_activities"):  # the table is checked first
        stage.source.adopt(cfg, M, str(INCREMENTAL), at("2024-05-27T06:30:00Z"))
    assert stage.source.adopt(cfg, M, str(INCREMENTAL), at("2024-05-27T06:30:00Z"),
                              adopt_other_table=True)["already_applied"] is True
