"""The lean BatchWriteItem path: botocore for credentials (refreshing) and the endpoint; SigV4 signing and
keep-alive HTTP/1.1 connections of our own, driven by one asyncio event loop per process.

Why not `client.batch_write_item`: per request, botocore's serialise/validate/parse pipeline costs more
CPU than DynamoDB's answer takes to arrive (see BENCHMARKS.md). Why one event loop: DynamoDB answers in
5-30 ms in a region and 60-150 ms across regions, so reaching a budget takes tens to hundreds of
requests in flight (rate x RTT / items per request); as threads they contend for the GIL, on one event
loop they are cheap sockets. Callers hand requests over from any thread (`submit`) and get the reply in
a callback on the loop's thread; `write` is the blocking form. Retries are decided in one place,
`errors.classify`, and driven by the loader.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from etl import aws
from etl.config import AwsSide
from etl.errors import EtlError, classify


@dataclass
class Reply:
    outcome: str  # ok | throttle | retry | fatal
    unprocessed: list[dict[str, Any]]
    consumed: float | None  # CapacityUnits: the table and its indexes together
    status: int
    code: str = ""
    message: str = ""
    per_index: dict[str, float] | None = None  # each global secondary index's share of `consumed`
    rtt: float = 0.0  # seconds from sending the request to its whole answer
    error: EtlError | None = None  # a fatal failure with its own message (a proxy refusing the tunnel)


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


def _tunnel(host: str, port: int, proxy: Proxy, timeout: float) -> socket.socket:
    """A blocking socket to the proxy with a CONNECT tunnel to host:port open (TLS goes on top)."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    auth = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) <= 65536:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    status_line = buf.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "200":
        sock.close()
        raise EtlError(f"the proxy {proxy} refused to open a tunnel to {host}:{port}: {status_line!r}",
                       hint="check HTTPS_PROXY (and its credentials) or add the endpoint to NO_PROXY")
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------- signing


class Signer:
    """AWS Signature Version 4 for DynamoDB's JSON POSTs, with the day's signing key kept: a quarter of
    botocore's CPU per request (AWSRequest + SigV4Auth), and the same signature (tested)."""

    def __init__(self, credentials: Any, region: str, host: str) -> None:
        self._credentials = credentials
        self.region = region
        self.host = host
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        if self._key is None or self._key[:2] != (secret, day):
            k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "dynamodb", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._key = (secret, day, k)
        return self._key[2]

    def headers(self, body: bytes, target: str, amz_date: str | None = None) -> list[tuple[str, str]]:
        creds = self._credentials.get_frozen_credentials()
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        signed = [("content-type", "application/x-amz-json-1.0"), ("host", self.host), ("x-amz-date", amz_date)]
        if creds.token:
            signed.append(("x-amz-security-token", creds.token))
        signed.append(("x-amz-target", f"DynamoDB_20120810.{target}"))
        names = ";".join(k for k, _ in signed)
        canonical = ("POST\n/\n\n" + "".join(f"{k}:{v}\n" for k, v in signed) + "\n" + names + "\n"
                     + hashlib.sha256(body).hexdigest())
        scope = f"{day}/{self.region}/dynamodb/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        auth = f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
        return [(k, v) for k, v in signed if k != "host"] + [("authorization", auth)]


# --------------------------------------------------------------------------- the event loop


def io_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for the loader's requests, on a daemon thread (made on first use; a forked
    child makes its own, since the parent's thread did not come along)."""
    return _io_loop(os.getpid())


