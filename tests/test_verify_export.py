"""verify --method export: a month backfilled on moto (source, staging bucket and destination), the destination
exported by moto's ExportTableToPointInTime and compared with the staged rows; items deleted, changed and added
directly in the destination are exactly what it reports, and the differences read back in DuckDB with the DDL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlglot import exp

from etl import pipeline, staging
from etl.cli import cli
from etl.config import Config
from etl.errors import EtlError
from etl.local import seed
from tests.conftest import ddb_client, s3_client
from tests.test_analysts import SQL, athena_statements

# a recent month: its orders are within their one-year TTL now, when the export is taken
MONTH = (datetime.now(UTC).replace(day=1) - timedelta(days=20)).strftime("%Y%m")
TABLE = "shop_eu_AnniversaryPromo_2017"
BUCKET = "stage-bucket"


@pytest.fixture()
def loaded(moto: str, make_config: Callable[..., Config]) -> Config:
    """A month exported, transformed and loaded into the destination on moto, its PITR on."""
    cfg = make_config(endpoint=moto, root=f"s3://{BUCKET}/backfill",
                      extra="[load]\nmax_wcu = 100000\n[verify]\nbucket_rows = 50\n")
    seed(cfg, [MONTH], 300, 1)
    pipeline.run(cfg, [MONTH], ("export", "transform", "load"), yes=True)
    ddb_client(moto).update_continuous_backups(
        TableName=TABLE, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    return cfg


def _items(cfg: Config) -> list[dict[str, Any]]:
    ddb = ddb_client(cfg.destination.endpoint_url)
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": TABLE}
    while True:
        page = ddb.scan(**kwargs)
        out += page["Items"]
        if "LastEvaluatedKey" not in page:
            return sorted(out, key=lambda it: (it["CustomerID"]["S"], int(it["CreationDateTime"]["N"])))
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _key(item: dict[str, Any]) -> dict[str, Any]:
    return {"CustomerID": item["CustomerID"]["S"], "CreationDateTime": int(item["CreationDateTime"]["N"])}


def _touch(cfg: Config) -> dict[str, dict[str, Any]]:
    """One item deleted, one changed, one added (within the month's creation times) directly in the table."""
    ddb = ddb_client(cfg.destination.endpoint_url)
    items = _items(cfg)
    gone, changed = items[3], items[10]
    ddb.delete_item(TableName=TABLE, Key={k: gone[k] for k in ("CustomerID", "CreationDateTime")})
    ddb.update_item(TableName=TABLE, Key={k: changed[k] for k in ("CustomerID", "CreationDateTime")},
                    UpdateExpression="SET OrderID = :o", ExpressionAttributeValues={":o": {"S": "O-CHANGED"}})
    added = {**items[20], "CustomerID": {"S": "C-ADDED"}}
    ddb.put_item(TableName=TABLE, Item=added)
    return {"missing": _key(gone), "different": _key(changed), "extra": _key(added)}


def test_an_untouched_table_passes_and_reads_nothing(loaded: Config) -> None:
    written = staging.read_manifest(staging.open_store(loaded.staging.root, loaded.staging), MONTH, "load")
    [v] = pipeline.run_verify(loaded, [MONTH], method="export")
    assert v["ok"] and v["method"] == "export"
    assert (v["checked"], v["missing"], v["different"], v["extra"], v["not_backfilled"]) == (
        written["written"], 0, 0, 0, 0)
    assert v["export"]["mode"] == "pitr" and v["export"]["export_folder"].startswith(
        f"s3://{BUCKET}/backfill/verify/export/")
    assert v["buckets"] > 1  # bucket_rows = 50: the comparison is split by key hash
    assert v["differences"] is None
    store = staging.open_store(loaded.staging.root, loaded.staging)
    assert not store.list("verify/buckets/")  # the split is removed once compared
    assert not store.exists(staging.verify_export_state_key())  # the next verify takes a new export


def test_deleted_changed_and_added_items_are_exactly_what_it_reports(loaded: Config, tmp_path: Path) -> None:
    touched = _touch(loaded)
    [v] = pipeline.run_verify(loaded, [MONTH], method="export")
    store = staging.open_store(loaded.staging.root, loaded.staging)
    assert staging.read_manifest(store, MONTH, "verify")["run_id"] == v["run_id"]
    assert not v["ok"] and (v["missing"], v["different"], v["extra"], v["not_backfilled"]) == (1, 1, 1, 0)
    assert v["missing_examples"] == [touched["missing"]]
    assert v["different_examples"] == [{**touched["different"], "columns": ["OrderID"]}]
    assert v["extra_examples"] == [touched["extra"]]
    rows = pq.ParquetDataset(_mirror(loaded, tmp_path) / "verify").read().to_pylist()
    r = CliRunner().invoke(cli, ["--config", loaded.path, "--progress", "json", "verify", "--month", MONTH,
                                 "--method", "export"])
    assert r.exit_code == 1  # differences: the command fails, saying where they are
    assert f"verify {MONTH} (export): {v['checked']:,} checked, 1 missing, 1 different, 1 extra" in r.stdout
    assert "verify/month=" in r.stdout and "found differences in 1 month(s)" in r.stderr
    plan = [e.get("message", "") for e in map(json.loads, (x for x in r.stderr.splitlines() if x.startswith("{")))]
    assert any(p.startswith("verify by export of") for p in plan)
    assert any("read-back:" in p and "RCU" in p for p in plan) and any("export:" in p and "per GB" in p for p in plan)
    assert sorted((r["kind"], r["CustomerID"], r["CreationDateTime"], r["differing_columns"]) for r in rows) == sorted(
        (k, key["CustomerID"], key["CreationDateTime"], ["OrderID"] if k == "different" else [])
        for k, key in touched.items())


def test_items_no_backfilled_month_produced_are_counted_apart(loaded: Config) -> None:
    ddb = ddb_client(loaded.destination.endpoint_url)
    later = int((datetime.now(UTC) + timedelta(days=400)).timestamp())  # the forward writer's, in no loaded month
    for i in range(3):
        ddb.put_item(TableName=TABLE, Item={"CustomerID": {"S": f"C-LIVE-{i}"}, "CreationDateTime": {"N": str(later)},
                                            "OrderID": {"S": f"O-LIVE-{i}"}})
    [v] = pipeline.run_verify(loaded, [MONTH], method="export")
    assert v["ok"] and (v["missing"], v["different"], v["extra"], v["not_backfilled"]) == (0, 0, 0, 3)
    assert sorted(e["CustomerID"] for e in v["not_backfilled_examples"]) == ["C-LIVE-0", "C-LIVE-1", "C-LIVE-2"]


def test_orders_of_a_loaded_month_after_the_forward_writer_started_are_not_extra(moto: str,
                                                                                 loaded: Config,
                                                                                 make_config: Callable[..., Config]
                                                                                 ) -> None:
    added = _touch(loaded)["extra"]
    since = datetime.fromtimestamp(added["CreationDateTime"], UTC).isoformat()
    cfg = make_config(endpoint=moto, root=f"s3://{BUCKET}/backfill", extra="[verify]\nbucket_rows = 50\n",
                      ETL_EXPORT_FORWARD_WRITES_SINCE=since)
    [v] = pipeline.run_verify(cfg, [MONTH], method="export")
    assert (v["missing"], v["different"], v["extra"], v["not_backfilled"]) == (1, 1, 0, 1)


def test_an_adopted_export_must_be_of_the_destination(loaded: Config) -> None:
    ddb = ddb_client(loaded.destination.endpoint_url)
    source = ddb.describe_table(TableName=loaded.source_table(MONTH))["Table"]["TableArn"]
    ddb.export_table_to_point_in_time(TableArn=source, S3Bucket=BUCKET, S3Prefix="elsewhere/src")
    dest = ddb.describe_table(TableName=TABLE)["Table"]["TableArn"]
    ddb.export_table_to_point_in_time(TableArn=dest, S3Bucket=BUCKET, S3Prefix="elsewhere/dest")
    folders = {p: _folder(s3_client(loaded.staging.endpoint_url or ""), p) for p in ("elsewhere/src", "elsewhere/dest")}
    with pytest.raises(EtlError) as e:
        pipeline.run_verify(loaded, [MONTH], method="export", use_existing=folders["elsewhere/src"])
    assert "cannot tell which table" in e.value.message  # no manifest, and not the destination's
    [v] = pipeline.run_verify(loaded, [MONTH], method="export", use_existing=folders["elsewhere/dest"])
    assert v["ok"] and v["export"]["mode"] == "adopted" and v["export"]["export_folder"] == folders["elsewhere/dest"]


def test_pitr_off_on_the_destination_is_refused_before_anything_runs(moto: str, loaded: Config) -> None:
    ddb_client(moto).update_continuous_backups(
        TableName=TABLE, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    with pytest.raises(EtlError) as e:
        pipeline.run_verify(loaded, [MONTH], method="export")
    assert "point-in-time recovery" in e.value.message and "--method read" in (e.value.hint or "")
    [v] = pipeline.run_verify(loaded, [MONTH], method="export", enable_pitr=True)
    assert v["ok"]


def test_the_differences_read_back_in_duckdb_with_the_ddl(loaded: Config, tmp_path: Path) -> None:
    touched = _touch(loaded)
    [v] = pipeline.run_verify(loaded, [MONTH], method="export")
    assert not v["ok"]
    local = _mirror(loaded, tmp_path)
    [create] = athena_statements(SQL / "create_verify_table.sql")
    assert isinstance(create, exp.Create) and create.this.this.name == "anniversary_promo_verify"
    scratch = duckdb.connect()
    scratch.execute(create.sql(dialect="duckdb"))
    declared = {r[0]: r[1] for r in scratch.execute("DESCRIBE anniversary_promo_verify").fetchall()}
    con = duckdb.connect()
    con.execute(f"SET VARIABLE staging_root = '{local}'")
    for statement in con.extract_statements((SQL / "duckdb_local_verify.sql").read_text()):
        got = con.execute(statement).fetchall()
    described = {r[0]: r[1] for r in con.execute("DESCRIBE anniversary_promo_verify").fetchall()}
    assert described == {**declared, "month": "VARCHAR"}
    assert sorted(got) == sorted((MONTH, k, 1) for k in touched)
    rows = con.execute("""SELECT kind, CustomerID, CreationDateTime, differing_columns FROM anniversary_promo_verify
                          WHERE month = ? ORDER BY kind""", [MONTH]).fetchall()
    assert rows == sorted((k, key["CustomerID"], key["CreationDateTime"], ["OrderID"] if k == "different" else [])
                          for k, key in touched.items())


def _folder(s3: Any, prefix: str) -> str:
    """The AWSDynamoDB/<id> folder moto's export wrote under the prefix (waited for: moto exports in a thread)."""
    for _ in range(100):
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])]
        if keys:
            return f"s3://{BUCKET}/" + keys[0].rsplit("/data/", 1)[0]
        time.sleep(0.1)
    raise AssertionError(f"no export under {prefix}")


