"""Least-privilege IAM policies, one per role, built from the config (`etl iam-policy`).

Each role gets only what its commands call, in the configured mode:

  export       the source side: a PITR export (or, with --mode scan, a Scan), and --enable-pitr's switch
  catch-up     the source side: incremental exports (pitr) or the table's stream (stream)
  staging      the staging side: the staging prefix's objects, and the catalog's Glue tables
  loader       the destination side: DescribeTable and BatchWriteItem, nothing else
  bulk-put-loader  `etl load --method bulk-put`: the four bulk operations on the table, read on the input
               objects (bulkput/), write on the reports (bulkput-reports/); the key when staging is SSE-KMS
  verify       the destination side: DescribeTable and BatchGetItem (`[verify] method = "export"`: a PITR export
               of the destination into the staging prefix's verify/export/ instead)
  ttl          a one-off admin action: UpdateTimeToLive
  live-service the checkout lookup and the forward writer: Query and PutItem

Cross-account (the staging bucket in another account than the source table): DynamoDB writes the export
with the export role's identity, so the bucket's own policy must allow that role too (`bucket_policy`).
"""

from __future__ import annotations

from typing import Any

from etl import staging
from etl.config import Config

ROLES = ("export", "catch-up", "staging", "loader", "bulk-put-loader", "verify", "ttl", "live-service")

# What an AWS service does with a role's identity, never a request of this tool: DynamoDB writes an export's files
# into the staging bucket as the caller of ExportTableToPointInTime (encrypting them with the staging key)
_EXPORT_WRITES = frozenset({"s3:PutObject", "s3:AbortMultipartUpload", "kms:GenerateDataKey", "kms:Decrypt"})
SERVICE_SIDE: dict[str, frozenset[str]] = {"export": _EXPORT_WRITES, "catch-up": _EXPORT_WRITES}


def _table_arn(region: str, account: str, table: str) -> str:
    return f"arn:aws:dynamodb:{region}:{account}:table/{table}"


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(sid: str, actions: list[str], resources: list[str] | str, **extra: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources, **extra}


def source_tables(cfg: Config, months: list[str] | None, account: str) -> list[str]:
    src = cfg.source
    if months:
        return [_table_arn(src.aws_region, account, cfg.source_table(m)) for m in months]
    return [_table_arn(src.aws_region, account, cfg.source_table("{month}").replace("{month}", "*"))]


def _staging_arns(cfg: Config) -> tuple[str, str, str] | None:
    """(bucket ARN, objects ARN, prefix) of an S3 staging root."""
    if not cfg.staging.root.startswith("s3://"):
        return None
    bucket, prefix = staging.split_s3(cfg.staging.root)
    base = f"arn:aws:s3:::{bucket}"
    return base, (f"{base}/{prefix}/*" if prefix else f"{base}/*"), prefix


