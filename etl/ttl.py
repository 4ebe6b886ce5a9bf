"""TTL keeps the index a rolling window: enable it on the destination, preview what will expire."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl import aws, expiry, staging
from etl.config import Config
from etl.errors import EtlError
from etl.mapping import require_ttl_column as ttl_attribute


def enable(cfg: Config) -> dict[str, Any]:
    """UpdateTimeToLive on the TTL attribute, unless it is already ENABLED or ENABLING (idempotent)."""
    ddb = aws.client(cfg.destination, "dynamodb")
    table = cfg.destination_table()
    attr = ttl_attribute(cfg)
    d = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    status, current = d.get("TimeToLiveStatus", "DISABLED"), d.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if current != attr:
            raise EtlError(f"TTL on {table} is {status} on {current!r}, not {attr!r}",
                           hint="DynamoDB allows one TTL attribute; disable it first if it is the wrong one")
        return {"table": table, "attribute": attr, "status": status, "changed": False}
    if status == "DISABLING":
        raise EtlError(f"TTL on {table} is DISABLING; DynamoDB refuses changes until that ends (up to an hour)")
    ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": attr})
    d = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    return {"table": table, "attribute": attr, "status": d.get("TimeToLiveStatus"), "changed": True}


def preview(cfg: Config, at: datetime) -> list[dict[str, Any]]:
    """Per month of the staged Parquet: rows, and rows whose TTL will have passed by `at` (no table scan)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    attr = ttl_attribute(cfg)
    if at.tzinfo is None:
        raise EtlError("--at needs a time zone offset, e.g. 2017-06-01T00:00:00Z")
    cutoff = int(at.timestamp())
    out = []
    for month in staging.known_months(store):
        t = staging.read_manifest(store, month, "transform")
        if t is None:
            continue
        total = expiring = 0
        for part in t["parts"]:
            with store.open_read(part["output"]) as f:
                col = pq.read_table(pa.BufferReader(f.read()), columns=[attr])[attr]
            total += len(col)
            expiring += int(expiry.expired(col, cutoff).sum())
        out.append({"month": month, "rows": total, "expired_by": expiring, "remaining": total - expiring})
    return out

