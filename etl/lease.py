"""One run at a time per month and stage, and one loading run per destination: a lease in the staging store.

A lease is a small JSON object, and every change to it is a conditional write on its version (S3's ETag, a
local file's MD5; see `staging.Store.create_if_absent`), so two runs can never both hold it:

- taking it is a create only if absent (S3's `If-None-Match: *`; an exclusive create in a local directory);
- its run renews it while it lives, each renewal a replace only if the lease is still the version this run
  wrote (`If-Match`). A refused renewal means another run took it over (or `--break-lease` removed it): the
  lease is lost, renewing stops, `Lease.lost` is set, `on_lost` is called with one line naming the new
  holder, and `Lease.check()`, called before each write, raises `LeaseLost` with that line.
  A lease whose renewals fail until it expires is lost too: another run may take it from then on;
- a second run finds it and is refused with who holds it since when. A lease whose holder is gone (past its
  expiry, or held by a process of this machine that no longer exists: a killed run resumes at once) is
  taken over by a replace only if it is still the version read, so of two runs taking it over at once
  exactly one wins;
- its run deletes it at the end if it still holds the run's token, and only the version read (`If-Match`):
  a lease taken over is left to its new holder. `--break-lease` deletes it unconditionally, as the user
  asked.

A conditional write whose answer was lost is retried by the SDK and then refused, since the first attempt
changed the version: a lease that holds this run's token is this run's, whatever its version.
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


def describe(holder: dict[str, Any]) -> str:
    """Who holds a lease, for a message: host, pid, command and since when."""
    return (f"{holder.get('host')} pid {holder.get('pid')}, `{holder.get('command')}`, "
            f"since {holder.get('since')}")


class LeaseHeld(EtlError):
    """Another run holds the lease."""


class LeaseLost(EtlError):
    """This run's lease was taken over or removed: another run may be writing what this one writes."""


@dataclass
class Lease:
    store: staging.Store
    key: str
    body: dict[str, Any]
    version: str = ""  # the lease as this run last wrote it: every change is conditional on it
    ttl: float = TTL_SECONDS
    on_lost: Callable[[str], None] | None = None  # called once, from the thread that found the lease lost
    lost: threading.Event = field(default_factory=threading.Event)
    lost_why: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _told: bool = False
    _told_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.held_until = float(self.body["expires"])  # the expiry last written: past it, others may take it

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                if self._stop.is_set() or self.lost.is_set():
                    return
                self._renew_once()
            self._tell()

    def _renew_once(self) -> None:
        """Push the expiry on, only if the lease is still ours; called with `_lock` held. A renewal that
        could not reach the store is tried again at the next turn, until the lease expires."""
        expires = time.time() + self.ttl
        body = {**self.body, "expires": expires}
        try:
            version = self.store.replace_json_if_match(self.key, body, self.version)
            if version is None:
                self._adopt_or_lose()
            else:
                self.body, self.version, self.held_until = body, version, expires
        except Exception:
            self._lose_if_expired()

    def _adopt_or_lose(self) -> None:
        """After a refused write: a lease that still holds our token is ours (our own write whose answer was
        lost, then refused when the SDK sent it again); any other means the lease is lost."""
        got = self.store.read_json_versioned(self.key)
        if got is not None and got[0].get("token") == self.body["token"]:
            self.body, self.version = got
            self.held_until = float(self.body["expires"])
            return
        what = self.body["what"]
        self._lose(f"{what}: the lease was removed (--break-lease?)" if got is None else
                   f"{what}: the lease was taken over by another run ({describe(got[0])})")

    def _lose_if_expired(self) -> None:
        if time.time() > self.held_until:
            self._lose(f"{self.body['what']}: the lease expired at {times.iso_seconds(self.held_until)} without a "
                       f"renewal ({self.store.key_uri(self.key)} did not take one); another run may have taken it")

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            self.lost_why = why
            self.lost.set()

    def _tell(self) -> None:
        """Call `on_lost` once, outside `_lock` (it may release the lease)."""
        with self._told_lock:
            if not self.lost.is_set() or self._told:
                return
            self._told = True
        if self.on_lost is not None:
            self.on_lost(self.lost_why)

    @property
    def released(self) -> bool:
        return self._stop.is_set()

    def check(self) -> None:
        """Raise LeaseLost if this run no longer holds its lease (taken over, removed, or expired without a
        renewal): a run calls it before its writes."""
        self._lose_if_expired()  # without `_lock`: a renewal in flight must not hold up the run's writes
        self._tell()
        if self.lost.is_set():
            raise LeaseLost(self.lost_why, hint="the other run goes on; rerun this command once it has ended")

    def release(self) -> None:
        """Delete the lease only if it still holds this run's token, and only that version of it: a lease
        taken over is left to its new holder. (Read first, not trusting `version`: a renewal whose answer
        was lost changed it.)"""
        with self._lock:
            self._stop.set()
            with contextlib.suppress(Exception):
                got = self.store.read_json_versioned(self.key)
                if got is not None and got[0].get("token") == self.body["token"]:
                    self.store.delete_if_match(self.key, got[1])

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(store: staging.Store, key: str, what: str, command: str, *, break_lease: bool = False,
            ttl: float = TTL_SECONDS, on_lost: Callable[[str], None] | None = None) -> Lease:
    """Take the lease at `key` for `what` (e.g. "load 201604"), or refuse naming its holder. `on_lost(why)`
    is called (from another thread) if the lease is later taken over or removed; `Lease.check()` raises then."""
    now = time.time()
    body = {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "since": times.iso_seconds(now), "expires": now + ttl, "command": command}
    if break_lease:
        store.delete(key)
    for _ in range(5):
        version = store.create_json_if_absent(key, body)
        if version is None:
            got = store.read_json_versioned(key)
            if got is None:
                continue  # released between the two calls: try again
            holder, current = got
            if holder.get("token") == body["token"]:  # ours: the create's answer was lost and its retry refused
                version = current
            elif gone(holder):
                version = store.replace_json_if_match(key, body, current)  # of two runs taking over, one wins
                if version is None:
                    continue  # another run took it first, or it was renewed or released: look again
            else:
                raise LeaseHeld(
                    f"{what} is being run by another process ({holder.get('host')} pid {holder.get('pid')}, "
                    f"`{holder.get('command')}`) since {holder.get('since')}; refusing to run it twice at once",
                    hint=f"wait for it to finish; if that run is dead on another machine, its lease expires at "
                         f"{times.iso_seconds(float(holder.get('expires', 0)))}, or rerun with --break-lease")
        lease = Lease(store, key, body, version, ttl, on_lost)
        threading.Thread(target=lease._renew, daemon=True, name=f"lease {what}").start()
        return lease
    raise LeaseHeld(f"{what}: could not take the lease at {store.key_uri(key)}")
