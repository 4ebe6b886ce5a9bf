"""The IAM policies are least privilege: every call each command makes, recorded at the wire (a recording proxy in
front of moto on each side, so the writer's own signed BatchWriteItem requests are seen as well as botocore's), is
granted to the role that runs it, on the resource it names, and every action granted is called: for each role the
granted actions and the recorded ones are equal sets. The config is not the example's: other names, regions and
staging prefix."""

from __future__ import annotations

import fnmatch
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from click.testing import CliRunner

from etl import aws, staging
from etl.cli import cli
from etl.config import Config, load_config
from etl.iam import SERVICE_SIDE, policies
from tests.faultproxy import FaultProxy, Request, s3_op

MONTH = (datetime.now(UTC).replace(day=1)).strftime("%Y%m")
SCAN_MONTH = (datetime.now(UTC).replace(day=1) - timedelta(days=40)).strftime("%Y%m")
ACCOUNT = "123456789012"  # moto's account

S3_ACTIONS = {"HeadObject": "s3:GetObject", "GetObject": "s3:GetObject", "PutObject": "s3:PutObject",
              "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
              "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
              "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject", "ListObjects": "s3:ListBucket",
              "HeadBucket": "s3:ListBucket", "GetBucketLocation": "s3:GetBucketLocation"}


@dataclass(frozen=True)
class Call:
    """One request as it went over the wire: the IAM action it needs and the resources it names (an S3 listing:
    the prefix it asks for, checked against the policy's s3:prefix condition)."""

    action: str
    resources: tuple[str, ...] = ()
    prefix: str | None = None


def _region(req: Request) -> str:
    scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", req.headers.get("Authorization", ""))
    assert scope, "every request is signed"
    return scope.group(1)


def _dynamodb(req: Request, op: str) -> Call:
    body = json.loads(req.body or b"{}")
    table = f"arn:aws:dynamodb:{_region(req)}:{ACCOUNT}:table/"
    names = [table + t for t in body.get("RequestItems", {})] + ([table + body["TableName"]] if "TableName" in body
                                                                 else [])
    names += [_moto_export_arn(body[k]) for k in ("TableArn", "ExportArn", "StreamArn")
              if k in body and op != "ListExports"]
    return Call(f"dynamodb:{op}", tuple(names))


def _moto_export_arn(arn: str) -> str:
    """moto (5.x) makes an export's ARN as `table/<the table's ARN>/import/<id>`; AWS's is `table/<name>/export/<id>`
    (the form the policy names): moto's is read as AWS's."""
    m = re.fullmatch(r"(arn:aws:dynamodb:[^:]+:\d+:table/)arn:aws:dynamodb:[^:]+:\d+:table/([^/]+)/import/(.+)", arn)
    return f"{m.group(1)}{m.group(2)}/export/{m.group(3)}" if m else arn


def _glue(req: Request, op: str) -> Call:
    body = json.loads(req.body or b"{}")
    base = f"arn:aws:glue:{_region(req)}:{ACCOUNT}:"
    database = body.get("DatabaseName") or body.get("Name") or body.get("DatabaseInput", {}).get("Name")
    table = body.get("TableName") or body.get("TableInput", {}).get("Name") or (body.get("Name") if "DatabaseName" in
                                                                               body else None)
    names = [base + "catalog", base + f"database/{database}"] + ([base + f"table/{database}/{table}"] if table else [])
    return Call(f"glue:{op}", tuple(names))


def _s3(req: Request) -> Call:
    op = s3_op(req.method, req.path)
    u = urlparse(req.path)
    bucket, _, key = u.path.lstrip("/").partition("/")
    if op == "DeleteObjects":
        keys = [k.text for k in ET.fromstring(req.body).iter() if k.tag.endswith("Key")]
        return Call("s3:DeleteObject", tuple(f"arn:aws:s3:::{bucket}/{k}" for k in keys))
    if not key:
        prefix = parse_qs(u.query).get("prefix", [""])[0] if op == "ListObjects" else None
        return Call(S3_ACTIONS.get(op, f"s3:{op}"), (f"arn:aws:s3:::{bucket}",), prefix)
    return Call(S3_ACTIONS.get(op, f"s3:{op}"), (f"arn:aws:s3:::{bucket}/{key}",))


