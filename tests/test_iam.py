"""The IAM policies are least privilege: every action each command really calls on moto (recorded by botocore
event hooks on each side's session) is granted to the role that runs it, and nothing else is granted."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from etl import aws
from etl.cli import cli
from etl.config import Config, load_config
from etl.iam import policies

MONTH = (datetime.now(UTC).replace(day=1)).strftime("%Y%m")

S3_ACTIONS = {"HeadObject": "s3:GetObject", "GetObject": "s3:GetObject", "PutObject": "s3:PutObject",
              "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
              "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
              "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject", "ListObjectsV2": "s3:ListBucket",
              "GetBucketLocation": "s3:GetBucketLocation"}


def action(event_name: str) -> str:
    _, service, op = event_name.split(".", 2)
    if service == "s3":
        return S3_ACTIONS[op]
    return f"{ {'dynamodb': 'dynamodb', 'glue': 'glue', 'sts': 'sts', 'dynamodbstreams': 'dynamodb'}[service]}:{op}"


class Recorder:
    def __init__(self, cfg: Config) -> None:
        self.calls: dict[str, set[str]] = {"source": set(), "staging": set(), "destination": set()}
        for side in self.calls:
            aws.session_for(getattr(cfg, side)).events.register(
                "before-call", lambda event_name, side=side, **_: self.calls[side].add(action(event_name)))

    def take(self) -> dict[str, set[str]]:
        # sts:GetCallerIdentity (the account, named before writing and as the bucket owner) needs no permission
        out = {k: v - {"sts:GetCallerIdentity"} for k, v in self.calls.items()}
        for v in self.calls.values():
            v.clear()
        return out


def granted(doc: dict[str, Any]) -> set[str]:
    return {a for s in doc["Statement"] for a in s["Action"]}


def test_each_role_is_granted_exactly_what_its_commands_call(moto: str, make_config: Callable[..., Config],
                                                             tmp_path: Path) -> None:
    from etl.catalog import register
    from etl.local import seed
    from etl.pipeline import run_export, run_load, run_transform, run_verify
    from etl.promo import discount_for, record_order
    from etl.ttl import enable

    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill", extra="[load]\nmax_wcu = 10000\n")
    seed(cfg, [MONTH], 300)
    aws.session_for.cache_clear()  # sessions made from here on carry the recorder
    rec = Recorder(cfg)
    roles = policies(cfg, [MONTH], "123456789012", enable_pitr=True)

    run_export(cfg, [MONTH], enable_pitr=True, force=True)
    got = rec.take()
    assert got["source"] <= granted(roles["export"]) and got["staging"] <= granted(roles["staging"])
    # granted but not called here: a resume's search for an export started before; turning PITR on (it is on
    # already); the export's own writes (DynamoDB writes them as the export role)
    assert granted(roles["export"]) - got["source"] == {"dynamodb:ListExports", "dynamodb:UpdateContinuousBackups",
                                                        "s3:PutObject", "s3:AbortMultipartUpload"}
    run_transform(cfg, [MONTH])
    got = rec.take()
    assert not got["source"] and not got["destination"] and got["staging"] <= granted(roles["staging"])
    run_load(cfg, [MONTH])
    got = rec.take()
    # the writer itself (BatchWriteItem) signs its own requests: not a botocore call
    assert got["destination"] | {"dynamodb:BatchWriteItem"} == granted(roles["loader"])
    run_verify(cfg, [MONTH])
    got = rec.take()
    assert got["destination"] == granted(roles["verify"])
    register(cfg, "backfill", "promo")
    got = rec.take()
    assert got["staging"] <= granted(roles["staging"]) and any(a.startswith("glue:") for a in got["staging"])
    enable(cfg)
    assert rec.take()["destination"] == granted(roles["ttl"])
    ddb = aws.client(cfg.destination, "dynamodb")
    discount_for("C1", None, cfg, ddb)
    record_order("C1", "O1", datetime.now(UTC), cfg, ddb)
    assert rec.take()["destination"] == granted(roles["live-service"])


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
