"""Leases: a second run of one month and stage, or a second loading run of one destination, is refused with
who holds it since when; a lease whose holder is gone is taken over; --break-lease removes one."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etl import lease, pipeline, staging
from etl.config import AwsSide, Config
from tests.conftest import free_port, s3_client
from tests.faultproxy import FaultProxy, Request
from tests.helpers import write_real_export

M, N = "201604", "201605"
NOW = int(datetime(2016, 7, 1, tzinfo=UTC).timestamp())


def held_by(store: staging.Store, key: str, pid: int, host: str | None = None, expires: float | None = None) -> None:
    store.write_json(key, {"what": "x", "host": host or socket.gethostname(), "pid": pid, "token": "other",
                           "since": "2026-01-01T00:00:00Z", "expires": expires or time.time() + 600,
                           "command": "etl transform --month 201604"})


@pytest.fixture()
def live_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def staged(cfg: Config, tmp_path: Path, month: str = M) -> staging.Store:
    items = [{"CustomerID": {"S": f"C{i}"}, "DateTime": {"S": f"{month[:4]}-{month[4:]}-02T00:00:{i:02d}Z"},
              "OrderID": {"S": f"O{i}"}} for i in range(20)]
    pipeline.run_export(cfg, [month], use_existing=str(write_real_export(tmp_path / f"ext{month}", [items])))
    return staging.open_store(cfg.staging.root, cfg.staging)


def test_a_second_run_of_a_month_is_refused_then_allowed(make_config: Callable[..., Config], tmp_path: Path,
                                                         live_pid: int) -> None:
    cfg = make_config()
    store = staged(cfg, tmp_path)
    held_by(store, staging.lease_key(M, "transform"), live_pid)
    with pytest.raises(lease.LeaseHeld, match=rf"transform 201604 is being run by another process .* pid {live_pid}"
                                              r".* since 2026-01-01T00:00:00Z") as e:
        pipeline.run_transform(cfg, [M])
    assert "--break-lease" in (e.value.hint or "")
    assert not store.exists(staging.failed_key(M, "transform"))  # the month is not failing: another run has it
    [m] = pipeline.run_transform(cfg, [M], break_lease=True)
    assert m["written"] == 20 and not store.exists(staging.lease_key(M, "transform"))  # released at the end


def test_a_lease_whose_holder_is_gone_is_taken_over(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = staged(cfg, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    held_by(store, staging.lease_key(M, "transform"), int(dead.stdout))  # killed on this machine
    [m] = pipeline.run_transform(cfg, [M])
    assert m["written"] == 20
    held_by(store, staging.lease_key(M, "transform"), 1, host="elsewhere", expires=time.time() - 1)  # expired
    [m] = pipeline.run_transform(cfg, [M], force=True)
    assert m["written"] == 20


def test_one_loading_run_per_destination(ddb_local: str, dest_table: Callable[..., str],
                                         make_config: Callable[..., Config], tmp_path: Path, live_pid: int) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 10000\n")
    store = staged(cfg, tmp_path, M)
    staged(cfg, tmp_path, N)
    pipeline.run_transform(cfg, [M, N])
    held_by(store, staging.destination_lease_key(table), live_pid)  # another run loads month M
    with pytest.raises(lease.LeaseHeld, match=f"loading {table} is being run by another process"):
        pipeline.run_load(cfg, [N], now=NOW)
    store.delete(staging.destination_lease_key(table))
    [m] = pipeline.run_load(cfg, [N], now=NOW)
    assert m["written"] == 20


def test_the_lease_is_a_conditional_create_on_s3(moto: str, make_config: Callable[..., Config]) -> None:
    s3_client(moto).create_bucket(Bucket="stage")
    cfg = make_config(endpoint=moto, root="s3://stage/p")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    key = staging.lease_key(M, "load")
    assert store.create_json(key, {"a": 1}) and not store.create_json(key, {"a": 2})
    assert store.read_json(key) == {"a": 1}
    with lease.acquire(store, staging.lease_key(M, "export"), "export 201604", "etl export") as held:
        body = json.loads(store.read(staging.lease_key(M, "export")))
        assert body["pid"] == os.getpid() and body["token"] == held.body["token"]
        with pytest.raises(lease.LeaseHeld):
            lease.acquire(store, staging.lease_key(M, "export"), "export 201604", "etl export")
    assert not store.exists(staging.lease_key(M, "export"))


def test_status_shows_a_running_and_an_interrupted_run(make_config: Callable[..., Config], tmp_path: Path,
                                                       live_pid: int) -> None:
    from etl.status import collect

    cfg = make_config()
    store = staged(cfg, tmp_path)
    held_by(store, staging.lease_key(M, "transform"), live_pid)
    [row] = collect(store, [M])
    cell = row["stages"]["transform"]
    assert cell["state"] == "running" and f"pid {live_pid}" in cell["summary"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    held_by(store, staging.lease_key(M, "transform"), int(dead.stdout))  # killed mid-run: no manifest, no failure
    [row] = collect(store, [M])
    cell = row["stages"]["transform"]
    assert cell["state"] == "interrupted" and "interrupted" in cell["error"] and row["next"] == cell["rerun"]


# --------------------------------------------------------------------------- conditional writes, both stores
# A lease is only as safe as the store's conditional writes: each test below runs on a local directory and on
# moto's S3, and the races run in separate processes, as two runs do.

BUCKET = "leases"
KEY = "_state/month=201604/load.lease"
WHAT, COMMAND = "load 201604", "etl load --month 201604"


def open_spec(spec: tuple[str, str]) -> staging.Store:
    """The store a spec names, opened the way a run opens it (also in a child process)."""
    kind, where = spec
    if kind == "local":
        return staging.LocalStore(where)
    return staging.open_store(f"s3://{BUCKET}/p", AwsSide(aws_region="us-east-1", endpoint_url=where))


@pytest.fixture(params=["local", "s3"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "local":
        return "local", str(tmp_path / "stage")
    url = request.getfixturevalue("moto")
    s3_client(url).create_bucket(Bucket=BUCKET)
    return "s3", url


@pytest.fixture(scope="module")
def moto_one_at_a_time(moto_endpoint: str) -> Iterator[str]:
    """moto's S3 (the same state as `moto_endpoint`) answering one request at a time. moto checks
    `If-None-Match`/`If-Match` and then writes, in a threaded server, without a lock between the two; S3 makes a
    conditional write atomic. Answering one request at a time gives moto S3's atomicity, so a race between two
    processes tests our protocol, not moto's check-then-write window."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class OneConnectionPerRequest(MotoRequestHandler):
        protocol_version = "HTTP/1.0"  # a kept-alive connection would hold a one-at-a-time server for itself

    port = free_port()
    server = make_server("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=False,
                         request_handler=OneConnectionPerRequest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join()


def test_create_if_absent_replace_and_delete_if_match(spec: tuple[str, str]) -> None:
    store = open_spec(spec)
    v1 = store.create_if_absent(KEY, b"one")
    assert v1 and store.create_if_absent(KEY, b"two") is None and store.read(KEY) == b"one"
    assert store.read_versioned(KEY) == (b"one", v1)
    v2 = store.replace_if_match(KEY, b"two", v1)
    assert v2 and v2 != v1 and store.read_versioned(KEY) == (b"two", v2)
    assert store.replace_if_match(KEY, b"three", v1) is None and store.read(KEY) == b"two"  # a stale version
    assert not store.delete_if_match(KEY, v1) and store.read(KEY) == b"two"
    assert [o.key for o in store.list("_state/")] == [KEY]  # no lock or temporary file left beside it
    assert store.delete_if_match(KEY, v2) and not store.exists(KEY)
    assert store.read_versioned(KEY) is None
    assert store.replace_if_match(KEY, b"four", v2) is None and not store.exists(KEY)  # gone: not made again
    assert not store.delete_if_match(KEY, v2)
    v3 = store.create_json_if_absent(KEY, {"a": 1})
    assert v3 and store.read_json_versioned(KEY) == ({"a": 1}, v3)
    v4 = store.replace_json_if_match(KEY, {"a": 2}, v3)
    assert v4 and store.replace_json_if_match(KEY, {"a": 3}, v3) is None and store.read_json(KEY) == {"a": 2}
    assert store.create_json(KEY, {"a": 5}) is False and store.read_json(KEY) == {"a": 2}  # the older API still works


def dead_holder(store: staging.Store) -> None:
    """A lease left by a run on another machine, past its expiry."""
    store.write_json(KEY, {"what": WHAT, "host": "elsewhere", "pid": 1, "token": "dead",
                           "since": "2026-01-01T00:00:00Z", "expires": time.time() - 1, "command": COMMAND})


def racer(spec: tuple[str, str], rounds: int, go: Any, done: Any, results: Any) -> None:
    """One run per round trying to take over the dead lease at the same moment as another; the winner holds it
    until the test has looked, then releases it."""
    store = open_spec(spec)
    for _ in range(rounds):
        go.wait(60)
        try:
            held: lease.Lease | None = lease.acquire(store, KEY, WHAT, COMMAND)
        except lease.LeaseHeld:
            held = None
        except Exception as exc:  # reported to the test, which fails on it
            results.put((os.getpid(), f"error: {exc!r}"))
            return
        results.put((os.getpid(), held.body["token"] if held else None))
        done.wait(60)
        if held:
            held.release()
        done.wait(60)


def test_two_processes_racing_for_a_dead_lease_one_wins(spec: tuple[str, str], request: pytest.FixtureRequest
                                                         ) -> None:
    if spec[0] == "s3":
        spec = ("s3", request.getfixturevalue("moto_one_at_a_time"))
    store = open_spec(spec)
    rounds = 20
    ctx = multiprocessing.get_context("spawn")
    go, done, results = ctx.Barrier(3), ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=racer, args=(spec, rounds, go, done, results)) for _ in range(2)]
    for p in procs:
        p.start()
    winners: dict[int, int] = {}
    try:
        for _ in range(rounds):
            dead_holder(store)
            go.wait(60)
            answers = [results.get(timeout=60) for _ in procs]
            assert not [a for _, a in answers if a and a.startswith("error")], answers
            tokens = [(pid, token) for pid, token in answers if token]
            assert len(tokens) == 1, answers  # exactly one run took the lease over
            assert store.read_json(KEY)["token"] == tokens[0][1]  # and the lease is the winner's
            winners[tokens[0][0]] = winners.get(tokens[0][0], 0) + 1
            done.wait(60)
            done.wait(60)
            assert not store.exists(KEY)  # the winner released it
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert sum(winners.values()) == rounds and all(p.exitcode == 0 for p in procs)


