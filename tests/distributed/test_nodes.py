"""Losing a node of a two-node Ray cluster mid-load (`etl run --engine ray`, a driver on the head): the run
ends exact. The budget and hub actors live on the driver's node, so the node that can be lost while the run
goes on holds only tasks (Ray runs them again); an actor whose process dies is restarted there with its
state. What the user sees of it is one line, not Ray's logs; progress never counts a task twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from etl import staging
from etl.config import Config
from etl.pipeline import run_export
from tests.conftest import ddb_client
from tests.distributed.cluster import TwoNodes, parent, processes
from tests.faultproxy import FaultProxy
from tests.helpers import write_real_export

M = "201604"
PARTS, PER_PART = 6, 1000
SETTINGS = ("[transform]\nttl_seconds = 3153600000\n"  # a century: nothing has expired
            "[load]\nmax_wcu = 700\nmax_rcu = 100000\nconcurrency = 2\n")
ACTORS = ("BudgetActor", "Hub")


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodes]:
    nodes = TwoNodes().start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def two_nodes(cluster: TwoNodes) -> TwoNodes:
    """The module's cluster with its head and worker alive, and nothing else, whatever the test before did."""
    cluster.heal()
    return cluster


def orders() -> list[list[dict[str, Any]]]:
    return [[{"CustomerID": {"S": f"K{i % 700:04d}"},
              "DateTime": {"S": f"2016-04-{1 + i // 3600 % 28:02d}T08:{i // 60 % 60:02d}:{i % 60:02d}Z"},
              "OrderID": {"S": f"O{i}"}} for i in range(f * PER_PART, (f + 1) * PER_PART)] for f in range(PARTS)]


def etl_run(cfg: Config, cluster: TwoNodes, **env: str) -> subprocess.Popen[str]:
    """`etl run --engine ray`: a driver process of the cluster (Ray attaches it to the head)."""
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "ETL_ENGINE_ADDRESS": cluster.address,
               **env}
    cmd = [sys.executable, "-m", "etl", "--config", cfg.path, "--progress", "json", "run", "--month", M,
           "--engine", "ray", "--yes"]
    return subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def when_loading(proxy: FaultProxy, proc: subprocess.Popen[str], items: int) -> None:
    """Back once the destination has been sent `items` items."""
    deadline = time.monotonic() + 120
    while sum(s["items"] for s in proxy.seen) < items:
        assert time.monotonic() < deadline and proc.poll() is None, "the load never got going"
        time.sleep(0.05)


def staged(make_config: Callable[..., Config], dest_endpoint: str, table: str, tmp_path: Path) -> Config:
    cfg = make_config(dest_endpoint=dest_endpoint, dest_table=table, root=str(tmp_path / "stage"), extra=SETTINGS)
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", orders())))
    return cfg


def assert_exact(cfg: Config, ddb_local: str, table: str, proc: subprocess.Popen[str]) -> list[str]:
    """The run ended 0 with every staged row in the table and verify passing; returns its stderr lines."""
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    store = staging.open_store(cfg.staging.root, cfg.staging)
    load, verify = staging.read_manifest(store, M, "load"), staging.read_manifest(store, M, "verify")
    assert load is not None and load["written"] == load["rows"] == PARTS * PER_PART
    assert verify is not None and verify["ok"] and verify["checked"] == PARTS * PER_PART
    count = sum(p["Count"] for p in ddb_client(ddb_local).get_paginator("scan").paginate(TableName=table))
    assert count == PARTS * PER_PART
    lines = err.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    for e in events:  # progress never past the total: a task run again replaces its count
        if e.get("task") == f"load {M}" and e["event"] in ("progress", "finish"):
            assert e["done"] <= e["total"], e
            assert all(v >= 0 for k, v in e.items() if k.endswith("_per_s") and isinstance(v, int | float)), e
    [finish] = [e for e in events if e.get("task") == f"load {M}" and e["event"] == "finish"]
    assert finish["done"] == finish["total"] == PARTS * PER_PART
    # only JSON lines; but for what Ray's C++ says before any setting applies, here only: this namespace has
    # no route out, so the driver's search for its address falls back to its host name
    assert not [line for line in lines if not line.startswith("{") and "Failed to determine local IP" not in line], \
        "only JSON lines: " + err[-3000:]
    return [line for line in lines if line.startswith("{")]


