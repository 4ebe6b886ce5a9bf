"""Runs the load benchmark: peers against DynamoDB Local, the client's ceiling and rate fidelity
against a null sink on 127.0.0.1, and formats the BENCHMARKS.md section."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import DATA, ROOT, run_contender


def prepare(rows: int) -> tuple[Path, str]:
    """A staging root with `rows` transformed rows of last month (not expired), cached."""
    from etl.config import load_config
    from etl.pipeline import run_export, run_transform
    from tests.helpers import write_real_export

    month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y%m")
    stage = DATA / f"load-{rows}" / "stage"
    cfg_path = DATA / f"load-{rows}" / "prep.toml"
    if (stage / "_state" / f"month={month}" / "transform.json").exists():
        return stage, month
    stage.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{stage}"\n')
    cfg = load_config(str(cfg_path), env={})
    base = datetime.strptime(month + "01", "%Y%m%d").replace(tzinfo=UTC)
    items = [{"CustomerID": {"S": f"C{i % 25000:07d}"},
              "DateTime": {"S": (base + timedelta(seconds=i)).isoformat(timespec="milliseconds")},
              "OrderID": {"S": f"O{i:012d}"}} for i in range(rows)]
    files = [items[i::4] for i in range(4)]
    folder = write_real_export(DATA / f"load-{rows}" / "export", files)
    run_export(cfg, [month], use_existing=str(folder), force=True)
    run_transform(cfg, [month], force=True)
    return stage, month


def _config(path: Path, stage: Path, endpoint: str, table: str, max_wcu: float, concurrency: int = 8) -> str:
    path.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{stage}"\n'
                    f'[destination]\ntable_template="{table}"\nendpoint_url="{endpoint}"\nproduction=false\n'
                    f"[load]\nmax_wcu = {max_wcu}\nconcurrency = {concurrency}\n")
    return str(path)


def _table(endpoint: str) -> str:
    import boto3

    name = f"bench_{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "CreationDateTime", "AttributeType": "N"}])
    return name


def _sink(table: str, seconds: float) -> tuple[subprocess.Popen[str], str, Path]:
    from tests.conftest import free_port

    port = free_port()
    ready = DATA / f"sink-{port}.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.load", "null_sink",
                             json.dumps({"port": port, "table": table, "seconds": seconds, "ready": str(ready)})],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    while not ready.exists():
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}", ready


def _sink_counts(proc: subprocess.Popen[str]) -> list[tuple[int, int]]:
    out, _ = proc.communicate(timeout=600)
    return [tuple(x) for x in json.loads(out.strip().splitlines()[-1])["counts"]]  # type: ignore[misc]


def run(quick: bool) -> str:
    from tests.conftest import start_ddb_local

    n = 10_000 if quick else 100_000
    stage, month = prepare(n)
    work = DATA / "load-work"
    work.mkdir(parents=True, exist_ok=True)
    ddbl, endpoint = start_ddb_local()
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in ("ours", "batch_writer", "put_df"):
            table = _table(endpoint)
            args = {"stage": str(stage), "month": month, "endpoint": endpoint, "table": table,
                    "config": _config(work / f"{name}.toml", stage, endpoint, table, 1_000_000)}
            results[name] = run_contender("bench.load", name, args, repeat=1)
    finally:
        ddbl.terminate()
        ddbl.wait(10)
    # the client's ceiling against a null sink, ours and boto3's batch_writer
    big = 20_000 if quick else 400_000
    big_stage, big_month = prepare(big)
    ceiling: dict[str, dict[str, Any]] = {}
    for name in ("ours", "batch_writer"):
        proc, url, _ = _sink("sinktable", 600)
        args = {"stage": str(big_stage), "month": big_month, "endpoint": url, "table": "sinktable",
                "config": _config(work / f"sink-{name}.toml", big_stage, url, "sinktable", 10_000_000, 16)}
        ceiling[name] = run_contender("bench.load", name, args, repeat=1)
        proc.terminate()
        proc.wait()
    # rate fidelity: max_wcu = R for about 60 s, counted per second by the sink
    rate = 500 if quick else 5_000
    seconds = 12 if quick else 60
    rstage, rmonth = prepare(rate * seconds)
    proc, url, _ = _sink("ratetable", seconds + 30)
    args = {"stage": str(rstage), "month": rmonth, "endpoint": url, "table": "ratetable",
            "config": _config(work / "rate.toml", rstage, url, "ratetable", rate, 8)}
    run_contender("bench.load", "ours", args, repeat=1)
    counts = _sink_counts(proc)
    full = [c for _, c in counts[1:-1]]  # whole seconds only
    avg = statistics.mean(full) if full else 0.0
    peak = max(full) if full else 0
    o, b, w = results["ours"], results["batch_writer"], results["put_df"]

    def per100k(r: dict[str, Any]) -> float:
        return r["cpu_seconds"] / r["items"] * 100_000

    co, cb = ceiling["ours"], ceiling["batch_writer"]
    lines = [
        "## Load: Parquet -> BatchWriteItem",
        "",
        f"Against DynamoDB Local ({n:,} items of about 140 bytes, on-demand table, same items for all). "
        f"{os.cpu_count()} cores, server and client on the same machine. {{stamp}}.",
        "",
        "| contender | seconds | items/s | client CPU s per 100k items | ours is (items/s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in (("ours (etl load)", o), ("boto3 Table.batch_writer()", b), ("awswrangler dynamodb.put_df", w)):
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['items'] / r['seconds']:,.0f} | {per100k(r):.1f} | "
                     + ("-" if r is o else f"{(o['items'] / o['seconds']) / (r['items'] / r['seconds']):.2f}x")
                     + " |")
    lines += [
        "",
        f"The client's ceiling against a null sink on 127.0.0.1 (answers every request at once; {big:,} items):",
        "",
        "| client | items/s | CPU s per 100k items |",
        "|---|---:|---:|",
        f"| ours | {co['items'] / co['seconds']:,.0f} | {per100k(co):.2f} |",
        f"| boto3 batch_writer | {cb['items'] / cb['seconds']:,.0f} | {per100k(cb):.2f} |",
        "",
        f"Ours per CPU-second: {per100k(cb) / per100k(co):.1f}x boto3's batch_writer "
        f"(target >= 5x); items/s: {(co['items'] / co['seconds']) / (cb['items'] / cb['seconds']):.1f}x "
        "(target >= 60,000 items/s).",
        "",
        f"Rate fidelity: `max_wcu = {rate:,}` for {seconds} s, counted per second at the sink: average "
        f"{avg:,.0f} WCU/s ({avg / rate:.1%} of the budget), highest second {peak:,} ({peak / rate:.1%}); "
        "target 95-100% and no second above 110%.",
        "",
        "Command: `make bench ARGS=load`.",
    ]
    return "\n".join(lines)
