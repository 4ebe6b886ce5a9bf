"""A local HTTP proxy in front of DynamoDB Local that injects faults into BatchWriteItem calls.

Faults, chosen per request from a seeded schedule: `partial` (forward half the items, return the
rest as UnprocessedItems), `throttle` (400 ProvisionedThroughputExceededException), `error500`,
`drop` (close the connection without an answer), `invalid` (400 ValidationException with `invalid_message`)
and `ok`. Every BatchWriteItem it sees is recorded
(item count, duplicate keys) so tests can check the loader's requests.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse


class FaultProxy:
    def __init__(self, upstream: str, weights: dict[str, float] | None = None, seed: int = 1,
                 key: tuple[str, str] = ("CustomerID", "CreationDateTime"), tls: ssl.SSLContext | None = None,
                 invalid_message: str = "One or more parameter values were invalid: Missing the key CreationDateTime "
                                        "in the item") -> None:
        """`tls`: serve https with this context (on https://localhost:PORT), e.g. a TLS front for tests."""
        self.upstream = urlparse(upstream)
        self.weights = weights or {"ok": 1.0}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.key = key
        self.invalid_message = invalid_message
        self.seen: list[dict[str, Any]] = []
        self.faults: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _choose(self) -> str:
        with self.lock:
            kinds = list(self.weights)
            return self.rng.choices(kinds, [self.weights[k] for k in kinds])[0]

    def _forward(self, headers: Any, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        h = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        conn.request("POST", "/", body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, data

    def _reply(self, h: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/x-amz-json-1.0")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        target = h.headers.get("X-Amz-Target", "")
        if not target.endswith("BatchWriteItem"):
            self._reply(h, *self._forward(h.headers, body))
            return
        req = json.loads(body)
        (table, puts), = req["RequestItems"].items()
        keys = [tuple(json.dumps(p["PutRequest"]["Item"].get(k), sort_keys=True) for k in self.key) for p in puts]
        fault = self._choose()
        with self.lock:
            self.seen.append({"items": len(puts), "distinct_keys": len(set(keys)), "fault": fault})
            self.faults[fault] = self.faults.get(fault, 0) + 1
        if fault == "throttle":
            self._reply(h, 400, json.dumps({
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "The level of configured provisioned throughput for the table was exceeded."}).encode())
        elif fault == "invalid":
            self._reply(h, 400, json.dumps({"__type": "com.amazon.coral.validate#ValidationException",
                                            "message": self.invalid_message}).encode())
        elif fault == "error500":
            self._reply(h, 500, json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                                            "message": "Internal server error"}).encode())
        elif fault == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
        elif fault == "partial" and len(puts) > 1:
            half = len(puts) // 2
            status, data = self._forward(h.headers, json.dumps({**req, "RequestItems": {table: puts[:half]}}).encode())
            if status != 200:
                self._reply(h, status, data)
                return
            out = json.loads(data)
            out["UnprocessedItems"] = {table: puts[half:]}
            self._reply(h, 200, json.dumps(out).encode())
        else:
            self._reply(h, *self._forward(h.headers, body))
