from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError, ValidationFailed
from etl.local import seed
from etl.pipeline import run_export
from tests.conftest import ddb_client, s3_client
from tests.helpers import item, write_real_export

MONTH = "201604"


@pytest.fixture()
def s3cfg(moto: str, make_config: Callable[..., Config]) -> Config:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill")
    seed(cfg, [MONTH], 300, 1)
    return cfg


def test_pitr_export_commits_manifest_and_rerun_skips(s3cfg: Config) -> None:
    [m] = run_export(s3cfg, [MONTH])
    assert m["status"] == "done" and m["mode"] == "pitr"
    assert m["describe_item_count"] == 300
    assert m["verified"] is False and "not verified" in m["verification"]
    assert len(m["files"]) == 1 and m["files"][0]["uri"].startswith("s3://stage-bucket/backfill/export/month=201604/")
    store = staging.open_store(s3cfg.staging.root, s3cfg.staging)
    assert staging.read_manifest(store, MONTH, "export")["export_arn"] == m["export_arn"]
    assert not store.exists(staging.state_key(MONTH, "export.pending.json"))
    [again] = run_export(s3cfg, [MONTH])
    assert again.get("skipped") is True
    ddb = ddb_client(s3cfg.source.endpoint_url)
    arn = ddb.describe_table(TableName="CustomerTracker_shop_eu_201604")["Table"]["TableArn"]
    assert len(ddb.list_exports(TableArn=arn)["ExportSummaries"]) == 1


def test_pitr_disabled_gives_clear_error_and_enable_flag_works(s3cfg: Config) -> None:
    ddb = ddb_client(s3cfg.source.endpoint_url)
    ddb.update_continuous_backups(TableName="CustomerTracker_shop_eu_201604",
                                  PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    with pytest.raises(EtlError) as e:
        run_export(s3cfg, [MONTH])
    assert "point-in-time recovery" in e.value.message and "--enable-pitr" in (e.value.hint or "")
    store = staging.open_store(s3cfg.staging.root, s3cfg.staging)
    failure = store.read_json(staging.failed_key(MONTH, "export"))
    assert failure["rerun"] == "etl export --month 201604"
    [m] = run_export(s3cfg, [MONTH], enable_pitr=True)
    assert m["status"] == "done"
    assert not store.exists(staging.failed_key(MONTH, "export"))


def test_a_retried_export_does_not_start_a_second_one(s3cfg: Config) -> None:
    """The reply to ExportTableToPointInTime is lost (the process dies after the call); the retry
    finds the export that was started instead of paying for another."""
    calls = []

    def lose_reply(**kwargs: Any) -> None:
        calls.append(1)
        raise ConnectionError("reply lost")

    session = aws.session_for(s3cfg.source)
    session.events.register("after-call.dynamodb.ExportTableToPointInTime", lose_reply)
    with pytest.raises(EtlError):
        run_export(s3cfg, [MONTH])
    session.events.unregister("after-call.dynamodb.ExportTableToPointInTime", lose_reply)
    assert calls == [1]
    [m] = run_export(s3cfg, [MONTH])
    ddb = ddb_client(s3cfg.source.endpoint_url)
    arn = ddb.describe_table(TableName="CustomerTracker_shop_eu_201604")["Table"]["TableArn"]
    exports = ddb.list_exports(TableArn=arn)["ExportSummaries"]
    assert len(exports) == 1 and exports[0]["ExportArn"] == m["export_arn"]


def test_failed_export_reports_dynamodb_code_and_message(s3cfg: Config) -> None:
    def fail(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed["ExportDescription"].update(ExportStatus="FAILED", FailureCode="S3AccessDenied",
                                           FailureMessage="Access denied to bucket")

    aws.session_for(s3cfg.source).events.register("after-call.dynamodb.DescribeExport", fail)
    with pytest.raises(EtlError, match="FAILED: S3AccessDenied: Access denied to bucket") as e:
        run_export(s3cfg, [MONTH])
    assert "--force" in (e.value.hint or "")


def test_force_starts_a_new_export_and_replaces_the_old_files(s3cfg: Config) -> None:
    [first] = run_export(s3cfg, [MONTH])
    [second] = run_export(s3cfg, [MONTH], force=True)
    assert second["export_arn"] != first["export_arn"]
    keys = [o["Key"] for o in s3_client(s3cfg.staging.endpoint_url).list_objects_v2(
        Bucket="stage-bucket", Prefix="backfill/export/")["Contents"]]
    assert len(keys) == 1 and second["files"][0]["uri"].endswith(keys[0])


def test_missing_table_bucket_and_local_root_errors(moto: str, make_config: Callable[..., Config],
                                                    tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root="s3://no-such-bucket/x")
    with pytest.raises(EtlError, match="staging bucket no-such-bucket does not exist"):  # checked first
        run_export(cfg, [MONTH])
    s3_client(moto).create_bucket(Bucket="no-such-bucket")
    with pytest.raises(EtlError, match="CustomerTracker_shop_eu_201604 .* not found"):
        run_export(cfg, [MONTH])
    local_cfg = make_config(endpoint=moto, root=str(tmp_path / "stage"))
    with pytest.raises(EtlError) as e:
        run_export(local_cfg, [MONTH])
    assert "only export to S3" in e.value.message and "--mode scan" in (e.value.hint or "")


def test_bucket_in_another_region_is_refused(moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://eu-bucket/x")
    seed(make_config(endpoint=moto, root="s3://other-bucket/x"), [MONTH], 10)
    s3_client(moto).create_bucket(Bucket="eu-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(EtlError, match="eu-bucket is in eu-west-1"):
        run_export(cfg, [MONTH])


# --------------------------------------------------------------------------- adopting an existing export


def test_use_existing_accepts_a_real_layout_export(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)], [item(i) for i in range(5, 8)]])
    [m] = run_export(cfg, [MONTH], use_existing=str(folder))
    assert m["verified"] is True and m["item_count"] == 8 and m["mode"] == "adopted"
    assert sorted(f["item_count"] for f in m["files"]) == [3, 5]


@pytest.mark.parametrize("damage,expected", [
    ("md5", "does not match the manifest"),
    ("missing", "does not exist"),
    ("count", "add up to 8, but manifest-summary.json says 9"),
    ("unlisted", "not listed in manifest-files.json"),
    ("manifest_md5", "does not match manifest-files.md5"),
])
def test_use_existing_refuses_a_damaged_export(make_config: Callable[..., Config], tmp_path: Path,
                                               damage: str, expected: str) -> None:
    cfg = make_config()
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)], [item(i) for i in range(5, 8)]])
    data = sorted((folder / "data").iterdir())
    if damage == "md5":
        data[0].write_bytes(gzip.compress(b'{"Item":{}}\n'))
    elif damage == "missing":
        data[1].unlink()
    elif damage == "count":
        s = json.loads((folder / "manifest-summary.json").read_text())
        s["itemCount"] = 9
        raw = json.dumps(s).encode()
        (folder / "manifest-summary.json").write_bytes(raw)
        (folder / "manifest-summary.md5").write_text(base64.b64encode(hashlib.md5(raw).digest()).decode())
    elif damage == "unlisted":
        (folder / "data" / "extra.json.gz").write_bytes(gzip.compress(b""))
    elif damage == "manifest_md5":
        (folder / "manifest-files.json").write_bytes((folder / "manifest-files.json").read_bytes() + b"\n")
    with pytest.raises(ValidationFailed, match=expected):
        run_export(cfg, [MONTH], use_existing=str(folder))
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, MONTH, "export") is None


