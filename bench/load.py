"""Load benchmark contenders (each runs in its own process: `python -m bench.load NAME ARGS`).

  ours         etl.load.run_load (lean signed urllib3 path, shared token bucket)
  batch_writer boto3 Table.batch_writer()
  put_df       awswrangler.dynamodb.put_df
  batch_writer_threads  boto3 batch_writer on N threads for a fixed time (against the latency sink)

The stand-in for DynamoDB with a round trip (or none: the client's ceiling) is `bench.sink`.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import emit

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rows(stage: str, limit: int | None = None) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds

    data = ds.dataset(Path(stage) / "transformed", format="parquet")
    return (data.head(limit) if limit else data.to_table()).to_pylist()


def ours(args: dict[str, Any]) -> None:
    """`etl load` with the config given; with `deadline_seconds` in it, the run stops there (the sink counts)."""
    from etl.config import load_config
    from etl.errors import EtlError
    from etl.load.stage import reset_checkpoints
    from etl.pipeline import run_load

    cfg = load_config(args["config"], env={})
    reset_checkpoints(cfg, [args["month"]])
    c0, t0 = cpu_seconds(), time.perf_counter()
    try:
        [m] = run_load(cfg, [args["month"]], yes=True)
        written = m["written"]
    except EtlError as exc:
        if "deadline" not in str(exc):
            raise
        written = None
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=written)


def batch_writer(args: dict[str, Any]) -> None:
    import boto3

    rows = _rows(args["stage"])
    table = boto3.resource("dynamodb", endpoint_url=args["endpoint"]).Table(args["table"])
    c0, t0 = cpu_seconds(), time.perf_counter()
    with table.batch_writer(overwrite_by_pkeys=["CustomerID", "CreationDateTime"]) as w:
        for r in rows:
            w.put_item(Item=r)
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=len(rows))


def batch_writer_threads(args: dict[str, Any]) -> None:
    """boto3's batch_writer on `threads` threads (one resource each, rows dealt round-robin), for `seconds`."""
    import threading

    import boto3

    rows = _rows(args["stage"], 250_000)  # more than boto3 sends in the time given, even at 1 ms
    n = args["threads"]
    end = time.monotonic() + args["seconds"]
    sent = [0] * n

    def work(i: int) -> None:
        from botocore.config import Config

        table = boto3.session.Session().resource(
            "dynamodb", endpoint_url=args["endpoint"], config=Config(max_pool_connections=4)).Table(args["table"])
        with table.batch_writer(overwrite_by_pkeys=["CustomerID", "CreationDateTime"]) as w:
            for r in rows[i::n]:
                if time.monotonic() > end:
                    break
                w.put_item(Item=r)
                sent[i] += 1

    c0, t0 = cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=sum(sent))


def put_df(args: dict[str, Any]) -> None:
    # awswrangler runs on Ray when Ray is installed (the ray extra is), in workers that do not see
    # `wr.config`'s endpoint: the plain Python engine, as a one-machine user runs it
    os.environ["WR_ENGINE"] = "python"
    os.environ["WR_MEMORY_FORMAT"] = "pandas"
    import awswrangler as wr
    import pandas as pd

    wr.config.dynamodb_endpoint_url = args["endpoint"]
    rows = _rows(args["stage"])
    df = pd.DataFrame(rows).drop_duplicates(["CustomerID", "CreationDateTime"])
    c0, t0 = cpu_seconds(), time.perf_counter()
    wr.dynamodb.put_df(df=df, table_name=args["table"])
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=len(df))


CONTENDERS = {"ours": ours, "batch_writer": batch_writer, "put_df": put_df,
              "batch_writer_threads": batch_writer_threads}

if __name__ == "__main__":
    CONTENDERS[sys.argv[1]](json.loads(sys.argv[2]))