def policies(cfg: Config, months: list[str] | None = None, account: str = "*", *, mode: str | None = None,
             enable_pitr: bool = False, catch_up: str = "pitr") -> dict[str, dict[str, Any]]:
    """One policy document per role. Source tables are named by month when months are given, else by the
    template with a wildcard for {month}."""
    tables = source_tables(cfg, months, account)
    arns = _staging_arns(cfg)
    exports_into = [f"{arns[1].rsplit('/*', 1)[0]}/export/*"] if arns else []
    kms = _kms(cfg, account)
    # DynamoDB writes an export's files with the caller's identity (and its KMS permissions)
    export_writes = ([_allow("ExportWritesToStaging", ["s3:PutObject", "s3:AbortMultipartUpload"], exports_into)]
                     + ([_allow("ExportEncryptsWithTheStagingKey", ["kms:GenerateDataKey", "kms:Decrypt"], kms)]
                        if kms else [])) if arns else []
    if (mode or cfg.export.mode) == "scan":
        export = _doc(_allow("ScanMonthlyTables", ["dynamodb:DescribeTable", "dynamodb:Scan"], tables))
    else:
        export = _doc(
            _allow("ExportMonthlyTables", ["dynamodb:DescribeTable", "dynamodb:DescribeContinuousBackups",
                                           "dynamodb:ExportTableToPointInTime"], tables),
            _allow("FollowExports", ["dynamodb:DescribeExport"], [t + "/export/*" for t in tables]),
            _allow("FindAnExportStartedBefore", ["dynamodb:ListExports"], "*"),
            *export_writes,
            *([_allow("EnablePointInTimeRecovery", ["dynamodb:UpdateContinuousBackups"], tables)]
              if enable_pitr else []))
    if catch_up == "stream":
        catchup = _doc(_allow("ReadTheStream", ["dynamodb:DescribeTable"], tables),
                       _allow("ReadStreamRecords", ["dynamodb:DescribeStream", "dynamodb:GetShardIterator",
                                                    "dynamodb:GetRecords"], [t + "/stream/*" for t in tables]))
    else:
        catchup = _doc(
            _allow("IncrementalExports", ["dynamodb:DescribeTable", "dynamodb:DescribeContinuousBackups",
                                          "dynamodb:ExportTableToPointInTime"], tables),
            _allow("FollowExports", ["dynamodb:DescribeExport"], [t + "/export/*" for t in tables]),
            _allow("FindAnExportStartedBefore", ["dynamodb:ListExports"], "*"), *export_writes)
    if arns:
        base, objects, prefix = arns
        region, glue_account = cfg.staging.aws_region, account
        glue = f"arn:aws:glue:{region}:{glue_account}"
        stage = _doc(
            _allow("StagingObjects", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                   [objects]),
            _allow("StagingList", ["s3:ListBucket"], [base],
                   Condition={"StringLike": {"s3:prefix": [f"{prefix}/*" if prefix else "*"]}}),
            _allow("StagingBucketRegion", ["s3:GetBucketLocation"], [base]),
            *([_allow("StagingKey", ["kms:GenerateDataKey", "kms:Decrypt"], kms)] if kms else []),
            # replacing a table drops the partitions an analyst may have added (MSCK REPAIR), never the table
            _allow("CatalogTables", ["glue:GetDatabase", "glue:CreateDatabase", "glue:GetTable", "glue:CreateTable",
                                     "glue:UpdateTable", "glue:GetPartitions", "glue:BatchDeletePartition"],
                   [f"{glue}:catalog", f"{glue}:database/*", f"{glue}:table/*/*"]))
    else:
        stage = _doc()
    dest = _table_arn(cfg.destination.aws_region, account, cfg.destination_table())
    if cfg.verify.method == "export":
        verify_into = [f"{arns[1].rsplit('/*', 1)[0]}/verify/export/*"] if arns else []
        verify = _doc(
            _allow("ExportTheDestination", ["dynamodb:DescribeTable", "dynamodb:DescribeContinuousBackups",
                                            "dynamodb:ExportTableToPointInTime"], [dest]),
            _allow("FollowExports", ["dynamodb:DescribeExport"], [dest + "/export/*"]),
            _allow("FindAnExportStartedBefore", ["dynamodb:ListExports"], "*"),
            *([_allow("EnablePointInTimeRecovery", ["dynamodb:UpdateContinuousBackups"], [dest])]
              if enable_pitr else []),
            *([_allow("ExportWritesToStaging", ["s3:PutObject", "s3:AbortMultipartUpload"], verify_into)]
              + ([_allow("ExportEncryptsWithTheStagingKey", ["kms:GenerateDataKey", "kms:Decrypt"], kms)]
                 if kms else []) if arns else []))
    else:
        verify = _doc(_allow("ReadBack", ["dynamodb:DescribeTable", "dynamodb:BatchGetItem"], [dest]))
    return {
        "export": export,
        "catch-up": catchup,
        "staging": stage,
        # (sts:GetCallerIdentity, which names the account before writing, needs no permission)
        "loader": _doc(_allow("Load", ["dynamodb:DescribeTable", "dynamodb:BatchWriteItem"], [dest])),
        "bulk-put-loader": bulk_put_loader(cfg, dest, kms),
        "verify": verify,
        "ttl": _doc(_allow("TimeToLive", ["dynamodb:DescribeTimeToLive", "dynamodb:UpdateTimeToLive"], [dest])),
        "live-service": _doc(_allow("CheckoutLookupAndForwardWriter", ["dynamodb:Query", "dynamodb:PutItem"],
                                    [dest])),
    }


