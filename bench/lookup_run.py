"""Lookup benchmark: `discount_for` (one Query on the index) against the naive way (a Query on each of
24 monthly tables, one after another and with a thread pool), all on DynamoDB Local loaded by the
pipeline itself (scan export -> transform -> load)."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import DATA, recent_months

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def run(quick: bool) -> str:
    import boto3

    from etl import aws
    from etl.config import load_config
    from etl.local import _ensure_table, _write_items, customer_ids, generate_month
    from etl.pipeline import run_export, run_load, run_transform
    from etl.promo import discount_for
    from tests.conftest import start_ddb_local

    rows, lookups, n_months = (1_000, 50, 24) if quick else (4_000, 300, 24)
    months = recent_months(n_months)
    work = DATA / "lookup"
    work.mkdir(parents=True, exist_ok=True)
    proc, endpoint = start_ddb_local()
    try:
        cfg_path = work / "lookup.toml"
        cfg_path.write_text(
            f'domain="shop"\nregion="eu"\n[source]\nendpoint_url="{endpoint}"\n'
            f'[staging]\nroot="{work / "stage"}"\n[destination]\nendpoint_url="{endpoint}"\nproduction=false\n'
            f"[export]\nmode='scan'\nscan_max_rcu=100000\nconcurrency=4\n[load]\nmax_wcu=100000\n"
            "[transform]\nttl_seconds = 94608000\n")  # 3 years: every order of the 24 months is live
        cfg = load_config(str(cfg_path), env={})
        ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        for month in months:
            table = cfg.source_table(month)
            _ensure_table(ddb, table, [("CustomerID", "S", "HASH"), ("DateTime", "S", "RANGE")], None)
            items = [{k: v for k, v in r.items() if k != "_dirty"} for r in generate_month(month, rows, 3)]
            _write_items(ddb, table, items)
        _ensure_table(ddb, cfg.destination_table(), [("CustomerID", "S", "HASH"), ("CreationDateTime", "N", "RANGE")],
                      None)
        run_export(cfg, months, force=True)
        run_transform(cfg, months, force=True)
        loaded = run_load(cfg, months, yes=True)
        written = sum(m["written"] for m in loaded)
        customers = customer_ids(3, max(20, rows // 6))[:lookups]
        client = aws.client(cfg.destination, "dynamodb")
        requests = {"ours": 0, "naive": 0}

        def count(name: str) -> Any:
            def hook(**_: Any) -> None:
                requests[name] += 1
            return hook

        client.meta.events.register("before-send.dynamodb.Query", count("ours"))
        naive_client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        naive_client.meta.events.register("before-send.dynamodb.Query", count("naive"))

        def naive_one(customer: str, month: str) -> list[dict[str, Any]]:
            r = naive_client.query(
                TableName=cfg.source_table(month), KeyConditionExpression="CustomerID = :c",
                FilterExpression="attribute_exists(OrderID) AND OrderID <> :e",
                ExpressionAttributeValues={":c": {"S": customer}, ":e": {"S": ""}},
                ScanIndexForward=False, ProjectionExpression="#d, OrderID", ExpressionAttributeNames={"#d": "DateTime"})
            return list(r["Items"])

        timings: dict[str, list[float]] = {"ours": [], "naive sequential": [], "naive thread pool (24)": []}
        discount_for(customers[0], None, cfg, client)  # warm both clients' connections first
        naive_one(customers[0], months[0])
        requests.update(ours=0, naive=0)
        kinds: dict[str, int] = {}
        for c in customers:
            t0 = time.perf_counter()
            d = discount_for(c, None, cfg, client)
            timings["ours"].append(time.perf_counter() - t0)
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        for c in customers:
            t0 = time.perf_counter()
            for m in months:
                naive_one(c, m)
            timings["naive sequential"].append(time.perf_counter() - t0)
        with ThreadPoolExecutor(24) as pool:
            for c in customers:
                t0 = time.perf_counter()
                list(pool.map(lambda m, c=c: naive_one(c, m), months))
                timings["naive thread pool (24)"].append(time.perf_counter() - t0)
        per = {"ours": requests["ours"] / len(customers), "naive": requests["naive"] / (2 * len(customers))}
    finally:
        proc.terminate()
        proc.wait(10)
    base50 = statistics.median(timings["ours"])
    base99 = _pct(timings["ours"], 99)
    lines = [
        "## Lookup: the checkout question",
        "",
        f"DynamoDB Local holding {n_months} monthly tables of {rows:,} seeded rows and the index table the "
        f"pipeline built from them ({written:,} orders); {len(customers)} seeded customers asked "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}). Latency per decision, client and server "
        "on this machine. {stamp}.",
        "",
        "| way | requests per decision | p50 ms | p99 ms | p50 vs ours | p99 vs ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in timings.items():
        req = per["ours"] if name == "ours" else per["naive"]
        p50, p99 = statistics.median(values), _pct(values, 99)
        lines.append(f"| {name} | {req:g} | {p50 * 1000:.1f} | {p99 * 1000:.1f} | "
                     + ("-" if name == "ours" else f"{p50 / base50:.1f}x slower") + " | "
                     + ("-" if name == "ours" else f"{p99 / base99:.1f}x slower") + " |")
    lines += ["", "Command: `make bench ARGS=lookup`."]
    return "\n".join(lines)