def holder(spec: tuple[str, str], ttl: float, out: Any) -> None:
    """A run holding a lease until it learns the lease was lost; then it checks, releases and reports."""
    store = open_spec(spec)
    told = threading.Event()
    whys: list[str] = []

    def on_lost(why: str) -> None:
        whys.append(why)
        told.set()

    held = lease.acquire(store, KEY, WHAT, COMMAND, ttl=ttl, on_lost=on_lost)
    out.put(held.body["token"])
    told.wait(120)
    try:
        held.check()
        checked = ""
    except lease.LeaseLost as exc:
        checked = exc.message
    held.release()
    out.put({"lost": held.lost.is_set(), "whys": whys, "lost_why": held.lost_why, "checked": checked})


def stop_outside_a_lock(pid: int) -> None:
    """SIGSTOP the process at a moment it holds no file lock (/proc/locks): a local store's conditional write
    holds its folder's lock for an instant, and a process stopped inside it would hold up every other one."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":  # stopped by now
            time.sleep(0.01)
        if not any(line.split()[4] == str(pid) for line in Path("/proc/locks").read_text().splitlines()):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} always held a lock")


def test_a_renewal_after_a_take_over_stops_the_old_run(spec: tuple[str, str]) -> None:
    """The old run is paused (SIGSTOP) past its lease's expiry, as a stalled run would be; another run takes the
    lease over; the old run, continued, finds its renewal refused: it is stopped, told who took the lease, and
    its release leaves the new holder's lease alone."""
    store = open_spec(spec)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    old = ctx.Process(target=holder, args=(spec, 3.0, out))
    old.start()
    try:
        old_token = out.get(timeout=60)
        assert old.pid is not None
        stop_outside_a_lock(old.pid)
        for _ in range(600):  # its lease expires: it cannot renew while stopped
            if lease.gone(store.read_json(KEY)):
                break
            time.sleep(0.2)
        taker = lease.acquire(store, KEY, WHAT, "etl run --months 201604-201605")
        assert taker.body["token"] != old_token
        os.kill(old.pid, signal.SIGCONT)
        report = out.get(timeout=60)
        old.join(60)
        assert report["lost"] and report["whys"] == [report["lost_why"]] == [report["checked"]]
        why = report["lost_why"]
        assert why == (f"{WHAT}: the lease was taken over by another run ({socket.gethostname()} pid {os.getpid()}, "
                       f"`etl run --months 201604-201605`, since {taker.body['since']})")
        assert store.read_json(KEY)["token"] == taker.body["token"]  # the old run neither renewed nor released it
        assert not taker.lost.is_set()
        taker.check()
        taker.release()
        assert not store.exists(KEY)
    finally:
        if old.is_alive():
            os.kill(old.pid or 0, signal.SIGCONT)
            old.kill()


