"""Load benchmark contenders (each runs in its own process: `python -m bench.load NAME ARGS`).

  ours         etl.load.run_load (lean signed urllib3 path, shared token bucket)
  batch_writer boto3 Table.batch_writer()
  put_df       awswrangler.dynamodb.put_df
  null_sink    an asyncio HTTP endpoint on 127.0.0.1 that answers every request at once, counting
               items per second (the client's ceiling and the rate fidelity check)
"""

from __future__ import annotations

import asyncio
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


def _rows(stage: str) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds

    return ds.dataset(Path(stage) / "transformed", format="parquet").to_table().to_pylist()


def ours(args: dict[str, Any]) -> None:
    from etl.config import load_config
    from etl.load import reset_checkpoints
    from etl.pipeline import run_load

    cfg = load_config(args["config"], env={})
    reset_checkpoints(cfg, [args["month"]])
    c0, t0 = cpu_seconds(), time.perf_counter()
    [m] = run_load(cfg, [args["month"]], yes=True)
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=m["written"])


def batch_writer(args: dict[str, Any]) -> None:
    import boto3

    rows = _rows(args["stage"])
    table = boto3.resource("dynamodb", endpoint_url=args["endpoint"]).Table(args["table"])
    c0, t0 = cpu_seconds(), time.perf_counter()
    with table.batch_writer(overwrite_by_pkeys=["CustomerID", "CreationDateTime"]) as w:
        for r in rows:
            w.put_item(Item=r)
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=len(rows))


def put_df(args: dict[str, Any]) -> None:
    import awswrangler as wr
    import pandas as pd

    wr.config.dynamodb_endpoint_url = args["endpoint"]
    rows = _rows(args["stage"])
    df = pd.DataFrame(rows).drop_duplicates(["CustomerID", "CreationDateTime"])
    c0, t0 = cpu_seconds(), time.perf_counter()
    wr.dynamodb.put_df(df=df, table_name=args["table"])
    emit(seconds=time.perf_counter() - t0, cpu_seconds=cpu_seconds() - c0, items=len(df))


# --------------------------------------------------------------------------- the null sink


DESCRIBE = {"Table": {
    "TableName": "", "TableArn": "", "TableStatus": "ACTIVE", "ItemCount": 0,
    "KeySchema": [{"AttributeName": "CustomerID", "KeyType": "HASH"},
                  {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
    "AttributeDefinitions": [{"AttributeName": "CustomerID", "AttributeType": "S"},
                             {"AttributeName": "CreationDateTime", "AttributeType": "N"}],
    "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
    "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0}}}


class Sink(asyncio.Protocol):
    counts: dict[int, int] = {}
    table = "t"
    last = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 : head.find(b"\r\n", i)].strip()) if i >= 0 else 0
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            if b"batchwriteitem" in head:
                n = body.count(b'"PutRequest"')
                Sink.last = time.monotonic()
                sec = int(time.time())
                Sink.counts[sec] = Sink.counts.get(sec, 0) + n
                reply = b'{"UnprocessedItems":{},"ConsumedCapacity":[{"TableName":"%s","CapacityUnits":%d.0}]}' % (
                    Sink.table.encode(), n)
            elif b"describetable" in head:
                d = json.loads(json.dumps(DESCRIBE))
                d["Table"]["TableName"] = Sink.table
                d["Table"]["TableArn"] = f"arn:aws:dynamodb:us-east-1:000000000000:table/{Sink.table}"
                reply = json.dumps(d).encode()
            else:
                reply = b'{"__type":"com.amazonaws.dynamodb.v20120810#UnknownOperationException"}'
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))


def null_sink(args: dict[str, Any]) -> None:
    """Serve until `seconds` pass or writes stopped 2 s ago, then print the per-second item counts."""
    Sink.table = args["table"]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", args["port"])
        Path(args["ready"]).write_text("ready")
        end = time.monotonic() + args["seconds"]
        while time.monotonic() < end and not (Sink.last and time.monotonic() - Sink.last > 2.0):
            await asyncio.sleep(0.2)
        server.close()

    asyncio.run(main())
    emit(counts=sorted(Sink.counts.items()), cpu_seconds=cpu_seconds())


CONTENDERS = {"ours": ours, "batch_writer": batch_writer, "put_df": put_df, "null_sink": null_sink}

if __name__ == "__main__":
    CONTENDERS[sys.argv[1]](json.loads(sys.argv[2]))
