"""Runs the transform contenders side by side and formats the BENCHMARKS.md section."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import DATA, run_contender
from bench.transform import generate


def run(quick: bool) -> str:
    size, files, repeat = (40, 2, 1) if quick else (500, 6, 3)
    meta = generate(size, files)
    out = DATA / "out"
    out.mkdir(parents=True, exist_ok=True)
    args = {"folder": meta["folder"], "out": str(out)}
    names = ["ours", "duckdb", "obvious", "awswrangler"]
    results = {n: run_contender("bench.transform", n, args, repeat=1 if n in ("obvious", "awswrangler") else repeat)
               for n in names}
    mb = meta["uncompressed_bytes"] / 1e6
    lines = [
        "## Transform: export DynamoDB JSON -> projected Parquet",
        "",
        f"Input: {mb:,.0f} MB uncompressed ({meta['gz_bytes'] / 1e6:,.0f} MB gzip) in {meta['files']} files, "
        f"{meta['rows']:,} rows of the seeded value mix (a third orders, ~2% dirty). Same projection, filter "
        "(non-empty OrderID and CustomerID), date conversion and TTL; zstd Parquet out. "
        f"{os.cpu_count()} cores. Medians of {repeat} runs for ours and DuckDB, one run for the slow two. "
        "{stamp}.",
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
    lines += ["", f"Memory bound, one {big['uncompressed_bytes'] / 1e6:,.0f} MB (uncompressed) data file: ours took "
              f"{one['seconds']:.1f} s at a peak RSS of {one['peak_rss_mb']:,.0f} MB (bound: 512 MB).",
              "", "Command: `make bench ARGS=transform` (writes this section). Row counts differ slightly: "
              "ours quarantines type mismatches and unparseable dates with a reason; the peers filter or null them."]
    _ = Path
    return "\n".join(lines)