def warnings(lines: list[str]) -> list[str]:
    return [e["message"] for e in map(json.loads, lines) if e["event"] == "warning"]


def test_losing_the_worker_node_mid_load_ends_exact_with_one_line(
        two_nodes: TwoNodes, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    table = dest_table()
    proxy = FaultProxy(ddb_local)  # counts what is sent
    try:
        cfg = staged(make_config, proxy.url, table, tmp_path)
        proc = etl_run(cfg, two_nodes)
        when_loading(proxy, proc, 1200)
        worker_tasks = [p for p in processes("ray::etl.load") if parent(p) == two_nodes.raylet(two_nodes.worker)]
        assert worker_tasks, "no load task ran on the worker node"
        two_nodes.kill(two_nodes.worker)
        lines = assert_exact(cfg, ddb_local, table, proc)
        assert sum(s["items"] for s in proxy.seen) > PARTS * PER_PART  # the lost node's parts were sent again
    finally:
        proxy.close()
    lost = [w for w in warnings(lines) if "lost Ray node" in w]
    assert len(lost) == 1 and f"({two_nodes.worker.id[:8]})" in lost[0] and "load task(s) run again" in lost[0], lines
    # the actors were on the driver's node, the head: losing the other node never touched them
    actors = [a for a in two_nodes.actors(*ACTORS) if a["OwnerAddress"]["NodeID"] == two_nodes.head.id]
    assert {a["ActorClassName"] for a in actors} == set(ACTORS)
    assert all(a["Address"]["NodeID"] == two_nodes.head.id and a["NumRestarts"] == 0 for a in actors), actors


def test_the_actors_processes_killed_mid_load_restart_and_the_run_ends_exact(
        two_nodes: TwoNodes, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    table = dest_table()
    proxy = FaultProxy(ddb_local)
    try:
        cfg = staged(make_config, proxy.url, table, tmp_path)
        before = {a["ActorID"] for a in two_nodes.actors(*ACTORS)}
        proc = etl_run(cfg, two_nodes)
        when_loading(proxy, proc, 1200)
        head = two_nodes.raylet(two_nodes.head)
        killed = [p for p in processes("ray::") if parent(p) == head
                  and Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].split(b".")[0] in
                  (b"ray::BudgetActor", b"ray::Hub")]
        assert len(killed) == 2, killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        assert_exact(cfg, ddb_local, table, proc)
    finally:
        proxy.close()
    actors = [a for a in two_nodes.actors(*ACTORS) if a["ActorID"] not in before]
    assert all(a["Address"]["NodeID"] == two_nodes.head.id for a in actors)  # restarted where they were
    # the hub and the load's budget were made again (the verify's budget, made later, was not killed)
    restarts = sorted((a["ActorClassName"], a["NumRestarts"]) for a in actors)
    assert restarts in ([("BudgetActor", 0), ("BudgetActor", 1), ("Hub", 1)], [("BudgetActor", 1), ("Hub", 1)]), \
        restarts


def test_a_local_staging_root_is_refused_when_a_node_is_another_machine(
        two_nodes: TwoNodes, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    cfg = staged(make_config, ddb_local, dest_table(), tmp_path)
    two_nodes.start_elsewhere("elsewhere")
    try:
        proc = etl_run(cfg, two_nodes)
        _, err = proc.communicate(timeout=240)
    finally:
        two_nodes.stop_elsewhere()
    assert proc.returncode != 0
    refused = [line for line in err.splitlines() if "cannot read it" in line]
    assert refused and "nodes on elsewhere" in refused[0] and str(tmp_path / "stage") in refused[0], err
    assert "Traceback" not in err
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, M, "transform") is None  # refused before any task ran
