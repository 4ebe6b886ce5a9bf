"""A stand-in for DynamoDB's bulk put operations, for end-to-end tests only (never in the package).

Neither moto nor DynamoDB Local implements StartBulkPutItems, DescribeBulkOperation, ListBulkOperations or
CancelBulkOperation. This local HTTP server sits in front of DynamoDB Local: it answers those four itself and
forwards every other request. An operation reads its input objects from the staging bucket (moto's S3), decodes
each `{"Item": {...}}` line and writes it with BatchWriteItem (PutItem, one by one, for a batch DynamoDB Local
refuses as invalid: that item counts as failed and gets a line in the output prefix). Every answer it gives is
checked against botocore's own service model first (`botocore.validate`), as the Stubber checks answers.

Knobs: `hold` (an Event: while set, an operation waits before writing, staying IN_PROGRESS), `fail` (code,
message: the next operation ends FAILED), `starts` counts StartBulkPutItems calls, `operations` keeps each one.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions
import botocore.session
import pyarrow as pa
from botocore.validate import ParamValidator

BULK = ("StartBulkPutItems", "DescribeBulkOperation", "ListBulkOperations", "CancelBulkOperation")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
MODEL = botocore.session.get_session().get_service_model("dynamodb")


def _answer_checked(op: str, body: dict[str, Any]) -> dict[str, Any]:
    """The answer, once botocore's model says it is a valid output of the operation."""
    report = ParamValidator().validate(body, MODEL.operation_model(op).output_shape)
    if report.has_errors():
        raise AssertionError(f"the stand-in's {op} answer does not match botocore's model: {report.generate_report()}")
    return body


