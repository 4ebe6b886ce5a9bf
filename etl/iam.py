"""Least-privilege IAM policies for each side, built from the config (`etl iam-policy`)."""

from __future__ import annotations

from typing import Any

from etl import staging
from etl.config import Config


def _table_arn(region: str, account: str, table: str) -> str:
    return f"arn:aws:dynamodb:{region}:{account}:table/{table}"


def policies(cfg: Config, months: list[str] | None = None, account: str = "*") -> dict[str, dict[str, Any]]:
    """One policy document per side. Source tables are named by month when months are given, else by
    the template with a wildcard for {month}."""
    src = cfg.source
    if months:
        tables = [_table_arn(src.aws_region, account, cfg.source_table(m)) for m in months]
    else:
        tables = [_table_arn(src.aws_region, account, cfg.source_table("{month}").replace("{month}", "*"))]
    source: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
        {"Sid": "ExportMonthlyTables", "Effect": "Allow",
         "Action": ["dynamodb:DescribeTable", "dynamodb:DescribeContinuousBackups",
                    "dynamodb:ExportTableToPointInTime"],
         "Resource": tables},
        {"Sid": "FollowExports", "Effect": "Allow", "Action": ["dynamodb:DescribeExport"],
         "Resource": [t + "/export/*" for t in tables]},
        {"Sid": "FindAnExportStartedBefore", "Effect": "Allow", "Action": ["dynamodb:ListExports"], "Resource": "*"},
        {"Sid": "ScanExportOnly", "Effect": "Allow", "Action": ["dynamodb:Scan"], "Resource": tables},
    ]}
    if cfg.staging.root.startswith("s3://"):
        bucket, prefix = staging.split_s3(cfg.staging.root)
        base = f"arn:aws:s3:::{bucket}"
        objects = f"{base}/{prefix}/*" if prefix else f"{base}/*"
        stage = {"Version": "2012-10-17", "Statement": [
            {"Sid": "StagingObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
             "Resource": [objects]},
            {"Sid": "StagingList", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [base],
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*" if prefix else "*"]}}},
            {"Sid": "StagingBucketRegion", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [base]},
        ]}
        # DynamoDB writes the export with the caller's identity: the source role needs PutObject too
        source["Statement"].append({"Sid": "ExportWritesToStaging", "Effect": "Allow",
                                    "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl"],
                                    "Resource": [f"{objects.rsplit('/*', 1)[0]}/export/*"]})
    else:
        stage = {"Version": "2012-10-17", "Statement": []}
    dest = _table_arn(cfg.destination.aws_region, account, cfg.destination_table())
    destination = {"Version": "2012-10-17", "Statement": [
        {"Sid": "LoadAndVerify", "Effect": "Allow",
         "Action": ["dynamodb:DescribeTable", "dynamodb:BatchWriteItem", "dynamodb:BatchGetItem"],
         "Resource": [dest]},
        {"Sid": "CheckoutLookupAndForwardWriter", "Effect": "Allow",
         "Action": ["dynamodb:Query", "dynamodb:PutItem"], "Resource": [dest]},
        {"Sid": "TimeToLive", "Effect": "Allow",
         "Action": ["dynamodb:DescribeTimeToLive", "dynamodb:UpdateTimeToLive"], "Resource": [dest]},
        {"Sid": "ShowAccountBeforeWriting", "Effect": "Allow", "Action": ["sts:GetCallerIdentity"], "Resource": "*"},
    ]}
    return {"source": source, "staging": stage, "destination": destination}
