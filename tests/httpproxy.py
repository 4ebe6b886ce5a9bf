"""A forward proxy and a TLS front for tests, both on 127.0.0.1.

`ForwardProxy` does what a corporate proxy does: `CONNECT host:port` opens a tunnel; a request in
absolute form (`POST http://host:port/ ...`) is passed to its origin. It records every request it was
asked (method, target, whether credentials came) and can demand credentials (407 without them).
`tls_front` terminates TLS with a self-signed certificate for localhost/127.0.0.1 in front of a plain
HTTP server (DynamoDB Local), so an https endpoint can be tested end to end.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlparse

from tests.faultproxy import FaultProxy


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    t = threading.Thread(target=copy, args=(b, a), daemon=True)
    t.start()
    copy(a, b)
    t.join(5)
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.close()


class _Server:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ForwardProxy(_Server):
    def __init__(self, credentials: str | None = None, routes: dict[str, int] | None = None) -> None:
        """`credentials`: the Proxy-Authorization value to insist on (e.g. "Basic dTpw"). `routes`:
        "host:port" -> a port on 127.0.0.1, so an endpoint only the proxy can reach (as behind a real one)."""
        self.credentials = credentials
        self.routes = routes or {}
        self.seen: list[tuple[str, str, bool]] = []  # (method, target, sent credentials)
        self.lock = threading.Lock()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                conn.close()
                return
            buf += data
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        auth = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("proxy-authorization:")),
                    None)
        with self.lock:
            self.seen.append((method, target, auth is not None))
        if self.credentials is not None and auth != self.credentials:
            conn.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n'
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            return
        if method == "CONNECT":
            upstream = self._connect(target)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(conn, upstream)
            return
        upstream = self._connect(urlparse(target).netloc)
        upstream.sendall(buf)  # the origin (Jetty here) takes the absolute form, as HTTP/1.1 servers must
        _pipe(conn, upstream)

    def _connect(self, netloc: str) -> socket.socket:
        if netloc in self.routes:
            return socket.create_connection(("127.0.0.1", self.routes[netloc]))
        host, _, port = netloc.rpartition(":")
        return socket.create_connection((host, int(port or 80)))


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate (and key) for localhost and 127.0.0.1, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_front(upstream: str, folder: Path) -> tuple[FaultProxy, Path]:
    """HTTPS (a self-signed certificate, returned for AWS_CA_BUNDLE) in front of a plain HTTP server: a
    FaultProxy that only forwards, so no TLS socket is ever read and written from two threads at once."""
    cert, key = self_signed(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return FaultProxy(upstream, tls=context), cert
