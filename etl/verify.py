"""`etl verify`: read every key of a month's loaded rows back with BatchGetItem and compare values."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import aws, staging
from etl.config import Config
from etl.errors import EtlError, StageNotReady
from etl.load import _losers
from etl.progress import QUIET, Reporter
from etl.ratelimit import TokenBucket

EXAMPLES = 5


def read_budget(cfg: Config, desc: dict[str, Any]) -> TokenBucket:
    if cfg.load.max_rcu:
        return TokenBucket(cfg.load.max_rcu)
    on_demand = desc.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    rcu = float(desc.get("ProvisionedThroughput", {}).get("ReadCapacityUnits", 0))
    if on_demand or not rcu:
        raise EtlError(f"{desc['TableName']} is on-demand: set [load] max_rcu (absolute RCU/s) for verify")
    return TokenBucket(rcu * float(cfg.load.read_capacity_fraction or 0.5))


def _expected(cfg: Config, store: staging.Store, month: str, load: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows the load meant to write: the Parquet minus collision losers (and expired rows if skipped)."""
    t = staging.read_manifest(store, month, "transform") or {}
    losers = _losers(store, month)
    ttl_col = next((c.name for c in cfg.transform.columns if c.converter == "ttl"), None)
    out: list[dict[str, Any]] = []
    for p in t.get("parts", []):
        with store.open_read(p["output"]) as f:
            table = pq.read_table(pa.BufferReader(f.read()))
        keep = np.ones(table.num_rows, dtype=bool)
        for r in losers.get(p["part"], set()):
            keep[r] = False
        if ttl_col and not load.get("include_expired"):
            ttl = np.asarray(pc.fill_null(table[ttl_col], np.iinfo(np.int64).max).to_numpy(zero_copy_only=False))
            keep &= ttl > int(load.get("expired_before", 0))
        out.extend(table.filter(pa.array(keep)).to_pylist())
    return out


def _attr(value: Any) -> dict[str, str]:
    return {"S": value} if isinstance(value, str) else {"N": str(value)}


def verify_month(cfg: Config, store: staging.Store, month: str, ddb: Any, bucket: TokenBucket,
                 reporter: Reporter) -> dict[str, Any]:
    load = staging.read_manifest(store, month, "load")
    if load is None:
        raise StageNotReady(f"month {month} has no committed load", hint=f"run `etl load --month {month}` first")
    started = time.time()
    table = cfg.destination_table()
    pk, sk = cfg.destination.partition_key, cfg.destination.sort_key
    rows = _expected(cfg, store, month, load)
    task = reporter.task(f"verify {month}", len(rows), "items")
    missing: list[dict[str, Any]] = []
    different: list[dict[str, Any]] = []
    n_missing = n_different = 0
    for i in range(0, len(rows), 100):
        chunk = rows[i : i + 100]
        want = {(r[pk], r[sk]): r for r in chunk}
        keys = [{pk: _attr(k[0]), sk: _attr(k[1])} for k in want]
        got: dict[tuple[Any, Any], dict[str, Any]] = {}
        attempt = 0
        while keys:
            bucket.acquire(len(keys) * 0.5)
            r = ddb.batch_get_item(RequestItems={table: {"Keys": keys, "ConsistentRead": False}},
                                   ReturnConsumedCapacity="TOTAL")
            for item in r["Responses"].get(table, []):
                plain = {k: (v["S"] if "S" in v else int(v["N"]) if "N" in v else v) for k, v in item.items()}
                got[(plain[pk], plain[sk])] = plain
            keys = r.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
            if keys:
                attempt += 1
                bucket.throttled()
                time.sleep(random.uniform(0, min(10.0, 0.05 * 2**attempt)))
        for k, expected in want.items():
            actual = got.get(k)
            if actual is None:
                n_missing += 1
                if len(missing) < EXAMPLES:
                    missing.append({pk: k[0], sk: k[1]})
                continue
            diffs = {c: {"expected": v, "actual": actual.get(c)} for c, v in expected.items()
                     if v is not None and actual.get(c) != v}
            if diffs:
                n_different += 1
                if len(different) < EXAMPLES:
                    different.append({pk: k[0], sk: k[1], "columns": sorted(diffs)})
        task.advance(len(chunk))
    task.finish(missing=n_missing, different=n_different)
    ok = n_missing == 0 and n_different == 0
    return staging.commit_manifest(store, month, "verify", {
        "ok": ok, "checked": len(rows), "missing": n_missing, "different": n_different,
        "missing_examples": missing, "different_examples": different, "table": table,
        "upstream_run": load.get("run_id"), "duration_s": round(time.time() - started, 3),
    })


def run_verify(cfg: Config, months: list[str], *, reporter: Reporter = QUIET) -> list[dict[str, Any]]:
    from etl.engine import run_months

    store = staging.open_store(cfg.staging.root, cfg.staging)
    ddb = aws.client(cfg.destination, "dynamodb")
    desc = ddb.describe_table(TableName=cfg.destination_table())["Table"]
    bucket = read_budget(cfg, desc)
    return run_months("verify", months, store, lambda m: verify_month(cfg, store, m, ddb, bucket, reporter),
                      2, reporter)
