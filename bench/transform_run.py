"""Runs the transform contenders side by side and formats the BENCHMARKS.md section."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from bench.common import DATA, run_contender
from bench.transform import generate


def interleaved(names: list[str], args: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Run the contenders in turn, `rounds` times (A B A B ...), so drift in the machine's speed falls on
    all of them alike; median wall time, every run kept, max peak RSS."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            runs[n].append(run_contender("bench.transform", n, args, repeat=1))
    return {n: {**rs[-1], "seconds": statistics.median(r["seconds"] for r in rs),
                "runs": [r["seconds"] for r in rs], "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
            for n, rs in runs.items()}


def run(quick: bool) -> str:
    size, files, repeat = (40, 2, 1) if quick else (500, 6, 7)
    meta = generate(size, files)
    out = DATA / "out"
    out.mkdir(parents=True, exist_ok=True)
    args = {"folder": meta["folder"], "out": str(out)}
    names = ["ours", "duckdb", "obvious", "awswrangler"]
    results = interleaved(["ours", "duckdb"], args, repeat)
    results.update({n: run_contender("bench.transform", n, args, repeat=1) for n in ("obvious", "awswrangler")})
    mb = meta["uncompressed_bytes"] / 1e6
    lines = [
        "## Transform: export DynamoDB JSON -> projected Parquet",
        "",
        f"Input: {mb:,.0f} MB uncompressed ({meta['gz_bytes'] / 1e6:,.0f} MB gzip) in {meta['files']} files, "
        f"{meta['rows']:,} rows of the seeded value mix (a third orders, ~2% dirty). Same projection, filter "
        "(non-empty OrderID and CustomerID), date conversion and TTL; zstd Parquet out. "
        f"{os.cpu_count()} cores. Medians of {repeat} runs for ours and DuckDB, taken in turn (ours, DuckDB, ours, "
        "...), one run for the slow two. {stamp}.",
        "",
        "| contender | seconds | MB/s | rows/s | peak RSS MB | rows written | ours is |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = results["ours"]["seconds"]
    for n in names:
        r = results[n]
        ratio = r["seconds"] / base
        lines.append(f"| {n} | {r['seconds']:.2f} | {mb / r['seconds']:,.0f} | {meta['rows'] / r['seconds']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r.get('written', 0):,} | "
                     + ("-" if n == "ours" else f"{ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}") + " |")
    big = generate(1000, 1) if not quick else generate(80, 1)
    one = run_contender("bench.transform", "ours", {"folder": big["folder"], "out": str(out)}, repeat=1)
    spread = {n: f"{min(results[n]['runs']):.2f}-{max(results[n]['runs']):.2f} s" for n in ("ours", "duckdb")}
    wins = sum(a < b for a, b in zip(results["ours"]["runs"], results["duckdb"]["runs"], strict=True))
    lines += ["", f"Run to run: ours {spread['ours']}, DuckDB {spread['duckdb']} (this VM's speed drifts by a few %); "
              f"ours was the faster of the pair in {wins} of {len(results['ours']['runs'])} rounds."]
    n_months = 2 if quick else 6
    many = run_contender("bench.transform", "ours_months", {**args, "months": n_months}, repeat=1)
    lines += ["", f"Memory bound, one {big['uncompressed_bytes'] / 1e6:,.0f} MB (uncompressed) data file: ours took "
              f"{one['seconds']:.1f} s at a peak RSS of {one['peak_rss_mb']:,.0f} MB (bound: 512 MB).",
              "", f"The same export as {n_months} months in one run (months go side by side): ours took "
              f"{many['seconds']:.1f} s ({n_months * mb / many['seconds']:,.0f} MB/s) at a peak RSS of "
              f"{many['peak_rss_mb']:,.0f} MB.",
              "", "Command: `make bench ARGS=transform` (writes this section). Row counts differ slightly: "
              "ours quarantines type mismatches and unparseable dates with a reason; the peers filter or null them."]
    _ = Path
    return "\n".join(lines)