@functools.lru_cache(maxsize=1)
def _io_loop(pid: int) -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="etl-io").start()
    return loop


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request out, a Content-Length (or chunked) response back.
    http.client's email-based header parsing cost more CPU per request than the rest of the loader
    together (BENCHMARKS.md); this reads the status line and three headers."""

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.done: Callable[[int, bytes, bool, str], None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, data: bytes, done: Callable[[int, bytes, bool, str], None]) -> None:
        assert self.transport is not None
        self.done = done
        self.timer = self.writer.loop.call_later(self.writer.timeout, self._timeout)
        self.transport.write(data)

    def _timeout(self) -> None:
        self._finish(0, b"", False, "ReadTimeout")
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, status: int, body: bytes, keep: bool, error: str = "") -> None:
        done, self.done = self.done, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if done is not None:
            done(status, body, keep and not self.closed, error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(0, b"", False, type(exc).__name__ if exc else "ConnectionClosed")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.done is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            lines = bytes(self.buf[:end]).split(b"\r\n")
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
            start = end + 4
            if chunked:
                body = _dechunk(self.buf, start)
                if body is None:
                    return
                self.buf.clear()
            elif length < 0:
                return  # read to the end of the connection: answered in connection_lost
            else:
                if len(self.buf) < start + length:
                    return
                body = bytes(self.buf[start : start + length])
                del self.buf[: start + length]
        except (ValueError, IndexError):
            self._finish(0, b"", False, "BadResponse")
            if self.transport is not None:
                self.transport.abort()
            return
        self._finish(status, body, keep)


def _dechunk(buf: bytearray, pos: int) -> bytes | None:
    """A whole chunked body from `pos`, or None while it is incomplete."""
    out = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if len(buf) < eol + 2 + size + 2:
            return None
        out.append(bytes(buf[eol + 2 : eol + 2 + size]))
        pos = eol + 2 + size + 2
        if size == 0:
            return b"".join(out)


class BatchWriter:
    """Sends BatchWriteItem requests for one table on this process's event loop. Connections are opened on
    demand and kept alive: as many as requests have been in flight at once."""

    def __init__(self, side: AwsSide, table: str, timeout: float = 30.0) -> None:
        client = aws.client(side, "dynamodb")
        self.url = client.meta.endpoint_url.rstrip("/") + "/"
        self.region = client.meta.region_name
        self.table = table
        credentials = aws.session_for(side).get_credentials()
        if credentials is None:
            raise EtlError("no AWS credentials found for the destination (credential chain, AWS_PROFILE, role)")
        parsed = urlparse(self.url)
        self.host = parsed.hostname or ""
        self.tls = parsed.scheme == "https"
        self.port = parsed.port or (443 if self.tls else 80)
        default_port = parsed.port is None or parsed.port == (443 if self.tls else 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.signer = Signer(credentials, self.region, self.host_header)
        self.timeout = timeout
        self.proxy = proxy_for(self.url)
        # plain http through a proxy: the request line carries the absolute URL (RFC 9112, 3.2.2)
        target = self.url if self.proxy is not None and not self.tls else "/"
        proxy_auth = (f"Proxy-Authorization: {self.proxy.authorization}\r\n"
                      if self.proxy is not None and self.proxy.authorization and not self.tls else "")
        self._head = f"POST {target} HTTP/1.1\r\nHost: {self.host_header}\r\n{proxy_auth}"
        self._prefix = orjson.dumps(table)
        self._ssl = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None) if self.tls else None
        self.loop = io_loop()
        self._idle: list[_Conn] = []  # touched on the loop's thread only
        # the round trip and window a part measured here last: where the next part's window starts
        self.hint: tuple[float, int] = (0.0, 8)

    def body(self, puts: list[bytes]) -> bytes:
        """`puts` are pre-serialised `{"PutRequest":{"Item":...}}` fragments."""
        return (b'{"RequestItems":{' + self._prefix + b":[" + b",".join(puts) + b']},'
                b'"ReturnConsumedCapacity":"INDEXES"}')

    def _request(self, target: str, body: bytes) -> bytes:
        headers = self.signer.headers(body, target)
        return (self._head + f"Content-Length: {len(body)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
                + "\r\n").encode() + body

    def submit(self, puts: list[bytes], done: Callable[[Reply], None]) -> None:
        """Send one BatchWriteItem (from any thread); `done(reply)` runs on the event loop's thread and must
        not block. Connection-level failures come back as outcome 'retry'."""
        data = self._request("BatchWriteItem", self.body(puts))
        self.loop.call_soon_threadsafe(self._send, data, done, time.monotonic())

    def write(self, puts: list[bytes]) -> Reply:
        """One BatchWriteItem, waiting for the reply (for tests and small tools)."""
        box: list[Reply] = []
        ready = threading.Event()

        def done(reply: Reply) -> None:
            box.append(reply)
            ready.set()

        self.submit(puts, done)
        ready.wait()
        if box[0].error is not None:
            raise box[0].error
        return box[0]

    # ------------------------------------------------------------------ on the loop's thread

    def _send(self, data: bytes, done: Callable[[Reply], None], sent: float) -> None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.request(data, functools.partial(self._answered, conn, sent, done))
                return
        self.loop.create_task(self._open_and_send(data, done, sent))

    async def _open_and_send(self, data: bytes, done: Callable[[Reply], None], sent: float) -> None:
        try:
            conn = await asyncio.wait_for(self._open(), self.timeout)
        except EtlError as exc:
            done(Reply("fatal", [], None, 0, "ProxyRefused", exc.message, error=exc))
            return
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            done(Reply("retry", [], None, 0, type(exc).__name__, str(exc), rtt=time.monotonic() - sent))
            return
        conn.request(data, functools.partial(self._answered, conn, sent, done))

    async def _open(self) -> _Conn:
        loop = self.loop
        server_hostname = self.host if self.tls else None
        if self.proxy is not None and self.tls:
            proxy = self.proxy
            sock = await loop.run_in_executor(None, _tunnel, self.host, self.port, proxy, self.timeout)
            _, conn = await loop.create_connection(lambda: _Conn(self), sock=sock, ssl=self._ssl,
                                                   server_hostname=server_hostname)
        else:
            host, port = (self.proxy.host, self.proxy.port) if self.proxy is not None else (self.host, self.port)
            _, conn = await loop.create_connection(lambda: _Conn(self), host, port, ssl=self._ssl,
                                                   server_hostname=server_hostname)
        raw = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _answered(self, conn: _Conn, sent: float, done: Callable[[Reply], None], status: int, data: bytes,
                  keep: bool, error: str) -> None:
        if keep:
            self._idle.append(conn)
        elif conn.transport is not None and not conn.closed:
            conn.transport.close()
        reply = self._reply(status, data, error)
        reply.rtt = time.monotonic() - sent
        done(reply)

    def _reply(self, status: int, data: bytes, error: str) -> Reply:
        if error:  # refused, reset, timed out, garbled
            return Reply("retry", [], None, 0, error, "the connection failed")
        try:
            parsed = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            parsed = {}
        if status != 200:
            code = str(parsed.get("__type", "")).rsplit("#", 1)[-1]
            message = str(parsed.get("message") or parsed.get("Message") or data[:200].decode("utf-8", "replace"))
            return Reply(classify(status, code), [], None, status, code, message)
        unprocessed = parsed.get("UnprocessedItems", {}).get(self.table, [])
        consumed, per_index = None, None
        for c in parsed.get("ConsumedCapacity") or []:
            consumed = float(c.get("CapacityUnits", 0.0))
            if c.get("GlobalSecondaryIndexes"):
                per_index = {k: float(v.get("CapacityUnits", 0.0)) for k, v in c["GlobalSecondaryIndexes"].items()}
        return Reply("ok", unprocessed, consumed, status, per_index=per_index)
