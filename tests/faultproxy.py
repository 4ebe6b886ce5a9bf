"""A local HTTP proxy in front of moto or DynamoDB Local that injects faults at the edge.

A request is DynamoDB's (an `X-Amz-Target: DynamoDB_20120810.<Op>` header) or S3's (anything else, path-style).
Which requests may get a fault is `scope` (default: BatchWriteItem only, what the loader's tests want); the
fault is chosen per request from `weights` with a seeded RNG, and one that does not apply to the request
(`throttle` on S3, `slowdown` on DynamoDB, `partial` on one item) becomes `ok`:

  ok         forward
  partial    BatchWriteItem of 2+ items: forward the first half, return the rest as UnprocessedItems
  throttle   DynamoDB: 400 ProvisionedThroughputExceededException or ThrottlingException, in turn
  error500   500: InternalServerError (DynamoDB JSON) or InternalError (S3 XML)
  slowdown   S3: 503 SlowDown
  drop       close the connection without forwarding (FIN)
  reset      forward (the server acts on it), then reset the connection (RST) instead of answering
  reset_mid  forward, send the answer's head and half its body, then reset (`reset` when it has no body)
  slow       forward, answer after `slow_seconds`
  invalid    DynamoDB: 400 ValidationException with `invalid_message` (nothing forwarded)

Counts: `seen` (every BatchWriteItem: items, distinct keys, fault), `faults` (kind -> requests in scope, `ok`
included), `requests` (operation -> count), `sdk_retries` (requests an AWS SDK marked as a retry, header
`amz-sdk-request: attempt=N` with N > 1), `resumes` (ranged S3 GETs: the rest of a cut body asked for again),
`s3_writes` (the path of every S3 PutObject and CreateMultipartUpload, in order). `configure` changes weights
and scope while it runs.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "proxy-connection", "te",
              "trailer", "upgrade"}
KINDS = ("ok", "partial", "throttle", "error500", "slowdown", "drop", "reset", "reset_mid", "slow", "invalid")


@dataclass
class Request:
    method: str
    path: str  # with the query
    headers: Any
    body: bytes
    service: str  # dynamodb | s3
    op: str  # DynamoDB's operation, or S3's (GetObject, PutObject, ...)
    items: int = 0  # a BatchWriteItem's puts


def batch_writes(req: Request) -> bool:
    return req.op == "BatchWriteItem"


def everything(req: Request) -> bool:
    return True


def applies(kind: str, req: Request) -> bool:
    """May this kind of fault happen to this request?"""
    if kind == "partial":
        return req.op == "BatchWriteItem" and req.items > 1
    if kind in ("throttle", "invalid"):
        return req.service == "dynamodb"
    if kind == "slowdown":
        return req.service == "s3"
    return kind in KINDS


def s3_op(method: str, path: str) -> str:
    """An S3 request's operation from its method and path-style URL (for counts)."""
    u = urlparse(path)
    q = parse_qs(u.query, keep_blank_values=True)
    has_key = "/" in u.path.strip("/")
    if method == "GET":
        return "GetObject" if has_key else ("GetBucketLocation" if "location" in q else "ListObjects")
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "PUT":
        return ("UploadPart" if "uploadId" in q else "PutObject") if has_key else "CreateBucket"
    if method == "POST":
        if "delete" in q:
            return "DeleteObjects"
        return "CreateMultipartUpload" if "uploads" in q else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in q else ("DeleteObject" if has_key else "DeleteBucket")
    return method


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.resets: set[int] = set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a killed run) is not news; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """A connection marked for reset is closed at once, with SO_LINGER 0 already set: an RST, not a FIN."""
        if id(request) in self.resets:
            self.resets.discard(id(request))
            self.close_request(request)
        else:
            super().shutdown_request(request)


