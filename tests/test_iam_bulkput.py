"""The bulk put loader's IAM policy (`etl iam-policy --role bulk-put-loader`): its statements, exactly."""

from __future__ import annotations

from typing import Any

from etl.config import load_config
from etl.iam import ROLES, policies

TABLE = "arn:aws:dynamodb:eu-west-1:123456789012:table/shop_eu_AnniversaryPromo_2017"


def statements(doc: dict[str, Any]) -> dict[str, tuple[list[str], Any]]:
    return {s["Sid"]: (s["Action"], s["Resource"]) for s in doc["Statement"]}


def test_the_bulk_put_loader_gets_the_four_operations_its_input_and_its_reports() -> None:
    cfg = load_config("pipeline.example.toml", env={})
    doc = policies(cfg, ["201604"], "123456789012")["bulk-put-loader"]
    assert "bulk-put-loader" in ROLES
    assert statements(doc) == {
        "BulkPutIntoTheDestination": (["dynamodb:DescribeTable", "dynamodb:StartBulkPutItems"], [TABLE]),
        "FollowBulkPutOperations": (["dynamodb:DescribeBulkOperation", "dynamodb:CancelBulkOperation"],
                                    [TABLE, f"{TABLE}/bulk-operation/*"]),
        "FindABulkPutStartedBefore": (["dynamodb:ListBulkOperations"], "*"),
        "ReadBulkPutInput": (["s3:GetObject"], ["arn:aws:s3:::my-backfill-staging/anniversary/bulkput/*"]),
        "ListBulkPutInput": (["s3:ListBucket"], ["arn:aws:s3:::my-backfill-staging"]),
        "WriteBulkPutReports": (["s3:PutObject", "s3:AbortMultipartUpload"],
                                ["arn:aws:s3:::my-backfill-staging/anniversary/bulkput-reports/*"]),
    }
    [listing] = [s for s in doc["Statement"] if s["Sid"] == "ListBulkPutInput"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["anniversary/bulkput/*"]}}
    # the batch-write loader gets none of it, and no role but this one may start a bulk put
    others = [a for role, d in policies(cfg, ["201604"], "1").items() if role != "bulk-put-loader"
              for s in d["Statement"] for a in s["Action"]]
    assert not [a for a in others if "Bulk" in a]


def test_sse_kms_staging_adds_the_key_to_the_bulk_put_loader() -> None:
    cfg = load_config("pipeline.example.toml", env={"ETL_STAGING_SSE": "aws:kms",
                                                     "ETL_STAGING_KMS_KEY_ID": "arn:aws:kms:eu-west-1:1:key/k"})
    doc = policies(cfg, ["201604"], "1")["bulk-put-loader"]
    assert statements(doc)["BulkPutUsesTheStagingKey"] == (["kms:Decrypt", "kms:GenerateDataKey"],
                                                           ["arn:aws:kms:eu-west-1:1:key/k"])
    plain = policies(load_config("pipeline.example.toml", env={}), ["201604"], "1")["bulk-put-loader"]
    assert not any(a.startswith("kms:") for s in plain["Statement"] for a in s["Action"])
