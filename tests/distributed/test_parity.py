"""`--engine ray` gives what the local engine gives: the same Parquet row for row, the same manifests' counts,
the same destination items; the CLI's `etl run --engine ray` included."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from click.testing import CliRunner

from etl import staging
from etl.cli import cli
from etl.config import Config
from etl.pipeline import run, run_export
from tests.conftest import ddb_client
from tests.helpers import write_real_export

M = "201604"
NOW = int(datetime(2016, 6, 1, tzinfo=UTC).timestamp())
LIMITS = "[load]\nmax_wcu = 100000\nmax_rcu = 100000\nconcurrency = 4\n"


def month_files() -> list[list[dict[str, Any]]]:
    """Four data files: orders, visits without an order (filtered), bad dates (rejected), key collisions."""
    files: list[list[dict[str, Any]]] = []
    for f in range(4):
        rows = []
        for i in range(f * 1000, f * 1000 + 900):
            rows.append({"CustomerID": {"S": f"C{i % 613:05d}"},
                         "DateTime": {"S": f"2016-04-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i * 7 % 60:02d}"
                                           f".{i % 1000:03d}+02:00"},
                         "OrderID": {"S": f"O{i:07d}"} if i % 3 else {"S": ""}, "URLClicked": {"S": "/x"}})
        rows.append({"CustomerID": {"S": "C00001"}, "DateTime": {"S": "April 2016"}, "OrderID": {"S": "Obad"}})
        rows.append({"CustomerID": {"S": "C00002"}, "DateTime": {"S": "2016-04-02T00:00:00Z"},
                     "OrderID": {"S": f"Ocollide{f}"}})  # the same key in every file: one wins
        files.append(rows)
    return files


def table_items(endpoint: str, table: str) -> list[dict[str, Any]]:
    items = [it for page in ddb_client(endpoint).get_paginator("scan").paginate(TableName=table)
             for it in page["Items"]]
    return sorted(items, key=lambda it: (it["CustomerID"]["S"], int(it["CreationDateTime"]["N"])))


COUNTS = {"transform": ("items_in", "written", "filtered", "rejected", "filtered_by", "rejected_by", "collisions"),
          "load": ("written", "skipped_expired", "deduplicated", "quarantined", "rows", "wcu_consumed"),
          "verify": ("ok", "checked", "missing", "different")}


def test_ray_gives_the_local_engines_parquet_manifests_and_items(
        ray_cluster: Any, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    folder = write_real_export(tmp_path / "ext", month_files())
    out: dict[str, dict[str, Any]] = {}
    for kind in ("local", "ray"):
        table = dest_table()
        cfg = make_config(dest_endpoint=ddb_local, dest_table=table, root=str(tmp_path / kind),
                          extra=LIMITS + f'[engine]\nkind = "{kind}"\n')
        run_export(cfg, [M], use_existing=str(folder))
        manifests = run(cfg, [M], ("transform", "load", "verify"), now=NOW)
        out[kind] = {"cfg": cfg, "table": table, "manifests": {s: ms[0] for s, ms in manifests.items()}}
    local, remote = out["local"], out["ray"]
    for stage, keys in COUNTS.items():
        assert {k: local["manifests"][stage][k] for k in keys} == {k: remote["manifests"][stage][k] for k in keys}
    assert local["manifests"]["verify"]["ok"] and local["manifests"]["transform"]["collisions"]["keys"] == 1
    parts = [(p["output"], p["rows"]) for p in local["manifests"]["transform"]["parts"]]
    assert parts == [(p["output"], p["rows"]) for p in remote["manifests"]["transform"]["parts"]]
    stores = {k: staging.open_store(str(tmp_path / k), out[k]["cfg"].staging) for k in out}
    for key, _ in parts:
        a, b = (pq.read_table(stores[k].key_uri(key)) for k in ("local", "ray"))
        assert a.num_rows > 0 and a.to_pylist() == b.to_pylist() and a.schema == b.schema
        assert stores["local"].read(key) == stores["ray"].read(key)  # byte for byte
    for key in ("rejected/month=201604/part-00000.jsonl.gz", "_state/month=201604/transform-collisions.parquet"):
        assert stores["local"].read(key) == stores["ray"].read(key)
    for part in range(4):
        cps = [json.loads(stores[k].read(staging.load_part_checkpoint_key(M, part))) for k in ("local", "ray")]
        # what differs by run and by destination table: times, run ids, request counts, the table's identity
        differ = ("at", "transform_run", "requests", "runs", "table", "table_arn", "table_created")
        assert [{k: v for k, v in cp.items() if k not in differ} for cp in cps] == [
            {k: v for k, v in cps[0].items() if k not in differ}] * 2
    items = table_items(ddb_local, local["table"])
    assert len(items) == local["manifests"]["load"]["written"] > 1500
    assert items == table_items(ddb_local, remote["table"])


def test_etl_run_with_engine_ray_on_the_command_line(ray_cluster: Any, ddb_local: str,
                                                   dest_table: Callable[..., str],
                                                   make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, root=str(tmp_path / "stage"), extra=LIMITS
                      + "[transform]\nttl_seconds = 3153600000\n")  # a century: none has expired
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", month_files())))
    r = CliRunner().invoke(cli, ["--config", str(tmp_path / "pipeline.toml"), "--progress", "json", "run",
                                 "--month", M, "--engine", "ray", "--yes"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    store = staging.open_store(cfg.staging.root, cfg.staging)
    v = staging.read_manifest(store, M, "verify")
    assert v is not None and v["ok"] and v["checked"] == len(table_items(ddb_local, table)) > 1500
    assert '"event": "progress"' in r.output or '"event": "finish"' in r.output