def _mirror(cfg: Config, tmp_path: Path) -> Path:
    """The staging root's `verify/month=*/` objects copied to a local directory (DuckDB reads files offline)."""
    s3 = s3_client(cfg.staging.endpoint_url or "")
    local = tmp_path / "mirror"
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="backfill/verify/month=").get("Contents", []):
        path = local / o["Key"][len("backfill/"):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
    return local


def test_the_verify_role_exports_the_destination_instead_of_reading_it(make_config: Callable[..., Config]) -> None:
    from etl.iam import policies

    cfg = make_config(root=f"s3://{BUCKET}/backfill", extra='[verify]\nmethod = "export"\n')
    actions = {a: s["Resource"] for s in policies(cfg)["verify"]["Statement"] for a in s["Action"]}
    dest = f"arn:aws:dynamodb:us-east-1:*:table/{TABLE}"
    assert actions["dynamodb:ExportTableToPointInTime"] == [dest] and "dynamodb:BatchGetItem" not in actions
    assert actions["s3:PutObject"] == [f"arn:aws:s3:::{BUCKET}/backfill/verify/export/*"]
    read = make_config(root=f"s3://{BUCKET}/backfill")
    assert {a for s in policies(read)["verify"]["Statement"] for a in s["Action"]} == {
        "dynamodb:DescribeTable", "dynamodb:BatchGetItem"}
