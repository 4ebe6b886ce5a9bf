"""Runs the load benchmark: peers against DynamoDB Local; against the latency sink on 127.0.0.1 (every
request answered after a fixed round trip, items counted per second), the budget attained at real-world
round trips, boto3's batch_writer beside it, the client's ceiling (no delay) and the rate fidelity; and
formats the BENCHMARKS.md section."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import DATA, ROOT, children_cpu_s, machine_busy_s, run_contender

RTTS_MS = (1, 10, 30, 100)
BUDGETS = (10_000, 40_000, 100_000)
THREADS = (1, 16)
RUN_SECONDS = 8.0  # each latency run: the load's deadline (the sink counts what arrived)
# the sink takes any signature: fixed keys, so no one's own credentials (or profile) sign a benchmark's requests
BENCH_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def prepare(rows: int) -> tuple[Path, str]:
    """A staging root with `rows` transformed rows of last month (not expired), cached."""
    from etl.config import load_config
    from etl.pipeline import run_export, run_transform
    from tests.helpers import write_real_export

    month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y%m")
    stage = DATA / f"load-{rows}" / "stage"
    cfg_path = DATA / f"load-{rows}" / "prep.toml"
    if (stage / "_state" / f"month={month}" / "transform.json").exists():
        return stage, month
    stage.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{stage}"\n')
    cfg = load_config(str(cfg_path), env={})
    base = datetime.strptime(month + "01", "%Y%m%d").replace(tzinfo=UTC)
    files = [_Rows(base, range(i, rows, 4)) for i in range(4)]
    folder = write_real_export(DATA / f"load-{rows}" / "export", files)  # type: ignore[arg-type]
    run_export(cfg, [month], use_existing=str(folder), force=True)
    run_transform(cfg, [month], force=True)
    return stage, month


class _Rows:
    """One export file's items, made as they are read (a million at once would take a gigabyte)."""

    def __init__(self, base: datetime, numbers: range) -> None:
        self.base, self.numbers = base, numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in self.numbers:
            yield {"CustomerID": {"S": f"C{i % 25000:07d}"},
                   "DateTime": {"S": (self.base + timedelta(seconds=i)).isoformat(timespec="milliseconds")},
                   "OrderID": {"S": f"O{i:012d}"}}


def _config(path: Path, stage: Path, endpoint: str, table: str, max_wcu: float, extra: str = "") -> str:
    """Default load settings (the in-flight window sizes itself) unless `extra` says otherwise."""
    path.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{stage}"\n'
                    f'[destination]\ntable_template="{table}"\nendpoint_url="{endpoint}"\nproduction=false\n'
                    f"[load]\nmax_wcu = {max_wcu}\n{extra}")
    return str(path)


def _table(endpoint: str) -> str:
    import boto3

    name = f"bench_{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "CreationDateTime", "AttributeType": "N"}])
    return name


def _sink(table: str, seconds: float, delay_ms: float = 0) -> tuple[subprocess.Popen[str], str]:
    from tests.conftest import free_port

    port = free_port()
    ready = DATA / f"sink-{port}.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.sink",
                             json.dumps({"port": port, "table": table, "seconds": seconds, "ready": str(ready),
                                         "delay_ms": delay_ms})],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    while not ready.exists():
        time.sleep(0.05)
    ready.unlink()
    return proc, f"http://127.0.0.1:{port}"


def _sink_counts(proc: subprocess.Popen[str]) -> list[int]:
    """Items per wall-clock second in which some write arrived, the first and last (partial) seconds
    included."""
    out, _ = proc.communicate(timeout=600)
    return [c for _, c in json.loads(out.strip().splitlines()[-1])["counts"]]


def _through_sink(name: str, args: dict[str, Any], delay_ms: float, work: Path, stage: Path,
                  budget: float, extra: str = "") -> tuple[dict[str, Any], list[int]]:
    proc, url = _sink("sinktable", 300, delay_ms)  # it stops 2 s after the last write
    try:
        cfg = _config(work / f"{name}.toml", stage, url, "sinktable", budget, extra)
        r = run_contender("bench.load", name, {**args, "endpoint": url, "table": "sinktable", "config": cfg},
                          repeat=1)
    except BaseException:
        proc.kill()
        raise
    return r, _sink_counts(proc)