class FaultProxy:
    def __init__(self, upstream: str, weights: dict[str, float] | None = None, seed: int = 1,
                 key: tuple[str, str] = ("CustomerID", "CreationDateTime"), tls: ssl.SSLContext | None = None,
                 scope: Callable[[Request], bool] = batch_writes, slow_seconds: float = 0.3,
                 invalid_message: str = "One or more parameter values were invalid: Missing the key CreationDateTime "
                                        "in the item") -> None:
        """`tls`: serve https with this context (on https://localhost:PORT), e.g. a TLS front for tests."""
        self.upstream = urlparse(upstream)
        self.weights = weights or {"ok": 1.0}
        self.scope = scope
        self.slow_seconds = slow_seconds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.key = key
        self.invalid_message = invalid_message
        self.seen: list[dict[str, Any]] = []
        self.faults: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.sdk_retries = 0
        self.resumes = 0
        self.s3_writes: list[str] = []
        self._throttles = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream_conn: http.client.HTTPConnection | None = None

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self, self._body())

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def finish(self) -> None:
                super().finish()
                if self.upstream_conn is not None:
                    self.upstream_conn.close()

        self.server = _Server(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def configure(self, weights: dict[str, float] | None = None, scope: Callable[[Request], bool] | None = None,
                  seed: int | None = None) -> None:
        """New weights (None: no faults) and scope, from the next request on."""
        with self.lock:
            self.weights = weights or {"ok": 1.0}
            if scope is not None:
                self.scope = scope
            if seed is not None:
                self.rng = random.Random(seed)

    def counts(self) -> dict[str, Any]:
        """A copy of the counters (`injected`: every fault but ok)."""
        with self.lock:
            return {"requests": sum(self.requests.values()), "by_op": dict(self.requests),
                    "faults": dict(self.faults), "injected": sum(v for k, v in self.faults.items() if k != "ok"),
                    "sdk_retries": self.sdk_retries, "resumes": self.resumes}

    def reset_counts(self) -> None:
        with self.lock:
            self.seen, self.faults, self.requests, self.s3_writes = [], {}, {}, []
            self.sdk_retries = self.resumes = 0

    def _choose(self, req: Request) -> str:
        with self.lock:
            kinds = list(self.weights)
            kind = self.rng.choices(kinds, [self.weights[k] for k in kinds])[0]
        return kind if applies(kind, req) else "ok"

    def _forward(self, h: Any, req: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP}
        for attempt in (1, 2):  # a kept-alive upstream connection the server closed meanwhile: open a new one
            if h.upstream_conn is None:
                h.upstream_conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
            conn = h.upstream_conn
            try:
                conn.request(req.method, req.path, body=req.body if req.method not in ("GET", "HEAD") or req.body
                             else None, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                h.upstream_conn = None
                if attempt == 2:
                    raise
                continue
            if r.will_close:
                conn.close()
                h.upstream_conn = None
            return r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in HOP_BY_HOP or
                              (k.lower() == "content-length" and req.method == "HEAD")], data
        raise AssertionError("unreachable")

    def _reply(self, h: BaseHTTPRequestHandler, status: int, data: bytes,
               headers: list[tuple[str, str]] | None = None, head_only: bool = False, cut: bool = False) -> None:
        h.send_response(status)
        names = set()
        for k, v in headers or [("Content-Type", "application/x-amz-json-1.0")]:
            h.send_header(k, v)
            names.add(k.lower())
        if "content-length" not in names:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if head_only:
            if cut:
                self._reset(h)
            return
        if cut:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            time.sleep(0.05)  # the head has arrived: the break falls in the body
            self._reset(h)
            return
        h.wfile.write(data)

    def _reset(self, h: BaseHTTPRequestHandler) -> None:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.resets.add(id(h.connection))
        h.close_connection = True

    def _error(self, h: BaseHTTPRequestHandler, req: Request, status: int, code: str, message: str) -> None:
        if req.service == "dynamodb":
            self._reply(h, status, json.dumps({"__type": code, "message": message}).encode())
            return
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>").encode()
        head = req.method == "HEAD"
        self._reply(h, status, b"" if head else body, [("Content-Type", "application/xml")], head_only=head)

    def _request(self, h: BaseHTTPRequestHandler, body: bytes) -> Request:
        target = h.headers.get("X-Amz-Target", "")
        if target.startswith("DynamoDB_"):
            req = Request(h.command, h.path, h.headers, body, "dynamodb", target.rsplit(".", 1)[-1])
        else:
            req = Request(h.command, h.path, h.headers, body, "s3", s3_op(h.command, h.path))
        if req.op == "BatchWriteItem":
            (_, writes), = json.loads(body)["RequestItems"].items()
            req.items = len(writes)
        return req

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        req = self._request(h, body)
        attempt = h.headers.get("amz-sdk-request", "")
        with self.lock:
            self.requests[req.op] = self.requests.get(req.op, 0) + 1
            if "attempt=" in attempt and not attempt.split("attempt=")[1].startswith("1;"):
                self.sdk_retries += 1
            if req.op == "GetObject" and h.headers.get("Range"):
                self.resumes += 1
            if req.op in ("PutObject", "CreateMultipartUpload"):
                self.s3_writes.append(urlparse(req.path).path)
            scope = self.scope
        in_scope = scope(req)
        fault = self._choose(req) if in_scope else "ok"
        with self.lock:
            if in_scope:
                self.faults[fault] = self.faults.get(fault, 0) + 1
            if req.op == "BatchWriteItem":
                (table, puts), = json.loads(body)["RequestItems"].items()
                keys = [tuple(json.dumps(p["PutRequest"]["Item"].get(k), sort_keys=True) for k in self.key)
                        for p in puts]
                self.seen.append({"items": len(puts), "distinct_keys": len(set(keys)), "fault": fault})
        if fault == "throttle":
            with self.lock:
                self._throttles += 1
                code = ("ProvisionedThroughputExceededException", "ThrottlingException")[self._throttles % 2]
            self._error(h, req, 400, f"com.amazonaws.dynamodb.v20120810#{code}", "Rate of requests exceeds the "
                        "allowed throughput." if code == "ThrottlingException" else "The level of configured "
                        "provisioned throughput for the table was exceeded.")
        elif fault == "invalid":
            self._error(h, req, 400, "com.amazon.coral.validate#ValidationException", self.invalid_message)
        elif fault == "error500":
            self._error(h, req, 500, "com.amazonaws.dynamodb.v20120810#InternalServerError"
                        if req.service == "dynamodb" else "InternalError", "Internal server error")
        elif fault == "slowdown":
            self._error(h, req, 503, "SlowDown", "Please reduce your request rate.")
        elif fault == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
        elif fault == "partial":
            req_json = json.loads(body)
            (table, puts), = req_json["RequestItems"].items()
            half = len(puts) // 2
            first = json.dumps({**req_json, "RequestItems": {table: puts[:half]}}).encode()
            status, headers, data = self._forward(h, Request(req.method, req.path, req.headers, first, req.service,
                                                             req.op, half))
            if status != 200:
                self._reply(h, status, data)
                return
            out = json.loads(data)
            out["UnprocessedItems"] = {table: puts[half:]}
            self._reply(h, 200, json.dumps(out).encode())
        else:
            status, headers, data = self._forward(h, req)
            if fault == "reset" or (fault == "reset_mid" and len(data) < 2):  # no body to cut: withhold it all
                self._reset(h)
                return
            if fault == "slow":
                time.sleep(self.slow_seconds)
            self._reply(h, status, data, headers, head_only=req.method == "HEAD", cut=fault == "reset_mid")
