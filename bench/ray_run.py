"""The Ray benchmark (`make bench-ray`, in a loopback-only network namespace): in one run, on the same data,

- transform and load throughput with the local engine and with Ray on 1, 2 and 4 workers (loads go to a null
  sink on 127.0.0.1 that answers at once, so the client is what is measured);
- Ray's overhead per task (the engine's round trip, and many no-op tasks), against the local engine's;
- rate fidelity: 4 load tasks at once on Ray sharing the budget actor, counted per second at the sink, with
  answers at once and after 20 ms;
- an extrapolation to a 10-node cluster and a 10 TB backfill, from the figures measured here.

Writes BENCHMARKS.md's `ray` section. `python -m bench.ray_run [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import DATA, ROOT

M = "201604"
TABLE = "raybench"
# engines and worker counts measured: 4 workers on this 2-core machine show what more processes than cores give
CONFIGS = (("local", 1), ("local", 2), ("local", 4), ("ray", 1), ("ray", 2), ("ray", 4))


def noop(cfg: Any, task: int, ctx: Any) -> dict[str, Any]:
    return {"task": task}


@contextmanager
def sink(delay: float) -> Iterator[tuple[str, Path]]:
    from tests.conftest import free_port

    port = free_port()
    out = DATA / f"ray-sink-{port}.json"
    proc = subprocess.Popen([sys.executable, "-m", "bench.ray_sink", json.dumps(
        {"port": port, "delay": delay, "table": TABLE, "out": str(out)})], cwd=ROOT)
    try:
        while not out.exists():
            if proc.poll() is not None:  # it died (its error is on stderr): do not wait for it forever
                raise RuntimeError(f"the Ray benchmark's sink exited with {proc.returncode}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", out
    finally:
        proc.terminate()
        proc.wait()
        out.unlink(missing_ok=True)


@contextmanager
def ray_cluster(cpus: int) -> Iterator[None]:
    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=temp, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1")  # the namespace has loopback only
    try:
        assert all(n["NodeManagerAddress"].startswith("127.") for n in ray.nodes()), "run in the namespace"
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def config(path: Path, stage: Path, endpoint: str, kind: str, workers: int, max_wcu: float) -> Any:
    from etl.config import load_config

    path.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{stage}"\n'
                    f'[destination]\ntable_template="{TABLE}"\nendpoint_url="{endpoint}"\nproduction=false\n'
                    f"[load]\nmax_wcu = {max_wcu}\nconcurrency = 8\n[transform]\nconcurrency = {workers}\n"
                    f'[engine]\nkind = "{kind}"\n')
    return load_config(str(path), env={})


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(cfg: Any, repeat: int) -> dict[str, Any]:
    """The month transformed and loaded `repeat` times after a first (cold) run of each."""
    from etl.load.stage import reset_checkpoints
    from etl.pipeline import run_load, run_transform

    def transform() -> None:
        run_transform(cfg, [M], force=True)

    def load() -> None:
        reset_checkpoints(cfg, [M])
        run_load(cfg, [M], yes=True, include_expired=True)

    cold_t, cold_l = timed(transform), timed(load)
    ts = [timed(transform) for _ in range(repeat)]
    ls = [timed(load) for _ in range(repeat)]
    return {"transform": statistics.median(ts), "load": statistics.median(ls), "transform_runs": ts,
            "load_runs": ls, "cold_transform": cold_t, "cold_load": cold_l}


def overhead(n: int) -> dict[str, float]:
    """ms per task: one task's round trip through the engine, and `n` no-op tasks on the cluster's workers."""
    import ray

    from etl.engine import LocalEngine, TaskContext
    from etl.ratelimit import TokenBucket
    from etl.ray_engine import RayEngine

    out: dict[str, float] = {}
    for name, engine in (("local", LocalEngine()), ("ray", RayEngine())):
        engine.run("noop", 2, noop, None, [0, 1], TaskContext())  # workers up
        one = [timed(lambda e=engine: e.run("noop", 2, noop, None, [0], TaskContext())) for _ in range(20)]
        many = timed(lambda e=engine: e.run("noop", 2, noop, None, list(range(n)), TaskContext()))
        out[f"{name}_one_ms"] = statistics.median(one) * 1000
        out[f"{name}_many_ms"] = many / n * 1000
        if name == "ray":
            actor = engine.shared_budget(TokenBucket(1e9)).actor  # type: ignore[attr-defined]
            leases = [timed(lambda a=actor: ray.get(a.lease.remote(1.0, []))) for _ in range(200)]
            out["lease_ms"] = statistics.median(leases) * 1000
        engine.close()
    return out


def fidelity(rate: int, seconds: int, delay: float, work: Path) -> dict[str, Any]:
    """4 load tasks at once on Ray (4 logical CPUs) sharing the budget actor; items per second at the sink."""
    from bench.load_run import prepare
    from etl.load.stage import reset_checkpoints
    from etl.pipeline import run_load

    stage, month = prepare(rate * seconds)  # 4 parts of last month (not expired)
    with sink(delay) as (url, counts_file), ray_cluster(4):
        cfg = config(work / "rate.toml", stage, url, "ray", 4, rate)
        reset_checkpoints(cfg, [month])
        t0 = time.time()
        [m] = run_load(cfg, [month], yes=True)
        t1 = time.time()
        time.sleep(1.2)
        counts = [c for s, c in json.loads(counts_file.read_text()) if t0 <= s <= t1]
    whole = counts[1:-1]  # whole seconds only
    return {"rate": rate, "delay": delay, "avg": statistics.mean(whole), "peak": max(whole), "seconds": len(whole),
            "written": m["written"], "wall": t1 - t0}


def run(quick: bool) -> str:
    from bench.transform import generate
    from etl.pipeline import run_export

    size, repeat = (30, 1) if quick else (150, 3)
    meta = generate(size, 4)
    work = DATA / "ray"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stage = work / "stage"
    load_avg = [os.getloadavg()[0]]
    results: dict[str, dict[str, Any]] = {}
    with sink(0.0) as (url, _):
        run_export(config(work / "x.toml", stage, url, "local", 2, 1e7), [M], use_existing=meta["folder"])
        for kind, workers in CONFIGS:
            cfg = config(work / f"{kind}{workers}.toml", stage, url, kind, workers, 1e7)
            if kind == "ray":
                with ray_cluster(workers):
                    results[f"{kind}{workers}"] = throughput(cfg, repeat)
                    if workers == 2:
                        over = overhead(100 if quick else 400)
            else:
                results[f"{kind}{workers}"] = throughput(cfg, repeat)
            load_avg.append(os.getloadavg()[0])
    t = json.loads((stage / "_state" / f"month={M}" / "transform.json").read_text())
    rows = t["written"]
    rate, secs = (1000, 8) if quick else (5000, 20)
    fid = [fidelity(rate, secs, d, work) for d in (0.0, 0.02)]
    load_avg.append(os.getloadavg()[0])
    return section(meta, rows, results, over, fid, load_avg, quick)


def section(meta: dict[str, Any], rows: int, r: dict[str, dict[str, Any]], over: dict[str, float],
            fid: list[dict[str, Any]], load_avg: list[float], quick: bool) -> str:
    mb = meta["uncompressed_bytes"] / 1e6
    names = {f"{kind}{n}": f"{'Ray' if kind == 'ray' else 'local'}, {n} worker{'s' if n > 1 else ''}"
             for kind, n in CONFIGS}
    lines = [
        "## Ray: the same stages on a cluster",
        "",
        f"One run of `make bench-ray{' ARGS=--quick' if quick else ''}` ({{stamp}}, {os.cpu_count()} cores, "
        f"load average {min(load_avg):.1f}-{max(load_avg):.1f} during the run, the benchmark's own processes "
        "included). "
        f"One month: {mb:,.0f} MB of DynamoDB JSON (uncompressed) in {meta['files']} files, {meta['rows']:,} items "
        f"-> {rows:,} rows in 4 Parquet parts, loaded with `--include-expired` into a null sink on 127.0.0.1 "
        "(answers at once: the client is measured). Medians of the warm runs; the first (cold) run of each "
        "engine in brackets (Ray's includes starting its worker processes). A Ray worker is one CPU slot "
        "(`ray.init(num_cpus=N)`, a worker process each); local workers are `[transform] concurrency` threads "
        "(the local load runs 2 parts at once; Ray's runs one part per worker, 4 parts in all).",
        "",
        "| engine | transform s | transform MB/s | load s | load items/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name in names.items():
        x = r[key]
        lines.append(f"| {name} | {x['transform']:.2f} ({x['cold_transform']:.2f}) | {mb / x['transform']:,.0f} | "
                     f"{x['load']:.2f} ({x['cold_load']:.2f}) | {rows / x['load']:,.0f} |")
    if max(load_avg) > (os.cpu_count() or 1):
        lines += ["", f"The machine was oversubscribed (load average above its {os.cpu_count()} cores): a second "
                      "worker had no core to itself, so these rows compare the engines, not how they scale."]
    lines += ["", "Scaling on this machine, Ray's transform and load throughput against its 1-worker run: "
              + "; ".join(f"{n} workers {r['ray1']['transform'] / r[f'ray{n}']['transform']:.2f}x and "
                          f"{r['ray1']['load'] / r[f'ray{n}']['load']:.2f}x" for n in (2, 4))
              + f". With {os.cpu_count()} cores, more worker processes cannot run faster "
              "than the cores allow: these figures bound what one machine gives, not what a node of its own per "
              "worker would."]
    t_worker = mb / r["ray1"]["transform"]
    l_worker = rows / r["ray1"]["load"]
    lines += [
        "",
        f"Overhead per task: one task's round trip through the engine {over['ray_one_ms']:.1f} ms on Ray against "
        f"{over['local_one_ms']:.2f} ms locally; many no-op tasks on 2 workers {over['ray_many_ms']:.2f} ms per "
        f"task against {over['local_many_ms']:.3f} ms. A task is a data file or a Parquet part (seconds of "
        f"work), so this is noise. One lease from the budget actor takes {over['lease_ms']:.2f} ms; a worker "
        "leases a tenth of a second of the rate at a time, so the actor answers about 10 leases a second per "
        "worker that writes, whatever the rate.",
        "",
        "Rate fidelity, 4 load tasks at once on Ray sharing the budget actor, counted per second at the sink "
        "(whole seconds; target: average 95-100% of the budget, no second above 110%):",
        "",
        "| sink answers | budget | seconds | average | highest second |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in fid:
        answers = f"after {f['delay'] * 1000:.0f} ms" if f["delay"] else "at once"
        lines.append(f"| {answers} | {f['rate']:,} WCU/s | {f['seconds']} | {f['avg']:,.0f} "
                     f"({f['avg'] / f['rate']:.1%}) | {f['peak']:,} ({f['peak'] / f['rate']:.1%}) |")
    lines += extrapolate(t_worker, l_worker, meta, rows)
    lines += ["", "Command: `make bench-ray` (`ARGS=--quick` for a smoke run; it starts its own Ray instances "
                  "inside a network namespace that has only loopback)."]
    return "\n".join(lines)


def extrapolate(t_worker: float, l_worker: float, meta: dict[str, Any], rows: int) -> list[str]:
    """10 nodes of 8 vCPUs, 10 TB of export JSON, the orders' share of this data."""
    workers = 80
    tb = 10e12
    item_bytes = meta["uncompressed_bytes"] / meta["rows"]
    items = tb / item_bytes
    orders = items * rows / meta["rows"]
    transform_h = tb / (t_worker * 1e6 * workers) / 3600
    out = [
        "",
        "What the projection below assumes, none of it measured here: every one of the 80 workers has a vCPU of "
        "its own and transforms at the 1-worker rate measured above (here that worker shared the 2 cores with the "
        "benchmark's sink and driver, so the rate may be low); throughput grows linearly with workers (the 2- and "
        "4-worker rows above cannot show it on 2 cores); S3 serves each worker's reads at that rate; the "
        "driver's planning and commits (serial, one month at a time each) and Ray's per-task overhead are "
        "small beside the tasks; the data has this run's item size and share of orders.",
        "",
        f"On paper: a 10 TB backfill on 10 nodes of 8 vCPUs (80 Ray workers). At this data's {item_bytes:.0f} "
        f"bytes per item, 10 TB is {items / 1e9:,.0f} billion items, of which {rows / meta['rows']:.0%} are "
        f"orders: {orders / 1e9:,.1f} billion index items of 1 WCU each.",
        "",
        f"- Transform: {t_worker:,.0f} MB/s per worker here, so {t_worker * workers / 1000:,.1f} GB/s on 80 workers: "
        f"**{transform_h:.1f} hours** (S3 reads at ~{t_worker:.0f} MB/s per worker are well within an EC2 node's "
        "network), if it scales with the nodes as the assumptions above say.",
        f"- Load: one worker writes {l_worker:,.0f} items/s here against a sink that answers at once; in-region "
        "(5-30 ms a batch) a worker's 8 requests in flight give 8 x 25 / 0.02 = 10,000 items/s, so 4-8 workers "
        "reach any budget below. The budget bounds the load, not the cluster:",
        "",
        "| write budget (WCU/s) | load hours |",
        "|---:|---:|",
    ]
    for wcu in (10_000, 40_000, 80_000):
        out.append(f"| {wcu:,} | {orders / wcu / 3600:,.0f} |")
    out += [
        "",
        "40,000 WCU/s is DynamoDB's default per-table write quota; an index table that the live service also "
        "writes can give the backfill only a share of it. So Ray pays off for the transform (and for exports "
        "too big for one machine's disk and network) and when many months' loads must share one budget from "
        "many machines; with one machine of 8+ cores and a budget under ~10,000 WCU/s, the local engine "
        "reaches the budget with less to run.",
    ]
    return out


def main() -> None:
    from bench.__main__ import write_section

    ap = argparse.ArgumentParser(prog="python -m bench.ray_run")
    ap.add_argument("--quick", action="store_true", help="small data, one run each (a smoke test)")
    args = ap.parse_args()
    stamp = f"{time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}"
    body = run(args.quick).replace("{stamp}", stamp)
    write_section("ray", body)
    print(body)


if __name__ == "__main__":
    main()