def bulk_put_loader(cfg: Config, table_arn: str, kms: list[str]) -> dict[str, Any]:
    """`etl load --method bulk-put`: start, follow, find and cancel bulk put operations on the destination; DynamoDB
    reads the input objects and writes its report with the caller's identity, so the role reads `bulkput/` and
    writes `bulkput-reports/` (the staging role writes the input objects). With SSE-KMS staging, the key decrypts
    the input and encrypts the report. The developer guide's permissions page for bulk put was not reachable when
    this was written: the S3 and KMS actions follow what DynamoDB's import from S3 and export to S3 need."""
    statements = [
        _allow("BulkPutIntoTheDestination", ["dynamodb:DescribeTable", "dynamodb:StartBulkPutItems"], [table_arn]),
        _allow("FollowBulkPutOperations", ["dynamodb:DescribeBulkOperation", "dynamodb:CancelBulkOperation"],
               [table_arn, f"{table_arn}/bulk-operation/*"]),
        _allow("FindABulkPutStartedBefore", ["dynamodb:ListBulkOperations"], "*")]
    arns = _staging_arns(cfg)
    if arns:
        base, objects, prefix = arns
        root = objects.rsplit("/*", 1)[0]
        statements += [
            _allow("ReadBulkPutInput", ["s3:GetObject"], [f"{root}/bulkput/*"]),
            _allow("ListBulkPutInput", ["s3:ListBucket"], [base],
                   Condition={"StringLike": {"s3:prefix": [f"{prefix}/bulkput/*" if prefix else "bulkput/*"]}}),
            _allow("WriteBulkPutReports", ["s3:PutObject", "s3:AbortMultipartUpload"],
                   [f"{root}/bulkput-reports/*"])]
        if kms:
            statements.append(_allow("BulkPutUsesTheStagingKey", ["kms:Decrypt", "kms:GenerateDataKey"], kms))
    return _doc(*statements)


def _kms(cfg: Config, account: str) -> list[str]:
    """The staging key's ARN when staged objects are SSE-KMS encrypted (an alias or id: any key of the account,
    named by the key policy instead)."""
    st = cfg.staging
    if st.sse != "aws:kms":
        return []
    if st.kms_key_id and st.kms_key_id.startswith("arn:aws:kms:"):
        return [st.kms_key_id]
    return [f"arn:aws:kms:{st.aws_region}:{st.account or account}:key/*"]


def key_policy_statement(cfg: Config, role_arns: list[str]) -> dict[str, Any] | None:
    """For the staging KMS key's own policy: the roles that write and read staged objects (the export role
    among them when it is in another account)."""
    if cfg.staging.sse != "aws:kms":
        return None
    return _allow("BackfillRolesUseTheKey", ["kms:GenerateDataKey", "kms:Decrypt"], "*",
                  Principal={"AWS": role_arns})


def bucket_policy(cfg: Config, export_role_arn: str) -> dict[str, Any] | None:
    """For a staging bucket in another account than the source: what the bucket must allow the export role
    (DynamoDB writes the export as that role)."""
    arns = _staging_arns(cfg)
    if arns is None:
        return None
    base, objects, _ = arns
    return _doc(_allow("DynamoDBExportsFromTheSourceAccount", ["s3:PutObject", "s3:AbortMultipartUpload"],
                       [f"{objects.rsplit('/*', 1)[0]}/export/*"], Principal={"AWS": export_role_arn}),
                _allow("ExportRoleFindsTheBucket", ["s3:GetBucketLocation", "s3:ListBucket"], [base],
                       Principal={"AWS": export_role_arn}))
