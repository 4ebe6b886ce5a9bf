"""`make bench` / `python -m bench [transform|load|lookup ...] [--quick]`: run the benchmarks side by side
and rewrite their sections of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

from bench import common
from bench.common import ROOT

SECTIONS = ("transform", "load", "lookup", "pipeline")


def write_section(name: str, body: str) -> None:
    common.write_section(ROOT / "BENCHMARKS.md", name, body,
                         "# Benchmarks\n\nProduced by `make bench` on this machine.\n")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("which", nargs="*", metavar="{" + ",".join(SECTIONS) + "}",
                    help="which benchmarks (default: all)")
    ap.add_argument("--quick", action="store_true", help="small data, one run each (a smoke test)")
    ap.add_argument("--shapes", help="transform: export shapes to run, comma-separated (default: all of "
                    "even,one-big,uneven,many-small)")
    args = ap.parse_args()
    unknown = set(args.which) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    shapes = args.shapes.split(",") if args.shapes else None
    if shapes and set(shapes) - {"even", "one-big", "uneven", "many-small"}:
        ap.error(f"unknown shape(s) in --shapes {args.shapes}; choose from even,one-big,uneven,many-small")
    argv = shlex.join(sys.argv[1:])
    command = f"make bench ARGS={shlex.quote(argv)}" if argv else "make bench"
    stamp = f"{time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}"
    for which in args.which or SECTIONS:
        if which == "transform":
            from bench.transform_run import run
        elif which == "load":
            from bench.load_run import run  # type: ignore[no-redef]
        elif which == "pipeline":
            from bench.pipeline_run import run  # type: ignore[no-redef]
        else:
            from bench.lookup_run import run  # type: ignore[no-redef]
        body = run(args.quick, shapes) if which == "transform" else run(args.quick)
        body = body.replace("{stamp}", stamp).replace("{command}", command)
        write_section(which, body)
        print(body)


if __name__ == "__main__":
    main()
