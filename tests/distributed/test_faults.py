"""Faults on Ray: a worker process killed mid-load is retried by Ray and verify passes; a driver killed
mid-load resumes from the checkpoints; what a task is given holds no credentials."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from etl import staging
from etl.config import Config
from etl.errors import EtlError
from etl.pipeline import run_export, run_load, run_transform, run_verify
from etl.ray_engine import check_no_credentials
from tests.distributed.cluster import processes
from tests.faultproxy import FaultProxy
from tests.helpers import write_real_export

M = "201604"
RAY = '[engine]\nkind = "ray"\n[transform]\nttl_seconds = 3153600000\n'  # a century: nothing has expired


def orders(parts: int, per_part: int) -> list[list[dict[str, Any]]]:
    return [[{"CustomerID": {"S": f"K{i % 500:04d}"},
              "DateTime": {"S": f"2016-04-{1 + i // 3600 % 28:02d}T08:{i // 60 % 60:02d}:{i % 60:02d}Z"},
              "OrderID": {"S": f"O{i}"}} for i in range(f * per_part, (f + 1) * per_part)] for f in range(parts)]


def test_a_worker_killed_mid_load_is_run_again_and_verify_passes(
        ray_cluster: Any, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    table = dest_table()
    proxy = FaultProxy(ddb_local)  # counts what is sent
    try:
        cfg = make_config(dest_endpoint=proxy.url, dest_table=table, root=str(tmp_path / "stage"),
                          extra=RAY + "[load]\nmax_wcu = 1000\nmax_rcu = 100000\nconcurrency = 2\n")
        run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", orders(2, 1500))))
        run_transform(cfg, [M])
        out: dict[str, Any] = {}
        loading = threading.Thread(target=lambda: out.update(m=run_load(cfg, [M])[0]))
        loading.start()
        deadline = time.monotonic() + 60
        while not (pids := processes("ray::etl.load")) or sum(s["items"] for s in proxy.seen) < 400:
            assert time.monotonic() < deadline and loading.is_alive(), "the load never got going"
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # a load task's worker process, mid-part
        loading.join(120)
        m = out["m"]
        assert m["written"] == 3000 and m["rows"] == 3000
        assert sum(s["items"] for s in proxy.seen) > 3000  # the killed part was sent again
    finally:
        proxy.close()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, root=str(tmp_path / "stage"),
                      extra=RAY + "[load]\nmax_wcu = 100000\nmax_rcu = 100000\n")
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["checked"] == 3000


def test_a_killed_driver_resumes_from_the_checkpoints(ray_cluster: Any, ddb_local: str,
                                                      dest_table: Callable[..., str],
                                                      make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, root=str(tmp_path / "stage"),
                      extra=RAY + "[load]\nmax_wcu = 600\nmax_rcu = 100000\n")
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", orders(6, 300))))
    run_transform(cfg, [M])
    store = staging.open_store(cfg.staging.root, cfg.staging)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]),
           "ETL_ENGINE_ADDRESS": ray_cluster.get_runtime_context().gcs_address}  # a driver of this cluster
    cmd = [sys.executable, "-m", "etl", "--config", cfg.path, "--progress", "quiet", "load", "--month", M, "--yes"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while not store.list(staging.state_key(M, "load/")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(store.list(staging.state_key(M, "load/")))
    assert 1 <= done < 6 and staging.read_manifest(store, M, "load") is None
    r = subprocess.run(cmd, env={**env, "ETL_LOAD_MAX_WCU": "100000"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = staging.read_manifest(store, M, "load")
    assert m is not None and m["written"] == 1800
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["checked"] == 1800


def test_what_a_task_is_given_holds_no_credentials(make_config: Callable[..., Config],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    cfg = make_config(endpoint="http://127.0.0.1:1")
    check_no_credentials(cfg, ["tasks"])  # the config names where to go, never with what key
    assert secret.encode() not in pickle.dumps(cfg)
    with pytest.raises(EtlError, match="refusing to send AWS credentials"):
        check_no_credentials(cfg, [{"leaked": secret}])
