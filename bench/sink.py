"""A stand-in for DynamoDB on 127.0.0.1 that answers after a fixed delay: the round trip of a real region.

`python -m bench.sink '{"port": P, "table": T, "delay_ms": 10, "seconds": 60, "ready": PATH}'` serves
DescribeTable (an on-demand table, pre-warmed far above any budget benchmarked, so no ramp, unless
`warm_write_units` says otherwise) and
BatchWriteItem (every item accepted, consumed capacity reported per item as with
ReturnConsumedCapacity=INDEXES), each answered `delay_ms` after the request arrived, and counts the
items it received per wall-clock second. It stops `seconds` after the start, or 2 s after the last
write, and prints the counts as one JSON line. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import emit

DESCRIBE: dict[str, Any] = {"Table": {
    "TableName": "", "TableArn": "", "TableStatus": "ACTIVE", "ItemCount": 0,
    "KeySchema": [{"AttributeName": "CustomerID", "KeyType": "HASH"},
                  {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
    "AttributeDefinitions": [{"AttributeName": "CustomerID", "AttributeType": "S"},
                             {"AttributeName": "CreationDateTime", "AttributeType": "N"}],
    "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
    "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0},
    "WarmThroughput": {"ReadUnitsPerSecond": 3_000_000, "WriteUnitsPerSecond": 1_000_000, "Status": "ACTIVE"}}}


class Sink(asyncio.Protocol):
    counts: dict[int, int] = {}
    table = "t"
    delay = 0.0
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
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        if b"batchwriteitem" in head:
            n = body.count(b'"PutRequest"')
            Sink.last = time.monotonic()
            sec = int(time.time())
            Sink.counts[sec] = Sink.counts.get(sec, 0) + n
            reply = (b'{"UnprocessedItems":{},"ConsumedCapacity":[{"TableName":"%s","CapacityUnits":%d.0,'
                     b'"Table":{"CapacityUnits":%d.0}}]}' % (Sink.table.encode(), n, n))
        elif b"describetable" in head:
            d = json.loads(json.dumps(DESCRIBE))
            d["Table"]["TableName"] = Sink.table
            d["Table"]["TableArn"] = f"arn:aws:dynamodb:us-east-1:000000000000:table/{Sink.table}"
            reply = json.dumps(d).encode()
        else:
            reply = b'{"__type":"com.amazonaws.dynamodb.v20120810#UnknownOperationException"}'
        out = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: %d\r\n\r\n%s"
               % (len(reply), reply))
        if Sink.delay:
            asyncio.get_running_loop().call_later(Sink.delay, self._write, out)
        else:
            self.transport.write(out)

    def _write(self, out: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(out)


def serve(args: dict[str, Any]) -> None:
    """Serve until `seconds` pass or writes stopped 2 s ago, then print the per-second item counts."""
    Sink.table = args["table"]
    Sink.delay = args.get("delay_ms", 0) / 1000.0
    if args.get("warm_write_units"):  # a table that is not pre-warmed
        DESCRIBE["Table"]["WarmThroughput"]["WriteUnitsPerSecond"] = args["warm_write_units"]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", args["port"], backlog=4096)
        Path(args["ready"]).write_text("ready")
        end = time.monotonic() + args["seconds"]
        while time.monotonic() < end and not (Sink.last and time.monotonic() - Sink.last > 2.0):
            await asyncio.sleep(0.2)
        server.close()

    asyncio.run(main())
    from bench.load import cpu_seconds

    emit(counts=sorted(Sink.counts.items()), cpu_seconds=cpu_seconds())


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
