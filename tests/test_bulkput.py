"""The load by bulk put: its input objects (read back and compared with what batch-write sends), its requests and the
answers it parses (botocore's Stubber checks both against the service model), and end to end against a stand-in
for the four bulk operations in front of DynamoDB Local (`tests/bulkput_standin.py`), which checks its own answers
against the same model."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner

from etl import staging
from etl.cli import cli
from etl.config import Config
from etl.engine import TaskContext
from etl.errors import EtlError, PartlyDone
from etl.load import bulkput
from etl.load.bulkinput import BulkInputTask, decompress, run_input_task
from etl.load.rows import Counters, LoadPartTask, WriteTarget, _read
from etl.pipeline import run_export, run_load, run_transform, run_verify
from etl.progress import Reporter
from etl.state import BulkPutRecord
from tests.bulkput_standin import BulkPutStandIn
from tests.conftest import ddb_client, s3_client
from tests.helpers import write_real_export

M = "201604"
NOW = int(datetime(2016, 6, 1, tzinfo=UTC).timestamp())
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
BULK = "[load]\nmethod = \"bulk-put\"\nmax_wcu = 5000\nmax_rcu = 100000\nbulk_put_poll_seconds = 0.05\n"


def orders(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"CustomerID": {"S": f"C{i % 97:05d}"}, "DateTime": {"S": f"2016-04-12T10:{i // 60 % 60:02d}:"
             f"{i % 60:02d}.{i % 1000:03d}-07:00"}, "OrderID": {"S": f"O{i:07d}"}} for i in range(start, start + n)]


def expired_orders(n: int) -> list[dict[str, Any]]:
    return [{"CustomerID": {"S": f"X{i:05d}"}, "DateTime": {"S": "2015-01-02T10:00:00Z"},
             "OrderID": {"S": f"E{i}"}} for i in range(n)]


def staged_local(cfg: Config, tmp_path: Path, files: list[list[dict[str, Any]]]) -> dict[str, Any]:
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", files)))
    [t] = run_transform(cfg, [M])
    return t


def _load_task(cfg: Config, t: dict[str, Any], part: dict[str, Any]) -> LoadPartTask:
    target = WriteTarget(table="T", now=NOW, include_expired=False, key_types=(("CustomerID", "S"),
                                                                                ("CreationDateTime", "N")))
    return LoadPartTask(month=M, part=part["part"], key=part["output"], rows=part["rows"],
                        transform_run=str(t["run_id"]), target=target, checkpoint="", progress="",
                        rejected=staging.load_rejected_key(M, part["part"]))


def batch_write_items(cfg: Config, task: LoadPartTask) -> list[dict[str, Any]]:
    """The items the batch-write path sends for the part, in its order."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    out = []
    for batch in _read(cfg, store, task, TaskContext(), Counters(), []):
        out += [orjson.loads(p)["PutRequest"]["Item"] for p in batch.puts]
    return out


def sort_key(item: dict[str, Any]) -> tuple[str, str]:
    return item["CustomerID"]["S"], item["CreationDateTime"]["N"]


# --------------------------------------------------------------------------- the input


