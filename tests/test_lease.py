"""Leases: a second run of one month and stage, or a second loading run of one destination, is refused with
who holds it since when; a lease whose holder is gone is taken over; --break-lease removes one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl import lease, pipeline, staging
from etl.config import Config
from tests.conftest import s3_client
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