def test_use_existing_from_s3(moto: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill")
    s3 = s3_client(moto)
    s3.create_bucket(Bucket="stage-bucket")
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(4)]])
    for p in folder.rglob("*"):
        if p.is_file():
            s3.put_object(Bucket="stage-bucket", Key=f"old/AWSDynamoDB/{folder.name}/{p.relative_to(folder)}",
                          Body=p.read_bytes())
    [m] = run_export(cfg, [MONTH], use_existing=f"s3://stage-bucket/old/AWSDynamoDB/{folder.name}/")
    assert m["verified"] and m["item_count"] == 4
    assert m["files"][0]["uri"].startswith(f"s3://stage-bucket/old/AWSDynamoDB/{folder.name}/data/")


def test_role_per_side_is_assumed_through_the_sides_endpoint(moto: str, make_config: Callable[..., Config]) -> None:
    import boto3

    iam = boto3.client("iam", endpoint_url=moto, region_name="us-east-1")
    role = iam.create_role(RoleName="backfill-export", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill")
    seed(cfg, [MONTH], 20)
    import dataclasses

    cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, role_arn=role))
    calls: list[str] = []
    session = aws.session_for(cfg.source)
    creds = session.get_credentials()
    assert creds is not None and creds.method == "assume-role"
    frozen = creds.get_frozen_credentials()  # triggers AssumeRole against moto's STS, not AWS's
    calls.append(frozen.access_key)
    assert frozen.access_key != "testing"
    [m] = run_export(cfg, [MONTH])
    assert m["status"] == "done"


def test_export_warns_when_earlier_than_the_forward_writer(s3cfg: Config) -> None:
    import dataclasses
    import io

    from etl.progress import Reporter

    late = dataclasses.replace(s3cfg.export, forward_writes_since="2099-01-01T00:00:00Z")
    cfg = dataclasses.replace(s3cfg, export=late)
    out = io.StringIO()
    run_export(cfg, [MONTH], reporter=Reporter("json", stream=out))
    warnings = [json.loads(x) for x in out.getvalue().splitlines() if '"warning"' in x]
    assert any("before forward_writes_since" in w["message"] for w in warnings)