def test_input_objects_hold_exactly_the_items_batch_write_sends(make_config: Callable[..., Config],
                                                                tmp_path: Path) -> None:
    cfg = make_config(extra='[transform]\nhook = "tests.hooks_example:giant_first_order"\n')
    files = [orders(600) + expired_orders(7)]
    files[0].append({"CustomerID": {"S": "C00001"}, "DateTime": {"S": "2016-04-12T10:00:01.999-07:00"},
                     "OrderID": {"S": "OZZZ"}})  # collides with O0000001 (same second): OZZZ wins
    t = staged_local(cfg, tmp_path, files)
    [part] = t["parts"]
    task = _load_task(cfg, t, part)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    bt = BulkInputTask(load=task, run="r1", operation=0, object_bytes=20_000, compression="ZSTD",
                       record=staging.bulkput_part_key(M, 0))
    r = run_input_task(cfg, bt, TaskContext())
    # 608 rows: 1 giant item quarantined, 7 expired, 1 collision loser, 599 sent
    assert (r["items"], r["quarantined"], r["skipped_expired"], r["deduplicated"], r["rows"]) == (599, 1, 7, 1, 608)
    assert r["quarantined_by"] == {"item_too_large": 1}
    [q] = [json.loads(x) for x in gzip.decompress(store.read(task.rejected)).splitlines()]
    assert q["reason"] == "item_too_large"
    objects = store.list(f"bulkput/month={M}/r1/op-000/")
    assert len(objects) == len(r["objects"]) == -(-r["bytes"] // 20_000) > 3
    lines: list[bytes] = []
    per_object = []
    for o in objects:
        raw = store.read(o.key)
        assert raw[:4] == bytes.fromhex("28b52ffd")  # a standard zstd frame
        got = decompress(raw, "ZSTD").splitlines()
        per_object.append(len(got))
        lines += got
    assert max(per_object) - min(per_object) <= 1  # similarly sized
    items = [json.loads(line)["Item"] for line in lines]
    assert all(set(json.loads(line)) == {"Item"} for line in lines)
    sent = batch_write_items(cfg, task)
    assert len(sent) == 599 and sorted(items, key=sort_key) == sorted(sent, key=sort_key)
    # shuffled: the first object's lines are not in the Parquet's order
    first = [json.loads(x)["Item"] for x in decompress(store.read(objects[0].key), "ZSTD").splitlines()]
    order = {sort_key(it): i for i, it in enumerate(sent)}
    positions = [order[sort_key(it)] for it in first]
    assert positions != sorted(positions)
    # the same input run writes the same bytes again
    before = {o.key: store.read(o.key) for o in objects}
    run_input_task(cfg, bt, TaskContext())
    assert {o.key: store.read(o.key) for o in store.list(f"bulkput/month={M}/r1/op-000/")} == before


def test_gzip_input_and_the_record_of_a_part(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    t = staged_local(cfg, tmp_path, [orders(50)])
    task = _load_task(cfg, t, t["parts"][0])
    store = staging.open_store(cfg.staging.root, cfg.staging)
    bt = BulkInputTask(load=task, run="r2", operation=3, object_bytes=10**9, compression="GZIP",
                       record=staging.bulkput_part_key(M, 0))
    r = run_input_task(cfg, bt, TaskContext())
    [o] = store.list(f"bulkput/month={M}/r2/op-003/")
    assert o.key.endswith("part-00000-0000.json.gz")
    items = [json.loads(x)["Item"] for x in gzip.decompress(store.read(o.key)).splitlines()]
    assert sorted(items, key=sort_key) == sorted(batch_write_items(cfg, task), key=sort_key)
    assert store.read_json(staging.bulkput_part_key(M, 0)) == r and r["object_count"] == 1


def test_a_month_over_the_operation_quota_is_split(make_config: Callable[..., Config]) -> None:
    cfg = make_config(extra="[load]\nbulk_put_operation_gb = 0.001\nbulk_put_object_mb = 0.25\n")
    mb = 1024**2
    # 0.001 GB is about 1.05 MB: parts of 0.4 MB go two to an operation
    assert bulkput.operations_for([0.4 * mb] * 5, cfg) == [0, 0, 1, 1, 2]
    assert bulkput.operations_for([0.0, 0.4 * mb], cfg) == [0, 0]
    big = make_config(extra="[load]\nbulk_put_object_mb = 1\n")
    parts = [30_000 * mb, 30_000 * mb]  # 30,000 objects each: an operation reads up to 50,000
    assert bulkput.operations_for(parts, big) == [0, 1]


# --------------------------------------------------------------------------- requests and answers (Stubber)


def _client() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")


DESCRIPTION = {"BulkOperationArn": "arn:aws:dynamodb:us-east-1:123456789012:table/T/bulk-operation/abc",
               "BulkOperationStatus": "COMPLETED_WITH_ERRORS", "ClientToken": "etl-x",
               "StartTime": datetime(2026, 1, 1, tzinfo=UTC), "EndTime": datetime(2026, 1, 1, 1, tzinfo=UTC),
               "ProcessedItemCount": 10, "FailedItemCount": 2, "ProcessedInputBytes": 900, "TotalInputBytes": 900,
               "BulkOperationUsage": [{"TableName": "T", "BulkPutBytes": 1200}], "MaxWriteRequestUnits": 1024,
               "PerformanceTier": "STANDARD"}


def test_the_start_request_and_the_answers_parsed_match_botocores_model(make_config: Callable[..., Config],
                                                                        tmp_path: Path) -> None:
    cfg = make_config(root="s3://stage-bucket/backfill", ETL_STAGING_SSE="aws:kms",
                      ETL_STAGING_KMS_KEY_ID="alias/backfill", ETL_STAGING_ACCOUNT="123456789012")
    store = staging.S3Store("stage-bucket", "backfill", None)
    record = {"compression": "ZSTD", "max_write_request_units": 1500, "tier": "ACCELERATED"}
    op = {"prefix": staging.bulkput_input_prefix(M, "run1", 2), "report_prefix": staging.bulkput_report_prefix(
        M, "run1", 2), "token": bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/T", M, "run1", 2)}
    request = bulkput.start_request(cfg, store, "T", M, record, op)
    assert request == {
        "ClientToken": op["token"], "TableName": "T", "MaxWriteRequestUnits": 1500, "PerformanceTier": "ACCELERATED",
        "InputS3Configuration": {"S3Bucket": "stage-bucket",
                                 "S3KeyPrefix": "backfill/bulkput/month=201604/run1/op-002/",
                                 "InputFormat": "DYNAMODB_JSON", "InputCompressionType": "ZSTD",
                                 "S3BucketOwner": "123456789012"},
        "OutputS3Configuration": {"S3Bucket": "stage-bucket", "OutputType": ["ERROR"], "S3BucketOwner": "123456789012",
                                  "S3KeyPrefix": "backfill/bulkput-reports/month=201604/run1/op-002/",
                                  "S3SseAlgorithm": "KMS", "S3SseKmsKeyId": "alias/backfill"}}
    ddb = _client()
    with Stubber(ddb) as stub:  # validates the request and the answer against the service model
        stub.add_response("start_bulk_put_items", {"BulkOperationDescription": DESCRIPTION}, expected_params=request)
        stub.add_response("list_bulk_operations", {"BulkOperationsSummaryList": [
            {"BulkOperationArn": DESCRIPTION["BulkOperationArn"], "BulkOperationStatus": "IN_PROGRESS",
             "StartTime": datetime(2026, 1, 1, tzinfo=UTC)}], "NextToken": "00000000000000aa"}, {"MaxResults": 25})
        stub.add_response("describe_bulk_operation", {"BulkOperationDescription": {**DESCRIPTION,
                                                                                   "ClientToken": "other"}},
                          {"BulkOperationArn": DESCRIPTION["BulkOperationArn"]})
        stub.add_response("list_bulk_operations", {"BulkOperationsSummaryList": [
            {"BulkOperationArn": DESCRIPTION["BulkOperationArn"] + "2", "BulkOperationStatus": "IN_PROGRESS",
             "StartTime": datetime(2026, 1, 1, tzinfo=UTC)}]}, {"MaxResults": 25, "NextToken": "00000000000000aa"})
        stub.add_response("describe_bulk_operation", {"BulkOperationDescription": DESCRIPTION},
                          {"BulkOperationArn": DESCRIPTION["BulkOperationArn"] + "2"})
        d = ddb.start_bulk_put_items(**request)["BulkOperationDescription"]
        found = bulkput.find_by_token(ddb, "etl-x", datetime(2025, 12, 31, tzinfo=UTC))
        stub.assert_no_pending_responses()
    assert found is not None and found["ClientToken"] == "etl-x"
    assert bulkput._counts(d) == {
        "status": "COMPLETED_WITH_ERRORS", "processed": 10, "failed": 2, "processed_input_bytes": 900,
        "total_input_bytes": 900, "bulk_put_bytes": 1200, "failure_code": None, "failure_message": None,
        "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T01:00:00Z"}
    with Stubber(ddb) as stub:  # an operation started before `since` is not looked at
        stub.add_response("list_bulk_operations", {"BulkOperationsSummaryList": [
            {"BulkOperationArn": DESCRIPTION["BulkOperationArn"], "BulkOperationStatus": "COMPLETED",
             "StartTime": datetime(2025, 1, 1, tzinfo=UTC)}]}, {"MaxResults": 25})
        assert bulkput.find_by_token(ddb, "etl-x", datetime(2025, 12, 31, tzinfo=UTC)) is None


def test_the_token_is_derived_from_table_month_run_and_operation() -> None:
    t = bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/T", M, "run1", 0)
    assert t == bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/T", M, "run1", 0)
    others = {bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/U", M, "run1", 0),
              bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/T", "201605", "run1", 0),
              bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/T", M, "run2", 0),
              bulkput.client_token("arn:aws:dynamodb:us-east-1:1:table/T", M, "run1", 1)}
    assert t not in others and len(others) == 4 and "$" not in t


def test_cancel_sends_cancel_bulk_operation_for_operations_in_progress(make_config: Callable[..., Config],
                                                                       tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint="http://127.0.0.1:9")  # nothing is sent: the Stubber answers
    store = staging.open_store(cfg.staging.root, cfg.staging)
    arn = DESCRIPTION["BulkOperationArn"]
    store.write_json(staging.bulkput_state_key(M), {"operations": [
        {"operation": 0, "arn": arn + "0", "status": "COMPLETED"},
        {"operation": 1, "arn": arn, "status": "IN_PROGRESS"}]})
    client = _client()
    with Stubber(client) as stub:
        stub.add_response("cancel_bulk_operation", {"BulkOperationArn": arn, "BulkOperationStatus": "CANCELLING"},
                          {"BulkOperationArn": arn})
        [r] = bulkput.cancel(cfg, [M], client)
        stub.assert_no_pending_responses()
    assert r == {"month": M, "cancelled": [{"arn": arn, "status": "CANCELLING"}]}
    assert store.read_json(staging.bulkput_state_key(M))["operations"][1]["status"] == "CANCELLING"
    assert not BulkPutRecord(store.read_json(staging.bulkput_state_key(M))).valid_for("", ("", ""), False)


# --------------------------------------------------------------------------- refusals


def _desc(**extra: Any) -> dict[str, Any]:
    return {"TableName": "T", "TableStatus": "ACTIVE", **extra}


@pytest.mark.parametrize(("desc", "why"), [
    (_desc(Replicas=[{"RegionName": "eu-west-1"}]), "global table"),
    (_desc(TableStatus="UPDATING"), "is UPDATING, not ACTIVE"),
    (_desc(GlobalSecondaryIndexes=[{"IndexName": "ByOrder", "IndexStatus": "CREATING"}]), "building index ByOrder"),
])
def test_what_bulk_put_cannot_do_is_refused_with_batch_write_named(desc: dict[str, Any], why: str,
                                                                    make_config: Callable[..., Config]) -> None:
    cfg = make_config(root="s3://bucket/p")
    with pytest.raises(EtlError, match=why) as info:
        bulkput.refusals(cfg, staging.S3Store("bucket", "p", None), desc)
    assert "batch-write" in (info.value.hint or "")


def test_a_local_staging_root_and_a_budget_below_the_minimum_are_refused(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    with pytest.raises(EtlError, match="reads its input from S3"):
        bulkput.refusals(cfg, staging.open_store(cfg.staging.root, cfg.staging), _desc())
    from etl import capacity

    budget = capacity.budget_for({"TableName": "T", "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"}},
                                 unit="WCU", fraction=None, absolute=1000, fraction_key="f",
                                 absolute_key="[load] max_wcu")
    with pytest.raises(EtlError, match="below StartBulkPutItems' minimum of 1,024"):
        bulkput.write_request_units(budget)
    two_indexes = {"TableName": "T", "ProvisionedThroughput": {"WriteCapacityUnits": 10000},
                   "GlobalSecondaryIndexes": [{"IndexName": "A", "ProvisionedThroughput": {"WriteCapacityUnits": 4000},
                                               "KeySchema": []}]}
    b = capacity.budget_for(two_indexes, unit="WCU", fraction=0.5, absolute=None, fraction_key="[load] f",
                            absolute_key="m")
    assert bulkput.write_request_units(b) == 2000  # the tightest share governs, as for batch-write


def test_catch_up_with_bulk_put_is_refused(make_config: Callable[..., Config]) -> None:
    from etl.pipeline import run_catchup

    with pytest.raises(EtlError, match="bulk put only puts") as info:
        run_catchup(make_config(), [M], method="bulk-put")
    assert "batch-write" in (info.value.hint or "")


# --------------------------------------------------------------------------- end to end, on the stand-in


@pytest.fixture()
def standin(moto: str, ddb_local: str) -> Iterator[BulkPutStandIn]:
    s = BulkPutStandIn(ddb_local, moto)
    yield s
    s.close()
    assert not s.errors, s.errors  # every answer it gave matched botocore's model


def _source(cfg: Config, moto: str, items: list[dict[str, Any]]) -> None:
    ddb = ddb_client(moto)
    table = cfg.source_table(M)
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "DateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "DateTime", "AttributeType": "S"}])
    ddb.update_continuous_backups(TableName=table,
                                  PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
    for i in range(0, len(items), 25):
        ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": it}} for it in items[i:i + 25]]})


def bulk_setup(moto: str, standin: BulkPutStandIn, dest_table: Callable[..., str],
               make_config: Callable[..., Config], extra: str = "") -> tuple[Config, str]:
    table = dest_table(wcu=None)
    cfg = make_config(endpoint=moto, root="s3://stage/pfx", dest_endpoint=standin.url, dest_table=table,
                      extra=BULK + "bulk_put_object_mb = 0.01\n" + extra)
    s3_client(moto).create_bucket(Bucket="stage")
    items = orders(500) + expired_orders(4)
    items.append({"CustomerID": {"S": "C00001"}, "DateTime": {"S": "2016-04-12T10:00:01.999-07:00"},
                  "OrderID": {"S": "OZZZ"}})  # collides with O0000001: OZZZ wins
    _source(cfg, moto, items)
    run_export(cfg, [M])
    run_transform(cfg, [M])
    return cfg, table


def test_bulk_put_loads_a_month_that_verify_passes_with_counts_from_the_operation(
        moto: str, ddb_local: str, standin: BulkPutStandIn, dest_table: Callable[..., str],
        make_config: Callable[..., Config]) -> None:
    cfg, table = bulk_setup(moto, standin, dest_table, make_config)
    said = io.StringIO()
    [dry] = run_load(cfg, [M], now=NOW, dry_run=True, reporter=Reporter("json", stream=said))
    assert (dry["written"], dry["skipped_expired"], dry["deduplicated"]) == (500, 4, 1)
    assert dry["objects"] > 1 and dry["operations"] == 1 and dry["batch_write"]["wcu_estimated_total"] == 500
    assert dry["bytes"] > 500 * 100 and dry["cost_usd"] == round(dry["bytes"] / 1e9 * 0.15, 4)
    assert standin.starts == 0 and not ddb_client(ddb_local).scan(TableName=table)["Items"]
    [plan] = ["\n".join(e["lines"]) for e in map(json.loads, said.getvalue().splitlines())
              if e["event"] == "plan" and e["lines"][0].startswith("destination ")]
    assert "write units: about" in plan and "time: about" in plan  # batch-write's lines, beside bulk put's
    assert "bulk put: about" in plan and "object(s) (ZSTD), 1 operation(s), STANDARD tier, MaxWriteRequestUnits " \
        "5,000" in plan and "at $0.15 per GB" in plan
    r = CliRunner().invoke(cli, ["--config", cfg.path, "--progress", "quiet", "load", "--month", M, "--dry-run",
                                 "--include-expired"])
    assert r.exit_code == 0, r.output
    assert f"load {M}: dry run, nothing written: bulk put of 504 items" in r.output
    assert "batch-write instead: 504 WCU" in r.output and standin.starts == 0
    [m] = run_load(cfg, [M], now=NOW)
    assert m["method"] == "bulk-put" and standin.starts == 1
    [op] = standin.operations.values()
    assert (m["written"], m["failed"], m["processed"]) == (500, 0, op["ProcessedItemCount"])
    assert m["written"] + m["failed"] + m["skipped_expired"] + m["deduplicated"] + m["quarantined"] == 505
    assert m["operations"][0]["arn"] == op["BulkOperationArn"] and op["MaxWriteRequestUnits"] == 5000
    assert op["InputS3Configuration"]["S3KeyPrefix"].startswith(f"pfx/bulkput/month={M}/")
    assert len(ddb_client(ddb_local).scan(TableName=table)["Items"]) == 500
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["checked"] == 500
    [again] = run_load(cfg, [M], now=NOW)  # committed: skipped, no second operation
    assert again.get("skipped") and standin.starts == 1


def test_ctrl_c_exits_130_saying_the_operation_runs_on_and_a_rerun_re_attaches(
        moto: str, ddb_local: str, standin: BulkPutStandIn, dest_table: Callable[..., str],
        make_config: Callable[..., Config]) -> None:
    cfg, table = bulk_setup(moto, standin, dest_table, make_config)
    standin.hold.set()  # the operation stays IN_PROGRESS until released
    store = staging.open_store(cfg.staging.root, cfg.staging)
    args = ["--config", cfg.path, "--progress", "quiet", "load", "--month", M, "--yes", "--include-expired"]
    proc = subprocess.Popen([sys.executable, "-m", "etl", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            store.exists(staging.bulkput_state_key(M))
            and any(op.get("polled_at") for op in store.read_json(staging.bulkput_state_key(M))["operations"])):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # a guard against a hang, not a timing assertion
    assert proc.returncode == 130, err
    [op] = store.read_json(staging.bulkput_state_key(M))["operations"]
    arn = next(iter(standin.operations))
    assert op["arn"] == arn and op["status"] == "IN_PROGRESS" and standin.starts == 1
    lines = [x for x in err.splitlines() if x.strip()]
    at = next(i for i, x in enumerate(lines) if x.startswith("interrupted: "))
    assert lines[0].startswith("destination ") and at > 0, err  # the plan (said under quiet too), then two lines
    conf = f"etl --config {cfg.path}"
    assert lines[at:] == [f"interrupted: what was acknowledged is kept; resume with `etl {' '.join(args)}`",
                          f"  -> the bulk put operation(s) keep running on AWS ({M}: {arn}); `{conf} load --month "
                          f"{M} --method bulk-put` re-attaches to them, `{conf} load --month {M} --cancel` cancels "
                          "them"], err
    assert "Traceback" not in err + out
    from etl import status

    [row] = status.collect(store, [M])
    assert "bulk put operation 0 IN_PROGRESS: 0 of 504 items processed" in row["stages"]["load"]["summary"]
    standin.hold.clear()
    r = subprocess.run([sys.executable, "-m", "etl", *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert standin.starts == 1  # re-attached: no second operation
    m = staging.read_manifest(store, M, "load")
    assert m is not None and (m["written"], m["deduplicated"]) == (504, 1) and m["operations"][0]["arn"] == arn
    assert f"load {M}: bulk put: 504 written" in r.stdout
    assert run_verify(cfg, [M])[0]["ok"]


def test_a_run_stopped_while_writing_the_input_goes_on_with_the_parts_it_had_not_written(
        moto: str, ddb_local: str, standin: BulkPutStandIn, dest_table: Callable[..., str],
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    """S3 refuses the input objects once one part's record is written (at the edge: a botocore hook); the rerun
    writes only the parts without a record, into the same input run, and starts the operation once."""
    from etl import aws

    table = dest_table(wcu=None)
    cfg = make_config(endpoint=moto, root="s3://stage/pfx", dest_endpoint=standin.url, dest_table=table,
                      extra=BULK + "bulk_put_object_mb = 0.01\n")
    s3_client(moto).create_bucket(Bucket="stage")
    export = write_real_export(tmp_path / "ext", [orders(100, 100 * f) for f in range(3)])
    run_export(cfg, [M], use_existing=str(export))
    [t] = run_transform(cfg, [M])
    assert len(t["parts"]) == 3
    store = staging.open_store(cfg.staging.root, cfg.staging)

    def refuse_after_a_part(params: dict[str, Any], **_: Any) -> Any:
        import botocore.awsrequest

        if "/bulkput/" in params["url_path"] and any(store.exists(staging.bulkput_part_key(M, p)) for p in range(3)):
            return (botocore.awsrequest.AWSResponse("", 403, {}, None),
                    {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                     "ResponseMetadata": {"HTTPStatusCode": 403}})
        return None

    events = aws.session_for(cfg.staging).events
    events.register("before-call.s3.PutObject", refuse_after_a_part, unique_id="refuse-after-a-part")
    try:
        with pytest.raises(EtlError):
            run_load(cfg, [M], now=NOW)
    finally:
        events.unregister("before-call.s3.PutObject", unique_id="refuse-after-a-part")
    done = [p for p in range(3) if store.exists(staging.bulkput_part_key(M, p))]
    record = store.read_json(staging.bulkput_state_key(M))
    assert done and len(done) < 3 and record["phase"] == "writing" and standin.starts == 0
    kept = {p: store.read_json(staging.bulkput_part_key(M, p)) for p in done}

    again: list[str] = []
    events.register("before-call.s3.PutObject",
                    lambda params, **_: again.append(params["url_path"]) if "/bulkput/" in params["url_path"] else None,
                    unique_id="count-puts")
    try:
        [m] = run_load(cfg, [M], now=NOW)
    finally:
        events.unregister("before-call.s3.PutObject", unique_id="count-puts")
    assert store.read_json(staging.bulkput_state_key(M))["run"] == record["run"]  # the same input run
    for p, part in kept.items():  # the parts written before are not written again, and are part of the load
        assert store.read_json(staging.bulkput_part_key(M, p)) == part
        assert not [k for k in again if f"part-{p:05d}" in k]
    assert {int(k.split("part-")[1][:5]) for k in again if "/op-" in k} == set(range(3)) - set(done)
    assert standin.starts == 1 and m["written"] == 300
    assert len(ddb_client(ddb_local).scan(TableName=table)["Items"]) == 300
    assert run_verify(cfg, [M])[0]["ok"]


def test_failed_and_partly_done_operations(moto: str, ddb_local: str, standin: BulkPutStandIn,
                                           dest_table: Callable[..., str], make_config: Callable[..., Config]) -> None:
    cfg, table = bulk_setup(moto, standin, dest_table, make_config)
    standin.fail = ("S3AccessDenied", "DynamoDB could not read the input objects")
    with pytest.raises(EtlError, match="FAILED: S3AccessDenied: DynamoDB could not read the input objects"):
        run_load(cfg, [M], now=NOW)
    from etl import status

    [row] = status.collect(staging.open_store(cfg.staging.root, cfg.staging), [M])
    assert row["stages"]["load"]["state"] == "failed" and "S3AccessDenied" in row["stages"]["load"]["error"]
    # DynamoDB Local refuses an item the load did not check: a non-key attribute of another type than an index's
    ddb = ddb_client(ddb_local)
    ddb.update_table(TableName=table, AttributeDefinitions=[{"AttributeName": "OrderID", "AttributeType": "N"}],
                     GlobalSecondaryIndexUpdates=[{"Create": {
                         "IndexName": "ByOrder", "KeySchema": [{"AttributeName": "OrderID", "KeyType": "HASH"}],
                         "Projection": {"ProjectionType": "KEYS_ONLY"}}}])
    while any(g["IndexStatus"] != "ACTIVE" for g in ddb.describe_table(TableName=table)["Table"].get(
            "GlobalSecondaryIndexes", [])):
        time.sleep(0.1)
    from etl.cli import _partly_done

    with pytest.raises(PartlyDone, match="500 item"):
        _partly_done(run_load(cfg, [M], now=NOW))
    m = staging.read_manifest(staging.open_store(cfg.staging.root, cfg.staging), M, "load")
    assert m is not None and m["partly_done"] and m["failed"] == 500 and m["written"] == 0
    assert m["reports"] == [f"s3://stage/pfx/bulkput-reports/month={M}/{m['input_run']}/op-000/"]
    store = staging.open_store(cfg.staging.root, cfg.staging)
    runs = {o.key.split("/")[2] for o in store.list(f"bulkput/month={M}/")}
    assert runs == {m["input_run"]}  # the failed operation's input went once a load was committed
    report = standin.s3.get_object(Bucket="stage", Key=f"pfx/bulkput-reports/month={M}/{m['input_run']}/op-000/"
                                   "errors.jsonl")["Body"].read().splitlines()
    assert len(report) == 500  # the stand-in's report: its location is what the manifest keeps
    [row] = status.collect(staging.open_store(cfg.staging.root, cfg.staging), [M])
    assert row["stages"]["load"]["state"] == "failed" and "500 failed" in row["stages"]["load"]["error"]
