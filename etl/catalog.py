"""`etl catalog register`: the four staged datasets as Glue tables, for Athena.

    export       export/month=M/AWSDynamoDB/<id>/data/*.json.gz   DynamoDB JSON, one `Item` struct per line
    transformed  transformed/month=M/part-NNNNN.parquet            the transform's output
    rejected     rejected/month=M/part-NNNNN.jsonl.gz              quarantined lines: reason, message, file, line
    verify       verify/month=M/part-BBBBB.parquet                 what `etl verify --method export` found

Each is partitioned by `month` (a string, as the folders spell it) with Athena partition projection, so a
month staged later is queryable at once: no partitions to add, no MSCK REPAIR. The tables are made by
awswrangler's catalog functions in overwrite mode, so registering again leaves the same definitions (and
drops partitions an older, non-projected definition had added). The same DDL is in sql/create_*.sql.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError
from etl.mapping import output_schema, parse_schema

DATABASE = "dynamodb_backfill"
EXPORT_TABLE = "anniversary_promo_export"
TRANSFORMED_TABLE = "anniversary_promo_staged"
REJECTED_TABLE = "anniversary_promo_rejected"
VERIFY_TABLE = "anniversary_promo_verify"
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
REJECTED_COLUMNS = {"reason": "string", "message": "string", "file": "string", "line": "string"}


@dataclass(frozen=True)
class TableSpec:
    dataset: str  # the staging prefix: export, transformed, rejected or verify
    name: str
    kind: str  # parquet | json
    columns: dict[str, str]  # name -> Hive type


def hive_type(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.type)}" for f in t) + ">"
    if pa.types.is_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_int64(t):
        return "bigint"
    if pa.types.is_string(t):
        return "string"
    raise EtlError(f"no Athena type for the Arrow type {t}")


def table_specs(cfg: Config, export: str = EXPORT_TABLE, transformed: str = TRANSFORMED_TABLE,
                rejected: str = REJECTED_TABLE, verify: str = VERIFY_TABLE) -> list[TableSpec]:
    """The four tables as the config shapes them: the export's Item declares the attributes the transform
    reads (with the DynamoDB types it accepts), transformed/ the mapping's columns, verify/ the mapping's key
    with what was found of it."""
    from etl.verify_export import diff_schema

    item = parse_schema(cfg).field("Item")
    return [
        TableSpec("export", export, "json", {item.name: hive_type(item.type)}),
        TableSpec("transformed", transformed, "parquet", {f.name: hive_type(f.type) for f in output_schema(cfg)}),
        TableSpec("rejected", rejected, "json", dict(REJECTED_COLUMNS)),
        TableSpec("verify", verify, "parquet", {f.name: hive_type(f.type) for f in diff_schema(cfg)}),
    ]


def projection_range(store: staging.Store) -> str:
    """From the first month in the staging store (this month when there is none) to NOW: Athena looks
    only for months in the range, so it starts where the data starts."""
    months = staging.known_months(store)
    return f"{months[0] if months else time.strftime('%Y%m', time.gmtime())},NOW"


@contextlib.contextmanager
def _glue_endpoint(url: str | None) -> Iterator[None]:
    """awswrangler takes endpoints from its global config, not from the session: set the staging side's
    for the call (a local emulator), then put it back."""
    import awswrangler as wr

    if url is None:
        yield
        return
    before = wr.config.glue_endpoint_url
    wr.config.glue_endpoint_url = url
    try:
        yield
    finally:
        if before is None:
            wr.config.reset("glue_endpoint_url")
        else:
            wr.config.glue_endpoint_url = before


def register(cfg: Config, database: str = DATABASE, table: str = TRANSFORMED_TABLE, *,
             export_table: str = EXPORT_TABLE, rejected_table: str = REJECTED_TABLE,
             verify_table: str = VERIFY_TABLE) -> dict[str, Any]:
    """Create or replace the four Glue tables (and the database), with partition projection on month.
    Idempotent. Returns what was done and the Athena queries to try (`summary` prints it)."""
    import botocore.exceptions

    try:
        import awswrangler as wr
    except ImportError:
        raise EtlError("`etl catalog register` needs awswrangler",
                       hint="pip install 'etl-anniversary[analysis]'") from None
    if not cfg.staging.root.startswith("s3://"):
        raise EtlError("a Glue/Athena table needs an S3 staging root",
                       hint="for a local root, read it with DuckDB (sql/duckdb_local.sql) or the notebook")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    session = aws.session_for(cfg.staging)
    span = projection_range(store)
    done: list[dict[str, Any]] = []
    try:
        with _glue_endpoint(cfg.staging.endpoint_url):
            wr.catalog.create_database(database, description="DynamoDB backfill staging", exist_ok=True,
                                       boto3_session=session)
            for spec in table_specs(cfg, export_table, table, rejected_table, verify_table):
                location = store.key_uri(spec.dataset) + "/"
                existed = wr.catalog.does_table_exist(database, spec.name, boto3_session=session)
                common: dict[str, Any] = {
                    "database": database, "table": spec.name, "path": location, "columns_types": spec.columns,
                    "partitions_types": {"month": "string"}, "mode": "overwrite", "boto3_session": session,
                    "description": f"{spec.dataset}/ of the staging root {store.uri}",
                    "parameters": {"projection.month.interval.unit": "MONTHS"},
                    "athena_partition_projection_settings": {
                        "projection_types": {"month": "date"}, "projection_formats": {"month": "yyyyMM"},
                        "projection_ranges": {"month": span}, "projection_intervals": {"month": "1"},
                        "projection_storage_location_template": location + "month=${month}/"},
                }
                if spec.kind == "parquet":
                    wr.catalog.create_parquet_table(**common, compression="zstd")
                else:
                    wr.catalog.create_json_table(**common, compression="gzip", serde_library=JSON_SERDE,
                                                 serde_parameters={"ignore.malformed.json": "true"})
                done.append({"dataset": spec.dataset, "table": spec.name, "location": location,
                             "created": not existed})
    except botocore.exceptions.NoCredentialsError:
        raise EtlError("no AWS credentials for the staging side (Glue)",
                       hint="set AWS_PROFILE or the [staging] role_arn, or log in (aws sso login)") from None
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise EtlError(f"Glue refused to register the tables in {database}: {err.get('Code')}: {err.get('Message')}",
                       hint="the staging side needs glue:GetDatabase, CreateDatabase, GetTable, CreateTable, "
                            "UpdateTable, GetPartitions and BatchDeletePartition") from None
    return {"database": database, "tables": done, "projection": {"month": span},
            "queries": queries(database, {t["dataset"]: t["table"] for t in done})}


def queries(database: str, tables: dict[str, str]) -> list[dict[str, str]]:
    """A few Athena queries over the registered tables (the full set is in the repository's sql/)."""
    e, t, r, v = (f"{database}.{tables[d]}" for d in ("export", "transformed", "rejected", "verify"))
    return [
        {"title": "orders per month", "sql": f"SELECT month, count(*) AS orders, "
         f"min(from_unixtime(CreationDateTime)) AS first, max(from_unixtime(CreationDateTime)) AS last "
         f"FROM {t} GROUP BY month ORDER BY month"},
        {"title": "export lines per month (the manifests are not data)", "sql": f"SELECT month, count(*) AS lines "
         f"FROM {e} WHERE \"$path\" LIKE '%/data/%' GROUP BY month ORDER BY month"},
        {"title": "rejected rows by reason", "sql": f"SELECT month, reason, count(*) AS rows, min(message) AS example "
         f"FROM {r} GROUP BY month, reason ORDER BY month, rows DESC"},
        {"title": "keys more than one row lands on", "sql": f"SELECT month, CustomerID, CreationDateTime, "
         f"count(*) AS rows, max(OrderID) AS loaded FROM {t} GROUP BY month, CustomerID, CreationDateTime "
         f"HAVING count(*) > 1 ORDER BY rows DESC LIMIT 20"},
        {"title": "what the last verify by export found", "sql": f"SELECT month, kind, count(*) AS keys "
         f"FROM {v} GROUP BY month, kind ORDER BY month, kind"},
    ]


def summary(result: dict[str, Any]) -> str:
    """What `etl catalog register` prints."""
    lines = [f"{result['database']}.{t['table']} ({t['dataset']}/ at {t['location']}): "
             f"{'created' if t['created'] else 'replaced'}" for t in result["tables"]]
    lines.append(f"partition projection on month, {result['projection']['month']}: new months need no repair")
    lines.append("try in Athena (more in sql/):")
    lines += [f"  -- {q['title']}\n  {q['sql']};" for q in result["queries"]]
    return "\n".join(lines)
