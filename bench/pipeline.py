"""`etl run` over many months against the sum of its stages (each contender in its own process):

  stages   transform every month, then load every month (one stage after the other, as separate commands)
  run      the pipeline: each month moves to its load as soon as its transform committed

Exports are adopted beforehand (on AWS an export is a wait on DynamoDB, which overlaps trivially). The load
writes to the null sink of bench/load.py on 127.0.0.1 within `max_wcu`, so the load is what a real one is:
bound by the budget.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import DATA, emit


def months(n: int) -> list[str]:
    """The last n months before this one (recent: not past the one-year TTL)."""
    first = datetime.now(UTC).replace(day=15)
    return sorted((first - timedelta(days=31 * (i + 1))).strftime("%Y%m") for i in range(n))


def exports(n: int, rows: int) -> dict[str, str]:
    """A real-layout export folder per month, 4 data files each, cached under bench/data/."""
    from etl.local import generate_month
    from tests.helpers import write_real_export

    out = {}
    for month in months(n):
        folder = DATA / f"pipeline-{rows}" / month
        done = folder / "AWSDynamoDB"
        if not done.exists():
            items = [{k: v for k, v in it.items() if k != "_dirty"} for it in generate_month(month, rows, 7)]
            write_real_export(folder, [items[i::4] for i in range(4)])
        out[month] = str(next(done.iterdir()))
    return out


def _config(args: dict[str, Any], root: Path) -> Any:
    from etl.config import load_config

    path = root.parent / f"{root.name}.toml"
    path.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{root}"\n'
                    f'[destination]\ntable_template="{args["table"]}"\nendpoint_url="{args["endpoint"]}"\n'
                    f'production=false\n[load]\nmax_wcu = {args["max_wcu"]}\nconcurrency = 8\n')
    return load_config(str(path), env={})


def _adopted(args: dict[str, Any], name: str) -> Any:
    from etl.pipeline import run_export

    root = DATA / "pipeline-work" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cfg = _config(args, root)
    for month, folder in args["exports"].items():
        run_export(cfg, [month], use_existing=folder)
    return cfg


def stages(args: dict[str, Any]) -> None:
    from etl.pipeline import run_load, run_transform

    cfg = _adopted(args, "stages")
    ms = sorted(args["exports"])
    t0 = time.perf_counter()
    run_transform(cfg, ms)
    t1 = time.perf_counter()
    loaded = run_load(cfg, ms, yes=True)
    t2 = time.perf_counter()
    emit(transform_s=t1 - t0, load_s=t2 - t1, seconds=t2 - t0, items=sum(m["written"] for m in loaded))


def run(args: dict[str, Any]) -> None:
    from etl.pipeline import run as run_pipeline

    cfg = _adopted(args, "run")
    ms = sorted(args["exports"])
    t0 = time.perf_counter()
    out = run_pipeline(cfg, ms, ("transform", "load"), yes=True)
    emit(seconds=time.perf_counter() - t0, items=sum(m["written"] for m in out["load"]))


CONTENDERS = {"stages": stages, "run": run}

if __name__ == "__main__":
    from etl.cli import configure_process

    configure_process()
    CONTENDERS[sys.argv[1]](json.loads(sys.argv[2]))