def _command_through_sink(name: str, stage: Path, month: str, delay_ms: float, work: Path, budget: float,
                          extra: str = "") -> tuple[float, list[int]]:
    """`etl load` run as a user runs it, a command of its own against the latency sink: its wall time from
    the command's start to its exit (interpreter start-up, DescribeTable, planning and opening the Parquet
    included) and the items the sink counted per second."""
    from etl.config import load_config
    from etl.load.stage import reset_checkpoints

    proc, url = _sink("sinktable", 300, delay_ms)  # it stops 2 s after the last write
    try:
        cfg = _config(work / f"{name}.toml", stage, url, "sinktable", budget, extra)
        reset_checkpoints(load_config(cfg, env={}), [month])
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "etl", "--config", cfg, "load", "--month", month, "--yes"],
                           capture_output=True, text=True, cwd=ROOT, env=_command_env())
        wall = time.perf_counter() - t0
    except BaseException:
        proc.kill()
        raise
    if r.returncode != 0 and "deadline" not in r.stderr + r.stdout:
        proc.kill()
        raise RuntimeError(f"etl load failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, _sink_counts(proc)


def _command_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    return {**env, **BENCH_ENV}


def steady(counts: list[int]) -> float:
    """The steady-state rate: the average of the whole seconds, the first and last (partial) ones left out,
    over the seconds in which some write arrived (an idle second has no count)."""
    whole = counts[1:-1]
    return statistics.mean(whole) if whole else 0.0


def whole_run(counts: list[int], wall: float) -> float:
    """The whole run's rate: every item the sink counted over the command's wall time, idle time included."""
    return sum(counts) / wall if wall > 0 else 0.0


Cell = dict[tuple[int, int], float]


def latency_matrix(stage: Path, month: str, work: Path, rtts: tuple[int, ...], budgets: tuple[int, ...],
                   seconds: float) -> tuple[Cell, Cell, Cell, Cell]:
    """`etl load` with default settings, per round trip and budget: the steady share of the budget, the whole
    run's share, the highest second as a share, and the command's wall time."""
    share, whole, peak, walls = {}, {}, {}, {}
    for rtt in rtts:
        for budget in budgets:
            wall, counts = _command_through_sink("ours", stage, month, rtt, work, budget,
                                                 f"deadline_seconds = {seconds}\n")
            share[rtt, budget] = steady(counts) / budget
            whole[rtt, budget] = whole_run(counts, wall) / budget
            peak[rtt, budget] = max(counts[:-1], default=0) / budget
            walls[rtt, budget] = wall
            print(f"ours rtt={rtt}ms budget={budget}: steady {share[rtt, budget]:.1%}, whole run "
                  f"{whole[rtt, budget]:.1%} over {wall:.1f} s (peak {peak[rtt, budget]:.1%}) {counts}",
                  file=sys.stderr)
    return share, whole, peak, walls


def boto_matrix(stage: Path, month: str, work: Path, rtts: tuple[int, ...], seconds: float) -> dict[tuple[int, int],
                                                                                                     float]:
    """boto3's batch_writer on 1 and 16 threads: items/s at the sink (steady seconds)."""
    rate = {}
    for rtt in rtts:
        for threads in THREADS:
            _, counts = _through_sink("batch_writer_threads", {"stage": str(stage), "threads": threads,
                                                               "seconds": seconds}, rtt, work, stage, 1)
            rate[rtt, threads] = steady(counts)
            print(f"batch_writer rtt={rtt}ms threads={threads}: {rate[rtt, threads]:,.0f}/s {counts}",
                  file=sys.stderr)
    return rate


def busy_note(others: float) -> str:
    """What the other processes' share of the cores means for the figures beside it."""
    if others < 0.1:
        return " (a quiet machine)"
    return (": the machine is shared, and client, sink and those processes took turns on its cores, so these "
            "figures are lower than a quiet machine's and move from run to run; they measure the machine as much "
            "as the loader")


def run(quick: bool) -> str:
    from tests.conftest import start_ddb_local

    n = 10_000 if quick else 100_000
    stage, month = prepare(n)
    work = DATA / "load-work"
    work.mkdir(parents=True, exist_ok=True)
    ddbl, endpoint = start_ddb_local()
    results: dict[str, dict[str, Any]] = {}
    try:
        warm_stage, _ = prepare(10_000)  # DynamoDB Local's JIT warms up on someone: on no contender
        table = _table(endpoint)
        run_contender("bench.load", "batch_writer", {"stage": str(warm_stage), "endpoint": endpoint, "table": table},
                      repeat=1)
        for name in ("ours", "batch_writer", "put_df"):
            table = _table(endpoint)
            args = {"stage": str(stage), "month": month, "endpoint": endpoint, "table": table,
                    "config": _config(work / f"{name}.toml", stage, endpoint, table, 1_000_000)}
            results[name] = run_contender("bench.load", name, args, repeat=1)
    finally:
        ddbl.terminate()
        ddbl.wait(10)
    # the client's ceiling: the sink answers at once
    ceil_n = 20_000 if quick else 400_000
    ceil_stage, ceil_month = prepare(ceil_n)
    ceiling = {name: _through_sink(name, {"stage": str(ceil_stage), "month": ceil_month}, 0, work, ceil_stage,
                                   10_000_000)[0] for name in ("ours", "batch_writer")}
    big = 20_000 if quick else 1_000_000
    big_stage, big_month = prepare(big)
    # real-world round trips
    rtts, budgets, seconds = ((10,), (10_000,), 4.0) if quick else (RTTS_MS, BUDGETS, RUN_SECONDS)
    busy0, cpu0, t0 = machine_busy_s(), children_cpu_s(), time.perf_counter()
    share, whole, peak, walls = latency_matrix(big_stage, big_month, work, rtts, budgets, seconds)
    others = (max(0.0, machine_busy_s() - busy0 - (children_cpu_s() - cpu0))
              / ((time.perf_counter() - t0) * (os.cpu_count() or 1)))
    boto = boto_matrix(big_stage, big_month, work, rtts, seconds)
    # rate fidelity at 10 ms: max_wcu = R for a minute, counted per second by the sink
    rate = 500 if quick else 5_000
    fid_seconds = 12 if quick else 60
    _, counts = _through_sink("ours", {"stage": str(big_stage), "month": big_month}, 10, work, big_stage, rate,
                              f"deadline_seconds = {fid_seconds}\n")
    avg = steady(counts)
    first, highest = (counts[1] if len(counts) > 1 else 0), max(counts[:-1], default=0)
    o, b, w = results["ours"], results["batch_writer"], results["put_df"]

    def per100k(r: dict[str, Any]) -> float:
        return float(r["cpu_seconds"]) / r["items"] * 100_000

    co, cb = ceiling["ours"], ceiling["batch_writer"]
    load_avg = os.getloadavg()
    lines = [
        "## Load: Parquet -> BatchWriteItem",
        "",
        f"{os.cpu_count()} cores, server and client on the same machine, {{stamp}}; load average at the end "
        f"{load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} (1 / 5 / 15 min).",
        "",
        "### At real-world round trips",
        "",
        "Against the latency sink (`bench/sink.py`, 127.0.0.1: every BatchWriteItem answered after a fixed delay, "
        "items counted per second; an on-demand table pre-warmed above every budget), `etl load` run as a command "
        "of its own with `max_wcu` set to the budget and nothing else (the default in-flight window), items of "
        f"about 140 bytes (1 WCU), `deadline_seconds = {seconds:.0f}` (counted from the plan, after DescribeTable). "
        f"Other processes used {others:.0%} of the machine's cores while these runs took place{busy_note(others)}. "
        "Two figures per cell, as a share of the budget:",
        "",
        "- **steady**: the average of the whole seconds in which writes arrived, the first and last (partial) "
        "seconds left out; in brackets the highest second. What the loader holds once it runs.",
        "- **whole run**: every item the sink counted over the command's wall time from its start to its exit "
        "(interpreter start-up, DescribeTable, planning, opening the Parquet and idle seconds included); in "
        "brackets that wall time. What a user sees for a short run; the start-up is a fixed cost, so a long "
        "load comes close to the steady figure.",
        "",
        "| RTT | " + " | ".join(f"{b:,} WCU/s steady | whole run" for b in budgets) + " |",
        "|---:|" + "---:|---:|" * len(budgets),
    ]
    for rtt in rtts:
        cells = [f"{share[rtt, b]:.1%} ({peak[rtt, b]:.0%}) | {whole[rtt, b]:.1%} ({walls[rtt, b]:.1f} s)"
                 for b in budgets]
        lines.append(f"| {rtt} ms | " + " | ".join(cells) + " |")
    lines += [
        "",
        "boto3's batch_writer beside it (its own process, for the same seconds; steady items/s at the sink and "
        "that as a share of each budget):",
        "",
        "| RTT | batch_writer 1 thread | batch_writer 16 threads |",
        "|---:|---:|---:|",
    ]
    for rtt in rtts:
        cells = [f"{boto[rtt, t]:,.0f}/s = " + " / ".join(f"{boto[rtt, t] / b:.1%}" for b in budgets)
                 for t in THREADS]
        lines.append(f"| {rtt} ms | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Rate fidelity at 10 ms: `max_wcu = {rate:,}` for {fid_seconds} s, counted per second at the sink: "
        f"average {avg:,.0f} WCU/s ({avg / rate:.1%} of the budget), first whole second {first:,} "
        f"({first / rate:.1%}), highest second {highest:,} ({highest / rate:.1%}); target 95-100% and no second "
        "above 110%.",
        "",
        f"The client's ceiling against the sink answering at once ({ceil_n:,} items):",
        "",
        "| client | items/s | CPU s per 100k items |",
        "|---|---:|---:|",
        f"| ours | {co['items'] / co['seconds']:,.0f} | {per100k(co):.2f} |",
        f"| boto3 batch_writer | {cb['items'] / cb['seconds']:,.0f} | {per100k(cb):.2f} |",
        "",
        f"Ours per CPU-second: {per100k(cb) / per100k(co):.1f}x boto3's batch_writer (target >= 5x); "
        f"items/s: {(co['items'] / co['seconds']) / (cb['items'] / cb['seconds']):.1f}x.",
        "",
        "### Against DynamoDB Local",
        "",
        f"{n:,} items of about 140 bytes, on-demand table, same items for all, after a warm-up run of 10,000 items; "
        "DynamoDB Local is the bottleneck.",
        "",
        "| contender | seconds | items/s | client CPU s per 100k items | ours is (items/s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in (("ours (etl load)", o), ("boto3 Table.batch_writer()", b), ("awswrangler dynamodb.put_df", w)):
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['items'] / r['seconds']:,.0f} | {per100k(r):.1f} | "
                     + ("-" if r is o else f"{(o['items'] / o['seconds']) / (r['items'] / r['seconds']):.2f}x")
                     + " |")
    lines += ["", "Command: `make bench ARGS=load` (about 7 minutes on a quiet machine; "
              "`python -m bench.load_run RTT_MS BUDGET` runs one latency case)."]
    return "\n".join(lines)


def main() -> None:
    """`python -m bench.load_run RTT_MS BUDGET [SECONDS]`: one latency run of `etl load`, for trying things."""
    stage, month = prepare(1_000_000)
    work = DATA / "load-work"
    work.mkdir(parents=True, exist_ok=True)
    rtt, budget = int(sys.argv[1]), int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else RUN_SECONDS
    wall, counts = _command_through_sink("ours", stage, month, rtt, work, budget, f"deadline_seconds = {seconds}\n")
    print(json.dumps({"steady_share": steady(counts) / budget, "whole_run_share": whole_run(counts, wall) / budget,
                      "wall_seconds": wall, "peak": max(counts[:-1], default=0) / budget, "counts": counts}))


if __name__ == "__main__":
    main()
