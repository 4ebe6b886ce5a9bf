"""Runs the `etl run` benchmark and formats its BENCHMARKS.md section."""

from __future__ import annotations

import os
import statistics

from bench.common import run_contender
from bench.load_run import _sink
from bench.pipeline import exports


def run(quick: bool) -> str:
    n, rows, budget, rounds = (2, 20_000, 5_000, 1) if quick else (6, 150_000, 40_000, 3)
    folders = exports(n, rows)
    got: dict[str, list[dict[str, object]]] = {"stages": [], "run": []}
    for _ in range(rounds):
        for name in ("stages", "run"):  # in turn, so drift in the machine's speed falls on both
            proc, url = _sink("pipetable", 900)
            got[name].append(run_contender("bench.pipeline", name, {"exports": folders, "endpoint": url,
                                                                   "table": "pipetable", "max_wcu": budget},
                                           repeat=1))
            proc.terminate()
            proc.wait()

    def med(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in got[name])  # type: ignore[arg-type]

    transform, load, total, run_s = med("stages", "transform_s"), med("stages", "load_s"), \
        med("stages", "seconds"), med("run", "seconds")
    slowest = max(transform, load)
    items = int(got["run"][0]["items"])  # type: ignore[call-overload]
    return "\n".join([
        "## `etl run`: months overlap",
        "",
        f"{n} months of {rows:,} seeded items each (a third orders: {items:,} loaded in all), exports adopted "
        f"beforehand; the load writes to a null sink on 127.0.0.1 within `max_wcu = {budget:,}`. Medians of "
        f"{rounds} rounds, the two ways taken in turn. {os.cpu_count()} cores. {{stamp}}.",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| transform, every month (one command) | {transform:.1f} |",
        f"| load, every month (one command) | {load:.1f} |",
        f"| the two one after the other (sum) | {total:.1f} |",
        f"| `etl run` (each month loads as soon as its transform committed) | {run_s:.1f} |",
        "",
        f"`etl run` took {run_s / slowest:.2f}x the slowest stage's total (target <= 1.2x) and "
        f"{run_s / total:.2f}x the sum of the stages.",
        "",
        "Command: `make bench ARGS=pipeline`.",
    ])