def test_a_release_after_a_take_over_leaves_the_new_holders_lease(spec: tuple[str, str]) -> None:
    store = open_spec(spec)
    old = lease.acquire(store, KEY, WHAT, COMMAND, ttl=3600)  # renews every 20 minutes: not during this test
    stale = {**store.read_json(KEY), "expires": time.time() - 1}
    store.write_json(KEY, stale)  # its renewals stopped (a network cut): it expired
    new = lease.acquire(store, KEY, WHAT, "etl load --month 201604 --yes")
    old.release()
    assert store.read_json(KEY)["token"] == new.body["token"]
    new.release()
    assert not store.exists(KEY)


def test_a_lease_removed_by_hand_is_lost(spec: tuple[str, str]) -> None:
    store = open_spec(spec)
    whys: list[str] = []
    held = lease.acquire(store, KEY, WHAT, COMMAND, ttl=0.6, on_lost=whys.append)
    held.check()
    store.delete(KEY)  # what `--break-lease` does
    assert held.lost.wait(60)
    with pytest.raises(lease.LeaseLost, match=r"^load 201604: the lease was removed") as e:
        held.check()
    assert e.value.message == held.lost_why and whys == [held.lost_why]
    held.release()
    assert not store.exists(KEY)


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(moto: str) -> None:
    """S3 takes a renewal but its answer never comes: the SDK sends it again, refused since the first one
    changed the ETag. The lease holds this run's token, so it is still this run's, not lost."""
    s3_client(moto).create_bucket(Bucket=BUCKET)
    lease_puts = iter(range(2))

    def first_renewal(r: Request) -> bool:
        return r.op == "PutObject" and r.path.endswith(".lease") and next(lease_puts, None) == 1

    proxy = FaultProxy(moto, {"reset": 1.0}, scope=first_renewal)
    try:
        held = lease.acquire(open_spec(("s3", proxy.url)), KEY, WHAT, COMMAND, ttl=0.6)
        direct = open_spec(("s3", moto))
        for _ in range(600):  # the fault, then the SDK's retry of the renewal (it arrives a moment later)
            if proxy.faults and proxy.sdk_retries:
                break
            time.sleep(0.1)
        assert proxy.faults == {"reset": 1} and proxy.sdk_retries >= 1
        after = time.time()
        for _ in range(600):  # a renewal sent after the lost answer went through
            if direct.read_json(KEY)["expires"] > after + 0.6:
                break
            time.sleep(0.1)
        assert direct.read_json(KEY)["expires"] > after + 0.6 and not held.lost.is_set()
        held.check()
        held.release()
        assert not direct.exists(KEY)
    finally:
        proxy.close()


def test_a_lease_read_whose_answer_was_cut_is_read_again(moto: str) -> None:
    """A GetObject answer cut off halfway, a lease's body or a 404's (which botocore does not retry)."""
    s3_client(moto).create_bucket(Bucket=BUCKET)
    cuts = iter(range(2))
    proxy = FaultProxy(moto, {"reset_mid": 1.0}, scope=lambda r: r.op == "GetObject" and next(cuts, None) is not None)
    try:
        store = open_spec(("s3", proxy.url))
        assert store.read_versioned(KEY) is None  # missing, though its 404 was cut
        version = store.create_if_absent(KEY, b'{"token": "t"}')
        assert store.read_versioned(KEY) == (b'{"token": "t"}', version)
        assert proxy.faults == {"reset_mid": 2}
    finally:
        proxy.close()
