"""Stopping and resuming a load, and which table a load is of: SIGINT/SIGTERM on a real `etl load` process,
a destination dropped and created again or changed in the config, the status of a killed export."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl import staging
from etl.config import Config
from etl.errors import StageNotReady
from etl.pipeline import run_export, run_load, run_transform, run_verify
from etl.progress import Reporter
from etl.status import collect
from tests.conftest import ddb_client
from tests.helpers import write_real_export
from tests.test_load import FAST, NOW, M, orders, staged, table_items

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}


def last_month() -> str:
    now = datetime.now(UTC)
    return f"{now.year - (now.month == 1)}{(now.month - 2) % 12 + 1:02d}"  # its rows are not expired


def stage_last_month(cfg: Config, tmp_path: Path, parts: int = 4, rows: int = 400) -> str:
    month = last_month()
    files = [[{"CustomerID": {"S": f"K{i % 500:04d}"}, "DateTime": {"S": f"{month[:4]}-{month[4:]}-10T08:"
               f"{i // 60 % 60:02d}:{i % 60:02d}Z"}, "OrderID": {"S": f"O{i}"}}
              for i in range(f * rows, (f + 1) * rows)] for f in range(parts)]
    run_export(cfg, [month], use_existing=str(write_real_export(tmp_path / "ext", files)))
    run_transform(cfg, [month])
    return month


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_load_stops_with_130_and_one_line_naming_the_resume(
        sig: signal.Signals, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 150\nmax_rcu = 10000\n")
    month = stage_last_month(cfg, tmp_path)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    args = ["--config", cfg.path, "--progress", "quiet", "load", "--month", month, "--yes"]
    proc = subprocess.Popen([sys.executable, "-m", "etl", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not store.list(staging.progress_prefix(month)) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)  # a guard against a hang, not a timing assertion
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip()]
    plan = lines[:-1]  # the plan is said under --progress quiet too (it is not progress); then one line
    assert plan and plan[0].startswith("destination ") and not any("interrupted" in x for x in plan), err
    assert lines[-1] == f"interrupted: what was acknowledged is kept; resume with `etl {' '.join(args)}`", err
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err + out
    assert staging.read_manifest(store, month, "load") is None
    marks = [store.read_json(o.key)["low_water_mark"] for o in store.list(staging.progress_prefix(month))]
    assert marks and all(m > 0 for m in marks)  # progress kept below the part grain
    [row] = collect(store, [month])
    assert row["stages"]["load"]["state"] == "interrupted" and row["stages"]["load"]["error"].startswith("interrupted")
    assert row["next"] == f"etl --config {cfg.path} load --month {month}"  # the config it came from
    before = len(table_items(ddb_local, table))
    r = subprocess.run([sys.executable, "-m", "etl", *args], env={**ENV, "ETL_LOAD_MAX_WCU": "100000"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = staging.read_manifest(store, month, "load")
    assert m is not None and m["written"] == 1600 and m["totals"]["runs"] == 2
    assert f"load {month}: 1,600 written" in r.stdout and "; 2 runs: " in r.stdout
    assert 0 < m["runs"][0]["acknowledged"] <= before  # what the interrupted run saw acknowledged is in the table
    assert m["totals"]["acknowledged"] == m["runs"][0]["acknowledged"] + m["runs"][1]["acknowledged"] >= 1600
    assert len(table_items(ddb_local, table)) == 1600


def test_a_table_dropped_and_created_again_is_not_loaded_until_loaded_again(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST)
    staged(cfg, tmp_path, [orders(100), orders(100, 100)])
    [m] = run_load(cfg, [M], now=NOW)
    ddb = ddb_client(ddb_local)
    first = staging.destination_of(ddb.describe_table(TableName=table)["Table"])
    assert m["written"] == 200 and (m["table_arn"], m["table_created"]) == (first.arn, first.created)
    ddb.delete_table(TableName=table)
    time.sleep(0.01)  # DynamoDB keeps creation times to the millisecond
    dest_table(name=table)  # the same name, another table: empty
    again = staging.destination_of(ddb.describe_table(TableName=table)["Table"])
    assert again.created != first.created
    store = staging.open_store(cfg.staging.root, cfg.staging)
    with pytest.raises(StageNotReady, match=f"month {M} is not loaded into {table}"):
        run_verify(cfg, [M])
    [row] = collect(store, [M], destination=again)
    assert row["stages"]["load"]["state"] == "stale" and "not into" in row["stages"]["load"]["summary"]
    assert row["next"] == f"etl load --month {M}"
    said = io.StringIO()
    [m2] = run_load(cfg, [M], now=NOW, reporter=Reporter("json", stream=said))
    assert "the month is not loaded there; loading it" in said.getvalue()
    assert m2["written"] == 200 and not m2.get("skipped") and m2["table_created"] == again.created
    assert len(table_items(ddb_local, table)) == 200
    [v] = run_verify(cfg, [M])
    assert v["ok"] and v["checked"] == 200
    [row] = collect(store, [M], destination=again)
    assert row["stages"]["load"]["state"] == "done" and row["next"] is None
    other = dest_table()  # the config pointed at another table: the month is loaded there too
    cfg2 = make_config(dest_endpoint=ddb_local, dest_table=other, extra=FAST)
    [m3] = run_load(cfg2, [M], now=NOW)
    assert m3["written"] == 200 and m3["table"] == other and len(table_items(ddb_local, other)) == 200


def test_a_part_checkpoint_for_another_table_is_said_and_loaded_again(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    """A load interrupted after some parts, then pointed at another table: the finished parts' checkpoints
    say nothing of the new table."""
    first, second = dest_table(), dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=first, extra=FAST)
    staged(cfg, tmp_path, [orders(50, i * 50) for i in range(3)])
    run_load(cfg, [M], now=NOW)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    store.delete(staging.manifest_key(M, "load"))  # as if the run had stopped before its commit
    cfg2 = make_config(dest_endpoint=ddb_local, dest_table=second, extra=FAST)
    said = io.StringIO()
    [m] = run_load(cfg2, [M], now=NOW, reporter=Reporter("json", stream=said))
    assert f"3 part checkpoint(s) are for {first} (created " in said.getvalue()
    assert m["written"] == 150 and len(table_items(ddb_local, second)) == 150


def test_status_shows_a_killed_export(moto: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    """kill -9 during an export: status shows the attempt as interrupted, with the command that reruns it."""
    from etl.local import seed

    month = "201604"
    seed(make_config(moto, root="s3://seed-bucket/x"), [month], 400, 3)
    # a slow scan (2 RCU/s), so the kill lands mid-export; the config file is this one (written last)
    cfg = make_config(moto, extra='mode = "scan"\nscan_max_rcu = 2\nscan_items_per_file = 50\n')
    store = staging.open_store(cfg.staging.root, cfg.staging)
    proc = subprocess.Popen([sys.executable, "-m", "etl", "--config", cfg.path, "--progress", "quiet", "export",
                             "--month", month], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not store.exists(staging.lease_key(month, "export")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [row] = collect(store)
    cell = row["stages"]["export"]
    assert cell["state"] == "interrupted" and cell["error"].startswith("interrupted: the run"), cell
    assert row["next"] == cell["rerun"] == f"etl --config {cfg.path} export --month {month} --mode scan"
    r = subprocess.run([sys.executable, "-m", "etl", "--config", cfg.path, "status"], env=ENV, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "nothing staged" not in r.stdout and "interrupted" in r.stdout, r.stdout + r.stderr


def test_the_command_printed_after_ctrl_c_during_load_force_resumes_instead_of_starting_over(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    """`etl load --force` interrupted prints the command without --force: pasted, it goes on from the marks
    the forced run saved, rewriting at most what was in flight, not every item again."""
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 150\nmax_rcu = 10000\n")
    month = stage_last_month(cfg, tmp_path)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    fast = {**ENV, "ETL_LOAD_MAX_WCU": "100000"}
    base = ["--config", cfg.path, "--progress", "quiet", "load", "--month", month, "--yes"]
    assert subprocess.run([sys.executable, "-m", "etl", *base], env=fast, capture_output=True, text=True,
                          timeout=120).returncode == 0  # loaded once: --force writes every item again
    proc = subprocess.Popen([sys.executable, "-m", "etl", *base, "--force"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not store.list(staging.progress_prefix(month)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # a few marks saved
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    printed = err.strip().splitlines()[-1].split("resume with `", 1)[1].rstrip("`")
    assert "--force" not in printed and printed == f"etl {' '.join(base)}"
    r = subprocess.run([sys.executable, "-m", "etl", *printed.split()[1:]], env=fast,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = staging.read_manifest(store, month, "load")
    assert m is not None and m["written"] == 1600 and m["totals"]["runs"] == 2
    forced, resumed = m["runs"]
    assert forced["acknowledged"] > 0 and resumed["acknowledged"] < 1600  # went on, did not start over
    assert m["totals"]["rewritten"] < forced["acknowledged"]  # at most the window in flight, not the whole run