class BulkPutStandIn:
    def __init__(self, ddb_endpoint: str, s3_endpoint: str) -> None:
        self.upstream = urlparse(ddb_endpoint)
        self.ddb = boto3.client("dynamodb", endpoint_url=ddb_endpoint, region_name="us-east-1")
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        self.lock = threading.Lock()
        self.operations: dict[str, dict[str, Any]] = {}  # arn -> description (plus private fields)
        self.tokens: dict[str, tuple[str, dict[str, Any]]] = {}  # client token -> (arn, request)
        self.starts = 0
        self.hold = threading.Event()
        self.fail: tuple[str, str] | None = None
        self.errors: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                op = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                if op in BULK:
                    status, answer = stand_in.handle(op, json.loads(body or b"{}"))
                    data = json.dumps(answer).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.0")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                stand_in.forward(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hold.clear()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ forwarding

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request("POST", handler.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        handler.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP_BY_HOP:
                handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        conn.close()

    # ------------------------------------------------------------------ the four operations

    def handle(self, op: str, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            if op == "StartBulkPutItems":
                return 200, _answer_checked(op, {"BulkOperationDescription": self.start(req)})
            if op == "DescribeBulkOperation":
                d = self._get(req["BulkOperationArn"])
                if d is None:
                    return 400, _error("ResourceNotFoundException", f"no bulk operation {req['BulkOperationArn']}")
                return 200, _answer_checked(op, {"BulkOperationDescription": d})
            if op == "ListBulkOperations":
                return 200, _answer_checked(op, self.list(req))
            d = self._get(req["BulkOperationArn"])
            if d is None:
                return 400, _error("ResourceNotFoundException", f"no bulk operation {req['BulkOperationArn']}")
            with self.lock:
                desc = self.operations[req["BulkOperationArn"]]
                if desc["BulkOperationStatus"] == "IN_PROGRESS":
                    desc["BulkOperationStatus"] = "CANCELLING"
            return 200, _answer_checked(op, {"BulkOperationArn": req["BulkOperationArn"],
                                             "BulkOperationStatus": "CANCELLING"})
        except _Refused as exc:
            return 400, _error(exc.code, exc.message)
        except AssertionError as exc:  # an answer off the model: the test must see it
            self.errors.append(str(exc))
            return 500, _error("InternalServerError", str(exc))

    def _get(self, arn: str) -> dict[str, Any] | None:
        with self.lock:
            d = self.operations.get(arn)
            return None if d is None else {k: v for k, v in d.items() if not k.startswith("_")}

    def start(self, req: dict[str, Any]) -> dict[str, Any]:
        token = req.get("ClientToken") or uuid.uuid4().hex
        with self.lock:
            self.starts += 1
            if token in self.tokens:
                arn, first = self.tokens[token]
                if first != req:
                    raise _Refused("IdempotentParameterMismatchException", "the token was used with other parameters")
                return {k: v for k, v in self.operations[arn].items() if not k.startswith("_")}
            table = req["TableName"]
            arn = f"arn:aws:dynamodb:us-east-1:000000000000:table/{table}/bulk-operation/{uuid.uuid4().hex}"
            desc = {"BulkOperationArn": arn, "BulkOperationStatus": "IN_PROGRESS", "ClientToken": token,
                    "InputS3Configuration": req["InputS3Configuration"],
                    "OutputS3Configuration": req["OutputS3Configuration"], "StartTime": time.time(),
                    "ProcessedItemCount": 0, "FailedItemCount": 0, "ProcessedInputBytes": 0,
                    "MaxWriteRequestUnits": req.get("MaxWriteRequestUnits", 1024),
                    "PerformanceTier": req.get("PerformanceTier", "STANDARD"),
                    "_table": table, "_fail": self.fail}
            self.fail = None
            self.operations[arn] = desc
            self.tokens[token] = (arn, req)
        threading.Thread(target=self._run, args=(arn,), daemon=True).start()
        return {k: v for k, v in desc.items() if not k.startswith("_")}

    def list(self, req: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            ops = sorted(self.operations.values(), key=lambda d: -d["StartTime"])
        start = int(req.get("NextToken", "0" * 16), 16)
        size = int(req.get("MaxResults", 10))
        page = ops[start:start + size]
        out: dict[str, Any] = {"BulkOperationsSummaryList": [
            {k: d[k] for k in ("BulkOperationArn", "BulkOperationStatus", "StartTime", "EndTime") if k in d}
            for d in page]}
        if start + size < len(ops):
            out["NextToken"] = f"{start + size:016x}"
        return out

    # ------------------------------------------------------------------ performing one

    def _set(self, arn: str, **fields: Any) -> None:
        with self.lock:
            self.operations[arn].update(fields)

    def _add(self, arn: str, **fields: int) -> None:
        with self.lock:
            for k, v in fields.items():
                self.operations[arn][k] += v

    def _cancelled(self, arn: str) -> bool:
        with self.lock:
            return bool(self.operations[arn]["BulkOperationStatus"] == "CANCELLING")

    def _run(self, arn: str) -> None:
        with self.lock:
            d = dict(self.operations[arn])
        src, out = d["InputS3Configuration"], d["OutputS3Configuration"]
        keys = [o for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=src["S3Bucket"], Prefix=src.get("S3KeyPrefix", "")) for o in page.get("Contents", [])]
        self._set(arn, TotalInputBytes=sum(o["Size"] for o in keys))
        while self.hold.is_set() and not self._cancelled(arn):
            time.sleep(0.02)
        if d["_fail"] is not None:
            code, message = d["_fail"]
            self._set(arn, BulkOperationStatus="FAILED", FailureCode=code, FailureMessage=message, EndTime=time.time())
            return
        bad: list[bytes] = []
        total = 0
        for o in keys:
            raw = self.s3.get_object(Bucket=src["S3Bucket"], Key=o["Key"])["Body"].read()
            kind = src.get("InputCompressionType", "NONE")
            data = gzip.decompress(raw) if kind == "GZIP" else bytes(
                pa.input_stream(pa.BufferReader(raw), compression="zstd").read()) if kind == "ZSTD" else raw
            lines = [line for line in data.split(b"\n") if line]
            for i in range(0, len(lines), 25):
                if self._cancelled(arn):
                    self._set(arn, BulkOperationStatus="CANCELLED", FailureCode="Cancelled",
                              FailureMessage="cancelled by request", EndTime=time.time())
                    return
                chunk = lines[i:i + 25]
                failed = self._write(d["_table"], chunk, bad)
                total += len(chunk)
                self._add(arn, ProcessedItemCount=len(chunk), FailedItemCount=failed)
            self._add(arn, ProcessedInputBytes=o["Size"])
        if bad and "ERROR" in out["OutputType"]:
            self.s3.put_object(Bucket=out["S3Bucket"], Key=f"{out.get('S3KeyPrefix', '')}errors.jsonl",
                               Body=b"\n".join(bad) + b"\n")
        self._set(arn, BulkOperationStatus="COMPLETED_WITH_ERRORS" if bad else "COMPLETED", EndTime=time.time(),
                  BulkOperationUsage=[{"TableName": d["_table"], "BulkPutBytes": int(sum(o["Size"] for o in keys))}])

    def _write(self, table: str, lines: list[bytes], bad: list[bytes]) -> int:
        """Put the lines' items; returns how many DynamoDB Local refused (each gets an error line)."""
        puts = [{"PutRequest": {"Item": json.loads(line)["Item"]}} for line in lines]
        try:
            r = self.ddb.batch_write_item(RequestItems={table: puts})
            left = r.get("UnprocessedItems", {}).get(table, [])
            while left:
                r = self.ddb.batch_write_item(RequestItems={table: left})
                left = r.get("UnprocessedItems", {}).get(table, [])
            return 0
        except botocore.exceptions.ClientError:  # one item is invalid: put each, to find it
            failed = 0
            for line, put in zip(lines, puts, strict=True):
                try:
                    self.ddb.put_item(TableName=table, Item=put["PutRequest"]["Item"])
                except botocore.exceptions.ClientError as exc:
                    failed += 1
                    bad.append(json.dumps({"error": exc.response["Error"]["Message"],
                                           "line": line.decode()}).encode())
            return failed


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _error(code: str, message: str) -> dict[str, Any]:
    return {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
