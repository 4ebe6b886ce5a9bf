"""Runs the transform contenders side by side and formats the BENCHMARKS.md section."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.common import DATA, run_contender
from bench.transform import SHAPES, generate_shape

ROUNDS = {"even": 7, "one-big": 5, "uneven": 7, "many-small": 7}  # rounds of ours + DuckDB per shape (full run)


def interleaved(names: list[str], args: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Run the contenders in turn, `rounds` times (A B A B ...), so drift in the machine's speed falls on
    all of them alike; median wall time, every run kept, max peak RSS."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            runs[n].append(run_contender("bench.transform", n, args, repeat=1))
    return {n: {**rs[-1], "seconds": statistics.median(r["seconds"] for r in rs),
                "cpu_seconds": statistics.median(r.get("cpu_seconds", float("nan")) for r in rs),
                "runs": [r["seconds"] for r in rs], "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "others_share": [x for r in rs for x in r["others_share"]]}
            for n, rs in runs.items()}


def versus_duckdb(meta: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Ours and DuckDB on one export, in turn; DuckDB with ignore_errors=true when the export holds a malformed
    line (without it, DuckDB stops at that line)."""
    out = DATA / "out"
    out.mkdir(parents=True, exist_ok=True)
    args = {"folder": meta["folder"], "out": str(out), "ignore_errors": bool(meta.get("malformed"))}
    res = interleaved(["ours", "duckdb"], args, rounds)
    return {**res, "args": args}


def _others(res: dict[str, Any]) -> str:
    """How busy the rest of the machine was during the runs: median (highest) share of all cores."""
    shares = [x for n in ("ours", "duckdb") for x in res[n]["others_share"]]
    return f"{statistics.median(shares):.0%} ({max(shares):.0%})"


def _range(runs: list[float]) -> str:
    return f"{min(runs):.2f}-{max(runs):.2f}"