def call_of(req: Request) -> Call | None:
    """The IAM action (and resources) a request needs; None for sts:GetCallerIdentity, which needs no permission."""
    target = req.headers.get("X-Amz-Target", "")
    service, _, op = target.partition(".")
    if service.startswith("DynamoDB"):  # DynamoDB_20120810 and DynamoDBStreams_20120810: both dynamodb:
        return _dynamodb(req, op)
    if service == "AWSGlue":
        return _glue(req, op)
    if b"Action=GetCallerIdentity" in req.body:
        return None
    return _s3(req)


class Wire(FaultProxy):
    """A proxy in front of moto for one side that records each request's call, and can drop some (a lost reply)
    or refuse them (`deny`: 403 AccessDenied, which no client retries)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, scope=lambda req: False)
        self.calls: list[Call] = []
        self.deny: Callable[[Request], bool] = lambda req: False

    def handle(self, h: Any, body: bytes) -> None:
        call = call_of(Request(h.command, h.path, h.headers, body, "", ""))
        if call is not None:
            with self.lock:
                self.calls.append(call)
        req = self._request(h, body)
        if self.deny(req):
            self._error(h, req, 403, "AccessDenied", "Access Denied")
            return
        super().handle(h, body)

    def take(self) -> list[Call]:
        with self.lock:
            out, self.calls = self.calls, []
        return out


def granted(doc: dict[str, Any]) -> set[str]:
    return {a for s in doc["Statement"] for a in s["Action"]}


def _resources(statement: dict[str, Any]) -> list[str]:
    r = statement["Resource"]
    return [r] if isinstance(r, str) else list(r)


def allows(doc: dict[str, Any], call: Call) -> bool:
    """Some statement allows the action on every resource the call names (and the listing's prefix)."""
    for st in doc["Statement"]:
        if call.action not in st["Action"]:
            continue
        if not all(any(fnmatch.fnmatchcase(r, p) for p in _resources(st)) for r in call.resources):
            continue
        prefixes = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if call.prefix is not None and prefixes and not any(fnmatch.fnmatchcase(call.prefix, p) for p in prefixes):
            continue
        return True
    return False


def compare(doc: dict[str, Any], calls: list[Call], service_side: frozenset[str] = frozenset()
            ) -> dict[str, set[str]]:
    """What the role's policy grants beyond the calls (over), the actions it lacks (under), and the calls it does
    not allow on the resource they name (refused). `service_side`: actions the AWS service performs with the
    role's identity, never a request of ours (DynamoDB writing an export's files)."""
    called = {c.action for c in calls}
    return {"over": granted(doc) - called - service_side, "under": called - granted(doc),
            "refused": {f"{c.action} {' '.join(c.resources)} {c.prefix or ''}".strip()
                        for c in calls if not allows(doc, c)}}


EXACT = {"over": set(), "under": set(), "refused": set()}


@pytest.fixture()
def wires(moto: str) -> Iterator[dict[str, Wire]]:
    sides = {side: Wire(moto) for side in ("source", "staging", "destination")}
    yield sides
    for w in sides.values():
        w.close()


def other_config(make_config: Callable[..., Config], wires: dict[str, Wire]) -> Config:
    """Not the example's config: other names, a region per side, a deeper staging prefix."""
    return make_config(
        endpoint=wires["source"].url, dest_endpoint=wires["destination"].url, root="s3://iam-stage/deep/er/prefix",
        extra="[load]\nmax_wcu = 10000\n", ETL_EXPORT_SCAN_MAX_RCU="10000",
        ETL_STAGING_ENDPOINT_URL=wires["staging"].url,
        ETL_DOMAIN="acme", ETL_REGION="apac", ETL_SOURCE_AWS_REGION="us-west-2",
        ETL_STAGING_AWS_REGION="eu-central-1", ETL_DESTINATION_AWS_REGION="ap-southeast-2",
        ETL_SOURCE_TABLE_TEMPLATE="Orders_{domain}-{region}-{month}",
        ETL_DESTINATION_TABLE_TEMPLATE="OrderIndex_{domain}_{region}")


def test_each_role_is_granted_exactly_what_its_commands_call_at_the_wire(
        moto: str, make_config: Callable[..., Config], wires: dict[str, Wire]) -> None:
    from etl.catalog import register
    from etl.local import seed
    from etl.pipeline import run_catchup, run_export, run_load, run_transform, run_verify
    from etl.promo import discount_for, record_order
    from etl.ttl import enable

    cfg = other_config(make_config, wires)
    seed(cfg, [MONTH, SCAN_MONTH], 300)
    source = boto3.client("dynamodb", endpoint_url=moto, region_name="us-west-2")
    source.update_continuous_backups(TableName=cfg.source_table(MONTH),  # off: --enable-pitr turns it on
                                     PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    for w in wires.values():
        w.take()
    roles = policies(cfg, [MONTH, SCAN_MONTH], ACCOUNT, enable_pitr=True)
    staging_calls: list[Call] = []
    loader_calls: list[Call] = []

    # export: the start's reply is lost (every attempt dropped), so the rerun looks for the export it started
    wires["source"].configure({"drop": 1.0}, scope=lambda req: req.op == "ExportTableToPointInTime")
    with pytest.raises(Exception):  # noqa: B017  (what it raises is the network's: any)
        run_export(cfg, [MONTH], enable_pitr=True)
    wires["source"].configure(None, scope=lambda req: False)
    run_export(cfg, [MONTH], enable_pitr=True)
    export_calls = wires["source"].take()
    staging_calls += wires["staging"].take()
    assert compare(roles["export"], export_calls, SERVICE_SIDE["export"]) == EXACT
    assert not wires["destination"].take()

    scan_roles = policies(cfg, [MONTH, SCAN_MONTH], ACCOUNT, mode="scan")
    run_export(cfg, [SCAN_MONTH], mode="scan")
    assert compare(scan_roles["export"], wires["source"].take()) == EXACT
    staging_calls += wires["staging"].take()

    run_transform(cfg, [MONTH, SCAN_MONTH])
    staging_calls += wires["staging"].take()
    run_load(cfg, [MONTH, SCAN_MONTH])
    loader_calls += wires["destination"].take()
    staging_calls += wires["staging"].take()
    assert "dynamodb:BatchWriteItem" in {c.action for c in loader_calls}  # the writer's own requests, seen
    run_verify(cfg, [MONTH])
    assert compare(roles["verify"], wires["destination"].take()) == EXACT
    staging_calls += wires["staging"].take()
    assert not wires["source"].take()

    # catch-up, pitr: incremental exports
    at = datetime.now(UTC) + timedelta(hours=1)
    run_catchup(cfg, [MONTH], mode="pitr", to=at, yes=True)
    assert compare(roles["catch-up"], wires["source"].take(), SERVICE_SIDE["catch-up"]) == EXACT
    staging_calls += wires["staging"].take()
    loader_calls += wires["destination"].take()
    # catch-up, stream: a change after the export, read from the stream
    source.put_item(TableName=cfg.source_table(SCAN_MONTH), Item={
        "CustomerID": {"S": "C-new"}, "DateTime": {"S": f"{SCAN_MONTH[:4]}-{SCAN_MONTH[4:]}-03T10:00:00Z"},
        "OrderID": {"S": "O-new"}})
    stream_roles = policies(cfg, [MONTH, SCAN_MONTH], ACCOUNT, catch_up="stream")
    run_catchup(cfg, [SCAN_MONTH], mode="stream", yes=True)
    assert compare(stream_roles["catch-up"], wires["source"].take()) == EXACT
    staging_calls += wires["staging"].take()
    loader_calls += wires["destination"].take()
    assert compare(roles["loader"], loader_calls) == EXACT

    register(cfg, "backfill", "promo")
    glue = boto3.client("glue", endpoint_url=moto, region_name="eu-central-1")
    glue.create_partition(DatabaseName="backfill", TableName="promo", PartitionInput={  # as MSCK REPAIR would
        "Values": [MONTH], "StorageDescriptor": {"Location": f"s3://iam-stage/deep/er/prefix/transformed/month={MONTH}/"}})
    register(cfg, "backfill", "promo")  # again: every table there already (replaced, its partitions dropped)
    # a staged object too big for one request whose upload fails: the multipart upload is aborted
    wires["staging"].deny = lambda req: req.op == "UploadPart"
    store = staging.open_store(cfg.staging.root, cfg.staging)
    with pytest.raises(Exception), store.open_write(f"transformed/month={MONTH}/part-99999.parquet") as f:  # noqa: B017
        f.write(b"x" * (9 << 20))  # refused: what the transfer raises is the refusal
    wires["staging"].deny = lambda req: False
    staging_calls += wires["staging"].take()
    assert "s3:AbortMultipartUpload" in {c.action for c in staging_calls}
    assert compare(roles["staging"], staging_calls) == EXACT
    widened = json.loads(json.dumps(roles["staging"]))
    widened["Statement"][-1]["Action"].append("glue:DeleteTable")  # an over-grant, on purpose
    assert compare(widened, staging_calls) == {**EXACT, "over": {"glue:DeleteTable"}}

    enable(cfg)
    assert compare(roles["ttl"], wires["destination"].take()) == EXACT
    ddb = aws.client(cfg.destination, "dynamodb")
    discount_for("C1", None, cfg, ddb)
    record_order("C1", "O1", datetime.now(UTC), cfg, ddb)
    assert compare(roles["live-service"], wires["destination"].take()) == EXACT


def test_the_comparison_reports_an_over_grant_and_a_resource_outside_the_policy(make_config: Callable[..., Config],
                                                                                 tmp_path: Path) -> None:
    cfg = make_config(root="s3://iam-stage/deep/er/prefix")
    doc = policies(cfg, [MONTH], ACCOUNT)["staging"]
    glue = f"arn:aws:glue:us-east-1:{ACCOUNT}:"
    calls = [Call(a, ("arn:aws:s3:::iam-stage/deep/er/prefix/_state/x.json",)) for a in
             ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")]
    calls += [Call("s3:ListBucket", ("arn:aws:s3:::iam-stage",), "deep/er/prefix/_state/"),
              Call("s3:GetBucketLocation", ("arn:aws:s3:::iam-stage",))]
    calls += [Call(a, (glue + "catalog", glue + "database/d", glue + "table/d/t")) for a in granted(doc)
              if a.startswith("glue:")]
    assert compare(doc, calls) == EXACT
    widened = json.loads(json.dumps(doc))
    widened["Statement"][-1]["Action"].append("glue:DeleteTable")  # an over-grant, on purpose
    assert compare(widened, calls)["over"] == {"glue:DeleteTable"}
    outside = [*calls, Call("s3:GetObject", ("arn:aws:s3:::iam-stage/other/prefix/x",)),
               Call("s3:ListBucket", ("arn:aws:s3:::iam-stage",), "other/")]
    assert compare(doc, outside)["refused"] == {"s3:GetObject arn:aws:s3:::iam-stage/other/prefix/x",
                                                "s3:ListBucket arn:aws:s3:::iam-stage other/"}
    assert compare(doc, [c for c in calls if c.action != "s3:DeleteObject"])["over"] == {"s3:DeleteObject"}


def test_a_scan_export_role_can_only_scan_and_the_loader_cannot_query() -> None:
    cfg = load_config("pipeline.example.toml", env={})
    roles = policies(cfg, ["201604"], "1", mode="scan")
    assert granted(roles["export"]) == {"dynamodb:DescribeTable", "dynamodb:Scan"}
    assert "dynamodb:UpdateContinuousBackups" not in granted(policies(cfg, ["201604"], "1")["export"])
    assert granted(roles["loader"]) == {"dynamodb:DescribeTable", "dynamodb:BatchWriteItem"}
    assert granted(policies(cfg, None, "1", catch_up="stream")["catch-up"]) == {
        "dynamodb:DescribeTable", "dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"}


def test_iam_policy_names_exactly_the_resources_and_the_bucket_policy() -> None:
    r = CliRunner().invoke(cli, ["--config", "pipeline.example.toml", "iam-policy", "--month", "201604",
                                 "--account", "123456789012", "--export-role-arn", "arn:aws:iam::111:role/export"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    docs, bucket = out["roles"], out["staging_bucket_policy"]
    src = json.dumps(docs["export"])
    assert "arn:aws:dynamodb:eu-west-1:123456789012:table/CustomerTracker_shop_eu_201604" in src
    assert "201605" not in src and '"*:' not in src
    assert "arn:aws:s3:::my-backfill-staging/anniversary/*" in json.dumps(docs["staging"])
    assert bucket["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::111:role/export"}
    assert '"dynamodb:*"' not in json.dumps(docs) and "dynamodb:DeleteItem" not in json.dumps(docs)


def test_sse_kms_adds_the_key_to_the_roles_that_write_staged_objects() -> None:
    cfg = load_config("pipeline.example.toml", env={"ETL_STAGING_SSE": "aws:kms",
                                                     "ETL_STAGING_KMS_KEY_ID": "arn:aws:kms:eu-west-1:1:key/k"})
    roles = policies(cfg, ["201604"], "1")
    for role in ("export", "staging"):
        [kms] = [s for s in roles[role]["Statement"] if s["Action"][0].startswith("kms:")]
        assert kms["Resource"] == ["arn:aws:kms:eu-west-1:1:key/k"], role
    assert not any(a.startswith("kms:") for a in granted(roles["loader"]) | granted(roles["verify"]))
    plain = policies(load_config("pipeline.example.toml", env={}), ["201604"], "1")
    assert not any(a.startswith("kms:") for doc in plain.values() for a in granted(doc))