def _files_manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "manifest-files.json").read_text().splitlines() if x.strip()]


def _write_files_manifest(folder: Path, entries: list[dict[str, Any]]) -> None:
    (folder / "manifest-files.json").write_text("".join(json.dumps(e) + "\n" for e in entries))
    (folder / "manifest-files.md5").unlink(missing_ok=True)


@pytest.mark.parametrize("damage, expected", [
    ("no-summary-short-file", r"md5 .* does not match"),
    ("outside", r"points outside the export's data/"),
    ("twice", r"lists data/file00\w+\.json\.gz twice"),
    ("not-json", r"manifest-files\.json, line 2 is not valid JSON"),
])
def test_manifests_are_checked_whatever_is_missing_or_odd(make_config: Callable[..., Config], tmp_path: Path,
                                                          damage: str, expected: str) -> None:
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)], [item(i) for i in range(5, 9)]])
    entries = _files_manifest(folder)
    if damage == "no-summary-short-file":  # manifest-files.json alone still checks every file
        (folder / "manifest-summary.json").unlink()
        (folder / "manifest-summary.md5").unlink()
        data = folder / "data" / entries[0]["dataFileS3Key"].rsplit("/", 1)[1]
        data.write_bytes(gzip.compress(b"".join(json.dumps({"Item": item(i)}).encode() + b"\n" for i in range(3))))
    elif damage == "outside":
        entries[1]["dataFileS3Key"] = "pfx/AWSDynamoDB/x/data/../../../../etc/passwd"
        _write_files_manifest(folder, entries)
    elif damage == "twice":
        _write_files_manifest(folder, [entries[0], entries[0], entries[1]])
    else:
        (folder / "manifest-files.json").write_text(json.dumps(entries[0]) + "\n{not json\n")
        (folder / "manifest-files.md5").unlink()
    with pytest.raises(ValidationFailed, match=expected):
        run_export(make_config(), [MONTH], use_existing=str(folder))


def test_a_manifest_alone_still_verifies(make_config: Callable[..., Config], tmp_path: Path) -> None:
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)]])
    (folder / "manifest-summary.json").unlink()
    (folder / "manifest-summary.md5").unlink()
    [m] = run_export(make_config(), [MONTH], use_existing=str(folder))
    assert m["verified"] and m["item_count"] == 5 and "manifest-summary.json is missing" in m["verification"]


def test_a_data_file_replaced_after_adoption_is_refused_by_the_transform(make_config: Callable[..., Config],
                                                                         tmp_path: Path) -> None:
    from etl.pipeline import run_transform

    cfg = make_config()
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)]])
    run_export(cfg, [MONTH], use_existing=str(folder))
    [data] = (folder / "data").iterdir()
    data.write_bytes(gzip.compress(b"".join(json.dumps({"Item": item(i)}).encode() + b"\n" for i in range(7, 12))))
    with pytest.raises(EtlError, match="the file changed after the export was adopted"):
        run_transform(cfg, [MONTH])


def test_exports_name_the_bucket_owner_and_encryption_and_every_staged_object_is_encrypted(
        moto: str, make_config: Callable[..., Config]) -> None:
    from etl.pipeline import run_transform

    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill", ETL_STAGING_SSE="aws:kms",
                      ETL_STAGING_KMS_KEY_ID="alias/backfill",
                      ETL_STAGING_ACCOUNT="123456789012")
    seed(cfg, [MONTH], 50)
    sent: list[dict[str, Any]] = []
    aws.session_for(cfg.source).events.register(
        "before-parameter-build.dynamodb.ExportTableToPointInTime", lambda params, **_: sent.append(dict(params)))
    run_export(cfg, [MONTH])
    [params] = sent
    assert (params["S3BucketOwner"], params["S3SseAlgorithm"], params["S3SseKmsKeyId"]) == (
        "123456789012", "KMS", "alias/backfill")
    [t] = run_transform(cfg, [MONTH])
    s3 = s3_client(moto)
    for key in (f"backfill/{t['parts'][0]['output']}", f"backfill/{staging.manifest_key(MONTH, 'transform')}"):
        head = s3.head_object(Bucket="stage-bucket", Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("alias/backfill"), key
    plain = make_config(endpoint=moto, root="s3://stage-bucket/other", ETL_STAGING_SSE="AES256")
    sent.clear()
    aws.session_for(plain.source).events.register(
        "before-parameter-build.dynamodb.ExportTableToPointInTime", lambda params, **_: sent.append(dict(params)))
    run_export(plain, [MONTH])
    assert sent[0]["S3SseAlgorithm"] == "AES256" and "S3SseKmsKeyId" not in sent[0]
    assert sent[0]["S3BucketOwner"] == "123456789012"  # the staging credentials' own account (moto's)


def test_encryption_settings_are_checked(make_config: Callable[..., Config]) -> None:
    from etl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"staging.sse = 'KMS' .* 'AES256' \(SSE-S3\) or 'aws:kms'"):
        make_config(ETL_STAGING_SSE="KMS")
    with pytest.raises(ConfigError, match=r"staging.kms_key_id .* only with sse"):
        make_config(ETL_STAGING_KMS_KEY_ID="k")
    with pytest.raises(ConfigError, match=r"staging.account = '12' .* 12-digit"):
        make_config(ETL_STAGING_ACCOUNT="12")