def _files_desc(meta: dict[str, Any]) -> str:
    """`6 x 83 MB`, or the sizes in listing order when they differ (`4: 60/36/0/143 MB`)."""
    sizes = meta.get("file_bytes") or [meta["uncompressed_bytes"] // meta["files"]] * meta["files"]
    full = [b for b in sizes if b]
    if full and len(full) == len(sizes) and max(full) < 1.1 * min(full):
        return f"{len(sizes)} x {sum(full) / len(full) / 1e6:.0f} MB"
    if len(sizes) <= 8:
        return f"{len(sizes)}: " + "/".join(f"{b / 1e6:.0f}" for b in sizes) + " MB"
    return f"{len(sizes)} of {min(sizes) / 1e6:.0f}-{max(sizes) / 1e6:.0f} MB"


def shape_row(meta: dict[str, Any], res: dict[str, Any]) -> str:
    ours, duck = res["ours"], res["duckdb"]
    mb = meta["uncompressed_bytes"] / 1e6
    pairs = list(zip(ours["runs"], duck["runs"], strict=True))
    ratios = [d / o for o, d in pairs]
    wins = sum(o < d for o, d in pairs)
    files = _files_desc(meta)
    bad = f", {meta['malformed']} malformed line" if meta.get("malformed") else ""
    return (f"| {meta['shape']} | {files}{bad} | {mb:,.0f} | {meta['rows']:,} | "
            f"{ours['seconds']:.2f} ({_range(ours['runs'])}) | {duck['seconds']:.2f} ({_range(duck['runs'])}) | "
            f"{mb / ours['seconds']:,.0f} / {mb / duck['seconds']:,.0f} | {duck['seconds'] / ours['seconds']:.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {wins} of {len(pairs)} | "
            f"{ours['cpu_seconds']:.2f} / {duck['cpu_seconds']:.2f} | "
            f"{ours['peak_rss_mb']:,.0f} / {duck['peak_rss_mb']:,.0f} | {_others(res)} |")


def run(quick: bool, shapes: list[str] | None = None) -> str:
    shapes = shapes or list(SHAPES)
    rounds = {s: 1 if quick else ROUNDS[s] for s in SHAPES}
    lines: list[str] = ["## Transform: export DynamoDB JSON -> projected Parquet", ""]
    metas = {s: generate_shape(s, quick) for s in shapes}
    results = {s: versus_duckdb(metas[s], rounds[s]) for s in shapes if s != "even"}
    if "even" in shapes:
        meta = metas["even"]
        res = versus_duckdb(meta, rounds["even"])
        results["even"] = res
        args = res["args"]
        res.update({n: run_contender("bench.transform", n, args, repeat=1) for n in ("obvious", "awswrangler")})
        mb = meta["uncompressed_bytes"] / 1e6
        lines += [
            f"Input (shape `even`): {mb:,.0f} MB uncompressed ({meta['gz_bytes'] / 1e6:,.0f} MB gzip) in "
            f"{meta['files']} files, {meta['rows']:,} rows of the seeded value mix (a third orders, ~2% dirty). Same "
            "projection, filter (non-empty OrderID and CustomerID), date conversion and TTL; zstd Parquet out. "
            f"{os.cpu_count()} cores. Medians of {rounds['even']} runs for ours and DuckDB, taken in turn (ours, "
            "DuckDB, ours, ...), one run for the slow two. {stamp}.",
            "",
            "| contender | seconds | MB/s | rows/s | peak RSS MB | rows written | ours is |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        base = res["ours"]["seconds"]
        for n in ("ours", "duckdb", "obvious", "awswrangler"):
            r = res[n]
            ratio = r["seconds"] / base
            lines.append(f"| {n} | {r['seconds']:.2f} | {mb / r['seconds']:,.0f} | "
                         f"{meta['rows'] / r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} | {r.get('written', 0):,} | "
                         + ("-" if n == "ours" else f"{ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}") + " |")
        wins = sum(a < b for a, b in zip(res["ours"]["runs"], res["duckdb"]["runs"], strict=True))
        lines += ["", f"Run to run: ours {_range(res['ours']['runs'])} s, DuckDB {_range(res['duckdb']['runs'])} s "
                  f"(other processes used {_others(res)} of the cores meanwhile); ours was the faster of the pair in "
                  f"{wins} of {len(res['ours']['runs'])} rounds.", ""]
    else:
        lines += ["{stamp}.", ""]
    lines += [
        "### Export shapes: ours against DuckDB",
        "",
        "The same transform on exports of other shapes, all in the real layout (manifests, md5s, item counts). "
        "Files are listed (and taken) in the order shown; an empty data file is a gzip stream of no lines; a "
        "malformed line is a line cut in half, in the middle of the largest file, and DuckDB then needs "
        "`ignore_errors=true` to read the export at all (ours quarantines the line). Ours and DuckDB in turn, "
        f"rounds per shape: {', '.join(f'{s} {rounds[s]}' for s in shapes)}; seconds are medians (range); the ratio is "
        "DuckDB's median over ours (range of the per-round ratios); CPU s is the median CPU time of the timed "
        "section, all threads (steadier than wall time when the machine is shared); others is the share of "
        "the machine's cores that other processes used during the runs, median (highest run): above a few % "
        "the wall times are disturbed.",
        "",
        "| shape | data files | MB | rows | ours s | DuckDB s | MB/s ours / DuckDB | ours is | ours faster in | "
        "CPU s ours / DuckDB | peak RSS MB ours / DuckDB | others |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [shape_row(metas[s], results[s]) for s in shapes]
    if "one-big" in shapes:
        big, one = metas["one-big"], results["one-big"]["ours"]
        lines += ["", f"Memory bound, one {big['uncompressed_bytes'] / 1e6:,.0f} MB (uncompressed) data file (shape "
                  f"`one-big`): ours took {one['seconds']:.1f} s at a peak RSS of {one['peak_rss_mb']:,.0f} MB "
                  "(bound: 512 MB)."]
    if "even" in shapes:
        n_months = 2 if quick else 6
        mb = metas["even"]["uncompressed_bytes"] / 1e6
        many = run_contender("bench.transform", "ours_months", {**results["even"]["args"], "months": n_months},
                             repeat=1)
        lines += ["", f"The `even` export as {n_months} months in one run (months go side by side): ours took "
                  f"{many['seconds']:.1f} s ({n_months * mb / many['seconds']:,.0f} MB/s) at a peak RSS of "
                  f"{many['peak_rss_mb']:,.0f} MB."]
    lines += ["", "Command: `{command}` (writes this section). Row counts differ slightly: ours quarantines type "
              "mismatches and unparseable dates with a reason; the peers filter or null them."]
    return "\n".join(lines)
