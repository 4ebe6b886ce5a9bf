"""Transform benchmark: the same export, the same projection/filter/conversion, four ways.

  ours        etl.transform (pyarrow JSON with an explicit schema, vectorised dates, Parquet)
  duckdb      read_json -> SELECT ... -> COPY TO parquet
  obvious     json.loads per line + boto3 TypeDeserializer + pandas -> Parquet
  awswrangler wr.s3.read_json(lines=True) (against moto's S3 on 127.0.0.1) + pandas + to_parquet

Each contender runs in its own process (`python -m bench.transform NAME ARGS`); we report the median wall
time, MB/s of uncompressed input, rows/s, peak RSS and the CPU seconds of the timed section (every thread,
user + system: steadier than wall time on a shared machine).
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, emit

EXPORT_ID = "01700000000000-bench000"


def generate(target_mb: int, files: int) -> dict[str, Any]:
    """A real-layout export of `files` data files of even size, cached under bench/data/export-<N>mb/."""
    return generate_files(f"export-{target_mb}mb", [target_mb / files] * files)


# Export shapes for the transform benchmark: data file sizes in MB of uncompressed lines, in listing order
# (the transform takes the files in this order); 0 is an empty data file (a gzip stream of no lines, which
# real exports hold), and `malformed` lines are cut in half in the middle of the largest file (DuckDB reads
# such an export only with ignore_errors=true). `uneven` lists its largest file last: a real export's file
# names are random, and that is the order a file-at-a-time schedule handles worst.
SHAPES: dict[str, dict[str, Any]] = {
    "even": {"sizes": [500 / 6] * 6, "dir": "export-500mb"},
    "one-big": {"sizes": [1000], "dir": "export-1000mb"},
    "uneven": {"sizes": [60, 36, 0, 144], "malformed": 1, "dir": "export-uneven-biglast-240mb"},
    "many-small": {"sizes": [2] * 120, "dir": "export-many-120x2mb"},
}
QUICK_SHAPES: dict[str, dict[str, Any]] = {
    "even": {"sizes": [20] * 2, "dir": "export-40mb"},
    "one-big": {"sizes": [80], "dir": "export-80mb"},
    "uneven": {"sizes": [10, 6, 0, 24], "malformed": 1, "dir": "export-uneven-biglast-40mb"},
    "many-small": {"sizes": [1] * 24, "dir": "export-many-24x1mb"},
}


def generate_shape(name: str, quick: bool = False) -> dict[str, Any]:
    spec = (QUICK_SHAPES if quick else SHAPES)[name]
    return {**generate_files(spec["dir"], spec["sizes"], spec.get("malformed", 0)), "shape": name}


def generate_files(dirname: str, sizes_mb: list[float], malformed: int = 0) -> dict[str, Any]:
    """A real-layout export (manifests with item counts and md5s, data/*.json.gz) of the seeded value mix, one
    data file per size (MB of uncompressed lines, 0 = an empty file), cached under bench/data/<dirname>/.
    `malformed` lines of the largest file are cut in half (the manifest still counts them as items)."""
    from etl.items import export_line
    from etl.local import generate_month
    from tests.helpers import b64md5

    folder = DATA / dirname / "AWSDynamoDB" / EXPORT_ID
    meta_path = folder.parent.parent / "meta.json"
    if meta_path.exists():  # the folder as it is now (the cache may have been copied from elsewhere)
        return {**json.loads(meta_path.read_text()), "folder": str(folder)}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    biggest = max(range(len(sizes_mb)), key=lambda i: sizes_mb[i])
    entries, raw_total, rows_total, sizes = [], 0, 0, []
    for i, size in enumerate(sizes_mb):
        month = f"2016{i % 12 + 1:02d}"
        rows = int(size * 1_000_000 / 190)
        items = generate_month(month, rows, 100 + i) if rows else []
        lines = [export_line({k: v for k, v in it.items() if k != "_dirty"}) for it in items]
        del items
        if i == biggest and malformed:
            for j in range(malformed):
                at = len(lines) * (j + 1) // (malformed + 1)
                lines[at] = lines[at][: len(lines[at]) // 2] + b"\n"
        raw = b"".join(lines)
        data = gzip.compress(raw, compresslevel=6)
        name = f"bench{i:03d}aaaaaaaaaaaaaaaaaaa.json.gz"
        (folder / "data" / name).write_bytes(data)
        entries.append({"itemCount": len(lines), "md5Checksum": b64md5(data), "etag": "x",
                        "dataFileS3Key": f"p/AWSDynamoDB/{EXPORT_ID}/data/{name}"})
        raw_total += len(raw)
        rows_total += len(lines)
        sizes.append(len(raw))
    mf = "".join(json.dumps(e) + "\n" for e in entries).encode()
    (folder / "manifest-files.json").write_bytes(mf)
    (folder / "manifest-files.md5").write_text(b64md5(mf))
    summary = json.dumps({"version": "2020-06-30", "itemCount": rows_total, "outputFormat": "DYNAMODB_JSON"}).encode()
    (folder / "manifest-summary.json").write_bytes(summary)
    (folder / "manifest-summary.md5").write_text(b64md5(summary))
    meta = {"folder": str(folder), "uncompressed_bytes": raw_total, "rows": rows_total, "files": len(sizes_mb),
            "file_bytes": sizes, "malformed": malformed,
            "gz_bytes": sum(p.stat().st_size for p in (folder / "data").iterdir())}
    meta_path.write_text(json.dumps(meta))
    return meta


def _files(folder: str) -> list[str]:
    return sorted(str(p) for p in (Path(folder) / "data").iterdir())


# --------------------------------------------------------------------------- contenders


def ours(args: dict[str, Any]) -> None:
    # pyarrow imports pandas lazily, on the first array it builds from Python values (~0.2 s, once per
    # process); import it here, outside the timer, like every other contender's libraries
    import pandas  # noqa: F401

    from etl.config import load_config
    from etl.pipeline import run_export, run_transform

    stage = Path(args["out"]) / "ours"
    cfg_path = Path(args["out"]) / "ours.toml"
    cfg_path.write_text(f'domain="shop"\nregion="eu"\n[staging]\nroot="{stage}"\n'
                        f'[transform]\nconcurrency = {args.get("concurrency", 2)}\n')
    cfg = load_config(str(cfg_path), env={})
    run_export(cfg, ["201601"], use_existing=args["folder"], force=True)
    t0, c0 = time.perf_counter(), time.process_time()
    [m] = run_transform(cfg, ["201601"], force=True)
    emit(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, written=m["written"],
         rejected=m["rejected"], items_in=m["items_in"])


def ours_months(args: dict[str, Any]) -> None:
    """The same export staged as N months, transformed in one run (months go side by side)."""
    import pandas  # noqa: F401

    from etl.config import load_config
    from etl.pipeline import run_export, run_transform

    stage = Path(args["out"]) / "ours-months"
    cfg_path = Path(args["out"]) / "ours-months.toml"
    cfg_path.write_text(f'domain="shop"\nregion="eu"\n[staging]\nroot="{stage}"\n')
    cfg = load_config(str(cfg_path), env={})
    months = [f"2016{m:02d}" for m in range(1, args["months"] + 1)]
    for m in months:
        run_export(cfg, [m], use_existing=args["folder"], force=True)
    t0, c0 = time.perf_counter(), time.process_time()
    done = run_transform(cfg, months, force=True)
    emit(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
         written=sum(m["written"] for m in done))


def duckdb_(args: dict[str, Any]) -> None:
    import duckdb

    out = Path(args["out"]) / "duckdb.parquet"
    files = _files(args["folder"])
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    t0, c0 = time.perf_counter(), time.process_time()
    attr = "STRUCT(S VARCHAR, N VARCHAR)"
    extra = ", ignore_errors=true" if args.get("ignore_errors") else ""  # needed to read a malformed line at all
    cols = f"{{'Item': 'STRUCT(CustomerID {attr}, DateTime {attr}, OrderID {attr})'}}"
    con.execute(f"""
        COPY (
          WITH src AS (
            SELECT Item.CustomerID.S AS cid, Item.DateTime.S AS dt, Item.OrderID.S AS oid
            FROM read_json({files!r}, format='newline_delimited', columns={cols}, compression='gzip'{extra})
          ), conv AS (
            SELECT cid, oid, CAST(floor(epoch(try_cast(dt AS TIMESTAMPTZ))) AS BIGINT) AS ts
            FROM src WHERE oid IS NOT NULL AND oid <> '' AND cid IS NOT NULL AND cid <> ''
          )
          SELECT cid AS CustomerID, ts AS CreationDateTime, oid AS OrderID, ts + 31536000 AS ExpirationTimestamp
          FROM conv WHERE ts IS NOT NULL
        ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
    """)
    n = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()
    emit(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, written=n[0] if n else 0)


def _to_frame(records: list[dict[str, Any]]) -> Any:
    import pandas as pd

    df = pd.DataFrame.from_records(records, columns=["CustomerID", "DateTime", "OrderID"])
    df = df[df["OrderID"].map(lambda v: isinstance(v, str) and v != "")]
    df = df[df["CustomerID"].map(lambda v: isinstance(v, str) and v != "")]
    ts = pd.to_datetime(df["DateTime"], utc=True, format="ISO8601", errors="coerce")
    df = df.assign(CreationDateTime=ts.astype("int64") // 10**9)[ts.notna()]
    df["ExpirationTimestamp"] = df["CreationDateTime"] + 31536000
    return df[["CustomerID", "CreationDateTime", "OrderID", "ExpirationTimestamp"]]


def obvious(args: dict[str, Any]) -> None:
    import pandas as pd
    from boto3.dynamodb.types import TypeDeserializer

    t0, c0 = time.perf_counter(), time.process_time()
    des = TypeDeserializer()
    frames = []
    for f in _files(args["folder"]):
        records = []
        with gzip.open(f, "rt") as fh:
            for line in fh:
                item = json.loads(line)["Item"]
                records.append({k: des.deserialize(v) for k, v in item.items()})
        frames.append(_to_frame(records))
    df = pd.concat(frames)
    df.to_parquet(Path(args["out"]) / "obvious.parquet", compression="zstd")
    emit(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, written=len(df))


def awswrangler_(args: dict[str, Any]) -> None:
    import os

    # awswrangler runs on Ray when Ray is installed (the ray extra is), through pyarrow's own S3 client, which
    # would ignore the local endpoint: the plain Python engine, as a one-machine user runs it
    os.environ["WR_ENGINE"] = "python"
    os.environ["WR_MEMORY_FORMAT"] = "pandas"

    import boto3
    import pandas as pd
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import awswrangler as wr

    wr.config.s3_endpoint_url = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=wr.config.s3_endpoint_url)
    s3.create_bucket(Bucket="bench")
    for f in _files(args["folder"]):
        s3.upload_file(f, "bench", f"export/{Path(f).name}")
    t0, c0 = time.perf_counter(), time.process_time()
    frames = []
    for chunk in wr.s3.read_json("s3://bench/export/", lines=True, chunksize=200_000):
        items = chunk["Item"]
        records = [{k: (v.get("S") if isinstance(v, dict) else None) for k, v in it.items()} for it in items]
        frames.append(_to_frame(records))
    df = pd.concat(frames)
    df.to_parquet(Path(args["out"]) / "awswrangler.parquet", compression="zstd")
    emit(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, written=len(df))
    server.stop()


CONTENDERS = {"ours": ours, "ours_months": ours_months, "duckdb": duckdb_, "obvious": obvious,
              "awswrangler": awswrangler_}

if __name__ == "__main__":
    if sys.argv[1].startswith("ours"):  # as the `etl` process sets itself up
        from etl.cli import configure_process

        configure_process()
    CONTENDERS[sys.argv[1]](json.loads(sys.argv[2]))