# --------------------------------------------------------------------------- the adopted export's table

OWN = "arn:aws:dynamodb:us-east-1:123456789012:table/CustomerTracker_shop_eu_201604"


@pytest.mark.parametrize("arn,differs", [
    ("arn:aws:dynamodb:us-east-1:123456789012:table/CustomerTracker_shop_eu_201605", "table name differs"),
    ("arn:aws:dynamodb:eu-west-1:123456789012:table/CustomerTracker_shop_eu_201604", "region differs"),
])
def test_an_export_of_another_table_is_refused_before_anything_is_written(
        make_config: Callable[..., Config], tmp_path: Path, arn: str, differs: str) -> None:
    cfg = make_config()
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)]], table_arn=arn)
    with pytest.raises(ValidationFailed) as e:
        run_export(cfg, [MONTH], use_existing=str(folder))
    assert "\n" not in e.value.message and arn in e.value.message and differs in e.value.message
    assert "CustomerTracker_shop_eu_201604 (us-east-1)" in e.value.message and "--adopt-other-table" in e.value.hint
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, MONTH, "export") is None
    assert [o.key for o in store.list("export/")] == []
    [m] = run_export(cfg, [MONTH], use_existing=str(folder), adopt_other_table=True)  # on purpose: recorded
    assert m["status"] == "done" and m["item_count"] == 5
    recorded = staging.read_manifest(store, MONTH, "export")
    assert recorded["adopted_other_table"] == {"export_table": arn, "month_table": "CustomerTracker_shop_eu_201604",
                                               "month_region": "us-east-1", "month_account": None}
    assert recorded["table_arn"] == arn and "adopted anyway" in recorded["table_check"]


def test_the_account_is_compared_when_the_config_names_it(make_config: Callable[..., Config], tmp_path: Path) -> None:
    """A table name resolves in the account of the role that reads it: an export from another account is another
    table with the same name."""
    role = {"ETL_SOURCE_ROLE_ARN": "arn:aws:iam::210987654321:role/reader"}
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(5)]], table_arn=OWN)
    with pytest.raises(ValidationFailed, match=r"account 210987654321\) \(account differs\)"):
        run_export(make_config(**role), [MONTH], use_existing=str(folder))
    [m] = run_export(make_config(), [MONTH], use_existing=str(folder))  # no account named: name and region
    assert m["table_check"] == f"tableArn {OWN} is the month's source table CustomerTracker_shop_eu_201604 (us-east-1)"
    assert "adopted_other_table" not in m


def test_an_export_whose_table_is_unknown_is_adopted_and_says_it_was_not_checked(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(3)]])  # a summary without tableArn
    [m] = run_export(make_config(), [MONTH], use_existing=str(folder))
    assert m["table_check"].startswith("not checked: ") and "tableArn" in m["table_check"]
    for name in ("manifest-summary.json", "manifest-summary.md5", "manifest-files.json", "manifest-files.md5"):
        (folder / name).unlink()  # moto's layout: data files only
    [m] = run_export(make_config(), [MONTH], use_existing=str(folder), force=True)
    assert "not checked: " in m["table_check"] and "an emulator's export?" in m["table_check"]
    assert "CustomerTracker_shop_eu_201604" in m["table_check"]


def test_the_cli_refuses_another_tables_export_in_one_line_and_adopts_it_with_the_flag(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    cfg = make_config()
    other = "arn:aws:dynamodb:us-east-1:123456789012:table/CustomerTracker_shop_eu_201605"
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(4)]], table_arn=other)
    base = ["--config", cfg.path, "--progress", "quiet", "export", "--month", MONTH, "--use-existing", str(folder)]
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 1
    [line, *_] = r.output.strip().splitlines()
    assert other in line and "CustomerTracker_shop_eu_201604" in line and "Traceback" not in r.output
    r = CliRunner().invoke(cli, [*base, "--adopt-other-table"])
    assert r.exit_code == 0, r.output
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, MONTH, "export")["adopted_other_table"]["export_table"] == other
