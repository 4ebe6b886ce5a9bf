"""Shared benchmark plumbing: run a contender in a fresh process, time it, read its peak RSS."""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"


def run_contender(module: str, name: str, args: dict[str, Any], repeat: int = 3) -> dict[str, Any]:
    """Run `python -m <module> <name> <json args>` `repeat` times; median wall time, max peak RSS."""
    walls, rss, extra, others = [], [], {}, []
    for _ in range(repeat):
        busy0, cpu0 = machine_busy_s(), children_cpu_s()
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", module, name, json.dumps(args)], capture_output=True, text=True,
                           cwd=ROOT)
        wall = time.perf_counter() - t0
        # what the rest of the machine used meanwhile: a share of 0 is a quiet machine, 1 all cores taken
        others.append(max(0.0, machine_busy_s() - busy0 - (children_cpu_s() - cpu0)) / (wall * (os.cpu_count() or 1)))
        if r.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{r.stderr[-3000:]}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        walls.append(out.get("seconds", wall))
        rss.append(out["peak_rss_mb"])
        extra = out
    return {**extra, "name": name, "seconds": statistics.median(walls), "runs": walls, "peak_rss_mb": max(rss),
            "others_share": others}


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat; nan elsewhere)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    return (sum(v[:8]) - v[3] - v[4]) / (os.sysconf("SC_CLK_TCK") or 100)


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def emit(**fields: Any) -> None:
    print(json.dumps({**fields, "peak_rss_mb": round(peak_rss_mb(), 1)}))


def write_section(path: Path, name: str, body: str, header: str = "") -> None:
    """Replace the `<!-- name:start -->` ... `<!-- name:end -->` block of a markdown file with `body` (appended,
    after `header` for a new file, when the file has none), so each generated part is rewritten by its run."""
    text = path.read_text() if path.exists() else header
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def recent_months(n: int = 3) -> list[str]:
    """The n months before this one, oldest first: their orders are inside the one-year TTL, so every row is
    written."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    out = []
    y, m = now.year, now.month
    for _ in range(n):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
        out.append(f"{y}{m:02d}")
    return sorted(out)
