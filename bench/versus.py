"""`python -m bench.versus REV [REV2] [--shape S] [--rounds N]`: the transform at git revision REV against this
tree's (or REV2's) on the same export, in one run, taken in turn (REV, this, REV, ...), so a change in the
machine's speed falls on both; and the JSON decode alone with the parse schema as it was (S and N) and as it
is (every type tag declared, so a value with two tags is seen). Rewrites BENCHMARKS.md's `versus REV..REV2` section.

A revision's tree is a temporary `git worktree` (removed afterwards); each side runs its own `bench.transform ours`
(its own code, its own bench harness) in a fresh process on the same cached export."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import DATA, ROOT
from bench.transform import generate_shape

CHUNK = 8 << 20


def run_ours(tree: Path, folder: str, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    job = json.dumps({"folder": folder, "out": str(out)})
    r = subprocess.run([sys.executable, "-m", "bench.transform", "ours", job], cwd=tree,
                       env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the transform in {tree} failed:\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def decode_cpu(folder: str, rounds: int) -> dict[str, float]:
    """CPU seconds to decode the first 96 MB of the export's first data file (8 MB chunks, as the transform
    reads them), best of `rounds`: with the parse schema's S and N only, and with every tag declared."""
    import pyarrow as pa
    from arro3 import io as aio

    from etl.config import load_config
    from etl.mapping import parse_schema
    from etl.transform.lines import with_every_tag

    first = sorted((Path(folder) / "data").iterdir())[0]
    with gzip.open(first, "rb") as fh:
        data = fh.read(12 * CHUNK)
    chunks, at = [], 0
    while at + CHUNK < len(data):
        c = data[at:at + CHUNK]
        c = c[:c.rindex(b"\n") + 1]
        chunks.append(c)
        at += len(c)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "c.toml"
        cfg_path.write_text(f'domain="shop"\nregion="eu"\n[staging]\nroot="{tmp}"\n')
        base = parse_schema(load_config(str(cfg_path), env={}))
    schemas = {"S and N": base, "every tag": with_every_tag(base)}
    best = {k: float("inf") for k in schemas}
    for _ in range(rounds):
        for k, s in schemas.items():
            c0 = time.process_time()
            for c in chunks:
                pa.table(aio.read_json(memoryview(c), s))
            best[k] = min(best[k], time.process_time() - c0)
    return {**best, "mb": sum(map(len, chunks)) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the git revision to compare with (a commit, tag or branch)")
    ap.add_argument("rev2", nargs="?", help="the revision to compare it with (default: this tree as it is)")
    ap.add_argument("--shape", default="one-big", choices=["even", "one-big", "uneven", "many-small"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    revs = []
    for r in (args.rev, args.rev2 or "HEAD"):
        got = subprocess.run(["git", "rev-parse", "--short", r], cwd=ROOT, capture_output=True, text=True)
        if got.returncode != 0:
            ap.error(f"{r!r} is not a revision of this repository")
        revs.append(got.stdout.strip())
    then, now = revs
    dirty = not args.rev2 and bool(subprocess.run(["git", "status", "--porcelain", "etl"], cwd=ROOT,
                                                  capture_output=True, text=True).stdout.strip())
    now_name = f"{now} with uncommitted changes" if dirty else now
    meta = generate_shape(args.shape)
    with tempfile.TemporaryDirectory(prefix="versus-") as tmp:
        trees = {"then": Path(tmp) / "then", "now": Path(tmp) / "now" if args.rev2 else ROOT}
        for side, rev in (("then", then), ("now", now)):
            if trees[side] != ROOT:
                subprocess.run(["git", "worktree", "add", "--detach", str(trees[side]), rev], cwd=ROOT, check=True,
                               capture_output=True)
        try:
            runs: dict[str, list[dict[str, Any]]] = {"then": [], "now": []}
            for _ in range(args.rounds):
                for side in ("then", "now"):
                    runs[side].append(run_ours(trees[side], meta["folder"], DATA / "out" / f"versus-{side}"))
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    decode = decode_cpu(meta["folder"], args.rounds)
    med = {k: {f: statistics.median(r[f] for r in rs) for f in ("seconds", "cpu_seconds")} for k, rs in runs.items()}
    rng = {k: f"{min(r['seconds'] for r in rs):.2f}-{max(r['seconds'] for r in rs):.2f}" for k, rs in runs.items()}
    command = "python -m bench.versus " + " ".join(sys.argv[1:])
    stamp = time.strftime("%Y-%m-%d")
    body = "\n".join([
        f"## Transform: {now_name} against {then}",
        "",
        f"`etl transform` of the `{args.shape}` export ({meta['uncompressed_bytes'] / 1e6:,.0f} MB, "
        f"{meta['rows']:,} lines), the code at `{then}` and at `{now_name}`, {args.rounds} rounds taken "
        f"in turn, medians (range); {stamp}, 2 cores.",
        "",
        "| code | seconds | CPU seconds |",
        "|---|---:|---:|",
        f"| `{then}` | {med['then']['seconds']:.2f} ({rng['then']}) | {med['then']['cpu_seconds']:.2f} |",
        f"| `{now_name}` | {med['now']['seconds']:.2f} ({rng['now']}) | {med['now']['cpu_seconds']:.2f} |",
        "",
        f"`{now_name}` takes {med['now']['seconds'] / med['then']['seconds']:.2f}x the wall time and "
        f"{med['now']['cpu_seconds'] / med['then']['cpu_seconds']:.2f}x the CPU of `{then}`.",
        "",
        f"The JSON decode alone, {decode['mb']:.0f} MB of the same lines in 8 MB chunks (CPU seconds, best of "
        f"{args.rounds}): {decode['S and N']:.3f} with S and N declared, {decode['every tag']:.3f} with every type "
        f"tag declared ({decode['every tag'] / decode['S and N']:.2f}x): what seeing a value's second tag costs "
        "(issue #23: `{\"S\": \"O-1\", \"BOOL\": true}` is quarantined, not read as S).",
        "",
        f"Command: `.venv/bin/{command}` (a revision's tree is a temporary git worktree).",
    ])
    common.write_section(ROOT / "BENCHMARKS.md", f"versus {then}..{'' if not args.rev2 else now}", body)
    print(body)


if __name__ == "__main__":
    main()
