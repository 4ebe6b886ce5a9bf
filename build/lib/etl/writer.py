"""The lean BatchWriteItem path: botocore for credentials (refreshing), SigV4 signing and the endpoint;
pooled keep-alive connections posting pre-serialised JSON (orjson) for the requests themselves.

Why not `client.batch_write_item`: per request, botocore's serialise/validate/parse pipeline costs more
CPU than DynamoDB's answer takes to arrive (see BENCHMARKS.md). What botocore does that matters here
(credentials, signing, endpoint, the error codes) is kept; retries are decided in one place,
`classify`, and driven by the loader.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from etl import aws
from etl.config import AwsSide
from etl.errors import EtlError

THROTTLE_CODES = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                  "TransactionInProgressException"}
RETRY_CODES = {"InternalServerError", "ServiceUnavailable", "InternalFailure", "RequestTimeout"}


@dataclass
class Reply:
    outcome: str  # ok | throttle | retry | fatal
    unprocessed: list[dict[str, Any]]
    consumed: float | None
    status: int
    code: str = ""
    message: str = ""


def classify(status: int, code: str) -> str:
    """Retry or fail, in one place: throttling and 5xx retry; other 4xx (validation, access) fail."""
    if code in THROTTLE_CODES:
        return "throttle"
    if status >= 500 or code in RETRY_CODES:
        return "retry"
    if status == 200:
        return "ok"
    return "fatal"


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # a Proxy-Authorization value; never logged

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def proxy_for(url: str) -> Proxy | None:
    """The proxy botocore would use for `url`: HTTPS_PROXY / HTTP_PROXY (by the endpoint's scheme) unless
    NO_PROXY matches the host, as urllib (and botocore) read them."""
    parsed = urlparse(url)
    configured = urllib.request.getproxies().get(parsed.scheme)
    if not configured or urllib.request.proxy_bypass(parsed.hostname or ""):
        return None
    proxy = urlparse(configured if "://" in configured else f"http://{configured}")
    if proxy.scheme != "http" or not proxy.hostname:
        raise EtlError(f"{parsed.scheme.upper()}_PROXY: the loader reaches proxies over http://host:port only "
                       f"(got a {proxy.scheme}:// URL)", hint="give the proxy as http://host:port")
    auth = None
    if proxy.username:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Proxy(proxy.hostname, proxy.port or 80, auth)


class _Connection:
    """One keep-alive HTTP/1.1 connection (TLS for https): a request out, a Content-Length (or chunked)
    response back. http.client's email-based header parsing cost more CPU per request than the rest
    of the loader together (BENCHMARKS.md); this reads the status line and two headers. Through a
    proxy: https is tunnelled with CONNECT; http requests go to the proxy in absolute form."""

    def __init__(self, host: str, port: int, tls: bool, timeout: float, proxy: Proxy | None = None) -> None:
        sock = socket.create_connection((proxy.host, proxy.port) if proxy else (host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.buf = b""
        if proxy is not None and tls:
            self._tunnel(host, port, proxy)
        if tls:
            # the CA bundle botocore would use when one is configured (corporate proxies), else the system's
            context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            self.sock = context.wrap_socket(sock, server_hostname=host)

    def _tunnel(self, host: str, port: int, proxy: Proxy) -> None:
        auth = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
        self.sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                break
            self._fill()
        status_line = self.buf.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            self.close()
            raise EtlError(f"the proxy {proxy} refused to open a tunnel to {host}:{port}: {status_line!r}",
                           hint="check HTTPS_PROXY (and its credentials) or add the endpoint to NO_PROXY")
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def request(self, head: bytes, body: bytes) -> tuple[int, bytes, bool]:
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n")
        header_block, self.buf = self.buf[:end], self.buf[end + 4 :]
        lines = header_block.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, keep = -1, False, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if chunked:
            return status, self._chunked(), keep
        if length < 0:  # read to the end of the connection
            with contextlib.suppress(ConnectionError):
                while True:
                    self._fill()
            data, self.buf = self.buf, b""
            return status, data, False
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data, keep

    def _chunked(self) -> bytes:
        out = []
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._fill()
            out.append(self.buf[:size])
            self.buf = self.buf[size + 2 :]
            if size == 0:
                return b"".join(out)


class BatchWriter:
    """Connections are opened on demand and reused: at most one per sending thread."""

    def __init__(self, side: AwsSide, table: str, timeout: float = 30.0) -> None:
        client = aws.client(side, "dynamodb")
        self.url = client.meta.endpoint_url.rstrip("/") + "/"
        self.region = client.meta.region_name
        self.table = table
        credentials = aws.session_for(side).get_credentials()
        if credentials is None:
            raise EtlError("no AWS credentials found for the destination (credential chain, AWS_PROFILE, role)")
        self._credentials = credentials
        parsed = urlparse(self.url)
        self.host = parsed.hostname or ""
        self.tls = parsed.scheme == "https"
        self.port = parsed.port or (443 if self.tls else 80)
        self.host_header = parsed.netloc
        self.timeout = timeout
        self.proxy = proxy_for(self.url)
        # plain http through a proxy: the request line carries the absolute URL (RFC 9112, 3.2.2)
        self._target = self.url if self.proxy is not None and not self.tls else "/"
        self._proxy_auth = (f"Proxy-Authorization: {self.proxy.authorization}\r\n"
                            if self.proxy is not None and self.proxy.authorization and not self.tls else "")
        self._idle: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._prefix = orjson.dumps(table)

    def _sign(self, body: bytes, target: str) -> dict[str, str]:
        request = AWSRequest(method="POST", url=self.url, data=body, headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{target}",
        })
        SigV4Auth(self._credentials.get_frozen_credentials(), "dynamodb", self.region).add_auth(request)
        return dict(request.headers.items())

    def body(self, puts: list[bytes]) -> bytes:
        """`puts` are pre-serialised `{"PutRequest":{"Item":...}}` fragments."""
        return (b'{"RequestItems":{' + self._prefix + b":[" + b",".join(puts) + b']},'
                b'"ReturnConsumedCapacity":"TOTAL"}')

    def post(self, target: str, body: bytes) -> tuple[int, bytes]:
        headers = self._sign(body, target)
        head = (f"POST {self._target} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Length: {len(body)}\r\n"
                + self._proxy_auth
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
                + "\r\n").encode()
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = _Connection(self.host, self.port, self.tls, self.timeout, self.proxy)
        try:
            status, data, keep = conn.request(head, body)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._idle.put(conn)
        else:
            conn.close()
        return status, data

    def write(self, puts: list[bytes]) -> Reply:
        """One BatchWriteItem. Connection-level failures surface as outcome 'retry'."""
        try:
            status, data = self.post("BatchWriteItem", self.body(puts))
        except (OSError, ValueError, IndexError) as exc:  # refused, reset, timed out, garbled
            return Reply("retry", [], None, 0, type(exc).__name__, str(exc))
        try:
            parsed = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            parsed = {}
        if status != 200:
            code = str(parsed.get("__type", "")).rsplit("#", 1)[-1]
            message = str(parsed.get("message") or parsed.get("Message") or data[:200].decode("utf-8", "replace"))
            return Reply(classify(status, code), [], None, status, code, message)
        unprocessed = parsed.get("UnprocessedItems", {}).get(self.table, [])
        consumed = None
        for c in parsed.get("ConsumedCapacity") or []:
            consumed = float(c.get("CapacityUnits", 0.0))
        return Reply("ok", unprocessed, consumed, status)
