"""`etl catalog register`: the staged Parquet as one Glue table (Athena), partitioned by month."""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError
from etl.mapping import output_schema

GLUE_TYPES = {"string": "string", "int64": "bigint"}


def register(cfg: Config, database: str, table: str) -> dict[str, Any]:
    """Create or update the table and add a partition for every month with a committed transform."""
    if not cfg.staging.root.startswith("s3://"):
        raise EtlError("a Glue/Athena table needs an S3 staging root",
                       hint="for a local root, read transformed/ with DuckDB or pyarrow (sql/duckdb_local.sql)")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    location = store.key_uri("transformed") + "/"
    glue = aws.client(cfg.staging, "glue")
    try:
        glue.create_database(DatabaseInput={"Name": database, "Description": "DynamoDB backfill staging"})
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "AlreadyExistsException":
            raise
    columns = [{"Name": f.name, "Type": GLUE_TYPES.get(str(f.type), "string")} for f in output_schema(cfg)]
    storage = {
        "Columns": columns, "Location": location,
        "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
        "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
        "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"},
    }
    table_input = {"Name": table, "TableType": "EXTERNAL_TABLE", "StorageDescriptor": storage,
                   "PartitionKeys": [{"Name": "month", "Type": "string"}],
                   "Parameters": {"classification": "parquet", "parquet.compression": "ZSTD"}}
    try:
        glue.create_table(DatabaseName=database, TableInput=table_input)
        created = True
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "AlreadyExistsException":
            raise
        glue.update_table(DatabaseName=database, TableInput=table_input)
        created = False
    existing: set[str] = set()
    for page in glue.get_paginator("get_partitions").paginate(DatabaseName=database, TableName=table):
        existing.update(p["Values"][0] for p in page["Partitions"])
    months = [m for m in staging.known_months(store) if staging.read_manifest(store, m, "transform")]
    new = [m for m in months if m not in existing]
    for i in range(0, len(new), 100):
        r = glue.batch_create_partition(DatabaseName=database, TableName=table, PartitionInputList=[
            {"Values": [m], "StorageDescriptor": {**storage, "Location": f"{location}month={m}/"}}
            for m in new[i : i + 100]])
        if r.get("Errors"):
            raise EtlError(f"Glue refused partitions: {r['Errors'][0]}")
    return {"database": database, "table": table, "location": location, "created": created,
            "partitions_added": new, "partitions": sorted(existing | set(new))}
