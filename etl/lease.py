"""One run at a time per month and stage, and one loading run per destination: a lease in the staging store.

A lease is a small JSON object created only if absent (S3's conditional put, `If-None-Match: *`; O_EXCL on a
local directory), renewed while its run lives, and deleted when the run ends. A second run finds it and is
refused with who holds it since when. A lease whose holder is gone is taken over: one past its expiry, or
one held by a process of this machine that no longer exists (a killed run resumes at once). `--break-lease`
removes a lease by hand.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from etl import staging, times
from etl.errors import EtlError

TTL_SECONDS = 120.0


def gone(holder: dict[str, Any]) -> bool:
    """The holder's lease expired, or its process on this machine no longer exists."""
    if float(holder.get("expires", 0)) < time.time():
        return True
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
    return False


class LeaseHeld(EtlError):
    """Another run holds the lease."""


@dataclass
class Lease:
    store: staging.Store
    key: str
    body: dict[str, Any]
    ttl: float = TTL_SECONDS
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                if self._stop.is_set():
                    return
                self.body["expires"] = time.time() + self.ttl
                with contextlib.suppress(Exception):  # a missed renewal is retried; the lease lasts `ttl`
                    self.store.write_json(self.key, self.body)

    def release(self) -> None:
        with self._lock:
            self._stop.set()
            with contextlib.suppress(Exception):
                current = self.store.read_json(self.key)
                if current.get("token") == self.body["token"]:
                    self.store.delete(self.key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(store: staging.Store, key: str, what: str, command: str, *, break_lease: bool = False,
            ttl: float = TTL_SECONDS, on_lost: Callable[[str], None] | None = None) -> Lease:
    """Take the lease at `key` for `what` (e.g. "load 201604"), or refuse naming its holder."""
    now = time.time()
    body = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "since": times.iso_seconds(now), "expires": now + ttl, "command": command}
    if break_lease:
        store.delete(key)
    for _ in range(3):
        created = store.create_json(key, body)
        try:
            holder: dict[str, Any] = body if created else store.read_json(key)
        except EtlError:
            continue  # released between the two calls: try again
        if holder.get("token") == body["token"]:  # ours, also when the create's answer was lost and its retry refused
            lease = Lease(store, key, body, ttl)
            threading.Thread(target=lease._renew, daemon=True, name=f"lease {what}").start()
            return lease
        if gone(holder):
            store.delete(key)
            continue
        raise LeaseHeld(
            f"{what} is being run by another process ({holder.get('host')} pid {holder.get('pid')}, "
            f"`{holder.get('command')}`) since {holder.get('since')}; refusing to run it twice at once",
            hint=f"wait for it to finish; if that run is dead on another machine, its lease expires at "
                 f"{times.iso_seconds(float(holder.get('expires', 0)))}, or rerun with --break-lease")
    raise LeaseHeld(f"{what}: could not take the lease at {store.key_uri(key)}")
