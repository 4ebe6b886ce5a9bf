"""The bad-input corpus (tests/corpus.py): every kind ends as exactly one outcome (a quarantine record with its
reason and message, an exact write, a counted filter, or one clear error line), the good rows beside it are written
exactly, and the counts reconcile.

The line kinds share one export (a data file per kind) taken through export, transform and load once, on DynamoDB
Local; each file kind is an export of its own, run through the CLI.
"""

from __future__ import annotations

import gzip
import json
import re
import textwrap
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from etl import staging
from etl.cli import cli
from etl.config import Config, load_config
from etl.items import decode_item
from etl.pipeline import run_export, run_load, run_transform
from tests.conftest import ddb_client
from tests.corpus import FILE_KINDS, LINE_KINDS, MAPPING, FileKind, Kind, M, line, row
from tests.helpers import b64md5, write_raw_export

NOW = int(datetime(2016, 6, 1, tzinfo=UTC).timestamp())  # the load's clock: 2016 orders have not expired
RAW = re.compile(r"Traceback|botocore|\b[A-Z][A-Za-z]*(?:Error|Exception)\b")  # a raw exception name, a traceback


def config_file(folder: Path, root: Path, endpoint: str = "", table: str = "") -> Path:
    dest = f'endpoint_url = "{endpoint}"\ntable_template = "{table}"' if endpoint else ""
    path = folder / "pipeline.toml"
    path.write_text(textwrap.dedent(f"""
        domain = "shop"
        region = "eu"
        [staging]
        root = "{root}"
        [destination]
        aws_region = "us-east-1"
        production = false
        {dest}
        [load]
        max_wcu = 100000
        """) + MAPPING)
    return path


def create_table(endpoint: str) -> str:
    name = f"shop_eu_AnniversaryPromo_2017_{uuid.uuid4().hex[:6]}"
    ddb_client(endpoint).create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                   {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                              {"AttributeName": "CreationDateTime", "AttributeType": "N"}])
    return name


def jsonl_gz(store: staging.Store, key: str) -> list[dict[str, Any]]:
    if not store.exists(key):
        return []
    return [json.loads(x) for x in gzip.decompress(store.read(key)).decode().splitlines()]


@dataclass
class Run:
    transform: dict[str, Any]
    load: dict[str, Any]
    parts: list[dict[str, Any]]  # the transform manifest's part of each kind (part i = LINE_KINDS[i])
    rows: list[list[dict[str, Any]]]  # each part's Parquet rows
    rejected: list[list[dict[str, Any]]]  # each part's quarantine records
    load_rejected: list[dict[str, Any]]
    destination: dict[tuple[str, int], dict[str, Any]]  # what DynamoDB holds, by key


@pytest.fixture(scope="module")
def corpus(ddb_local: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("corpus")
    table = create_table(ddb_local)
    cfg: Config = load_config(str(config_file(tmp, tmp / "stage", ddb_local, table)), env={})
    data = [k.data() for k in LINE_KINDS]
    folder = write_raw_export(tmp / "export", [d for d, _ in data], [n for _, n in data])
    run_export(cfg, [M], use_existing=str(folder))
    [t] = run_transform(cfg, [M])
    [load] = run_load(cfg, [M], now=NOW)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    manifest = staging.read_manifest(store, M, "transform")
    assert manifest is not None
    parts = sorted(manifest["parts"], key=lambda p: p["part"])
    items = [it for page in ddb_client(ddb_local).get_paginator("scan").paginate(TableName=table)
             for it in page["Items"]]
    destination = {(d["CustomerID"], d["CreationDateTime"]): d for d in map(decode_item, items)}
    return Run(t, load, parts, [pq.read_table(store.key_uri(p["output"])).to_pylist() for p in parts],
               [jsonl_gz(store, staging.rejected_key(M, p["part"])) for p in parts],
               [r for p in parts for r in jsonl_gz(store, staging.load_rejected_key(M, p["part"]))], destination)


def test_the_corpus_is_at_least_forty_distinct_kinds() -> None:
    ids = [k.id for k in LINE_KINDS] + [f.id for f in FILE_KINDS]
    assert len(ids) == len(set(ids)) >= 40
    assert len({k.data()[0] for k in LINE_KINDS}) == len(LINE_KINDS)


@pytest.mark.parametrize("kind", LINE_KINDS, ids=lambda k: k.id)
def test_a_bad_line_ends_as_its_one_outcome(corpus: Run, kind: Kind) -> None:
    i = LINE_KINDS.index(kind)
    part, rows, rejected = corpus.parts[i], corpus.rows[i], corpus.rejected[i]
    assert rows == kind.good_rows()  # the good rows beside it and the kind's own rows, exactly, in file order
    assert [(r["reason"], r["message"]) for r in rejected] == list(kind.rejected)
    if kind.rejected:  # the raw line, as in the file
        assert [r["line"] for r in rejected] == [x.decode("utf-8", "replace") for x in kind.lines]
    assert part["filtered_by"] == dict(kind.filtered)
    items = kind.data()[1]
    assert (part["items_in"], part["written"], part["filtered"], part["rejected"]) == \
        (items, len(rows), sum(n for _, n in kind.filtered), len(kind.rejected))
    assert part["items_in"] == part["written"] + part["filtered"] + part["rejected"]
    for r in rows:  # each written row, in DynamoDB: as written, or what the load does with it
        key = (r["CustomerID"], r["CreationDateTime"])
        stored = corpus.destination.get(key)
        outcome = kind.load if r in kind.written else ""
        if outcome == "":
            assert stored == {k: v for k, v in r.items() if v is not None}
        elif outcome == "deduplicated":  # the other file's row (the greater OrderID) won the key
            assert stored is not None and stored["OrderID"] == f"O-{r['CustomerID']}" > r["OrderID"]
        else:
            assert stored is None
            quarantined = [q for q in corpus.load_rejected if q["key"] == dict(zip(("CustomerID", "CreationDateTime"),
                                                                                   key, strict=True))]
            assert [q["reason"] for q in quarantined] == (["item_too_large"] if outcome == "item_too_large" else [])


def test_the_month_reconciles_and_the_load_counts_each_load_kind(corpus: Run) -> None:
    t, load = corpus.transform, corpus.load
    assert t["items_in"] == t["written"] + t["filtered"] + t["rejected"] == sum(k.data()[1] for k in LINE_KINDS)
    assert t["rejected_by"] == _count(r for k in LINE_KINDS for r, _ in k.rejected)
    assert t["filtered_by"] == _count(f for k in LINE_KINDS for f, _ in k.filtered)
    c = t["collisions"]
    assert (c["rows"], c["keys"], c["losers"]) == (2, 1, 1)
    loads = _count(k.load for k in LINE_KINDS for _ in k.written if k.load)
    assert (load["skipped_expired"], load["deduplicated"], load["quarantined"]) == \
        (loads["skipped_expired"], loads["deduplicated"], loads["item_too_large"])
    assert load["written"] + load["skipped_expired"] + load["deduplicated"] + load["quarantined"] == t["written"]
    assert load["written"] == len(corpus.destination)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def one_error_line(result: Any, message: str) -> None:
    """Exit 1, `error: <message>` and at most a hint line after it; no traceback, no raw exception name."""
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[0] == f"error: {message}"
    assert all(x.startswith("  -> ") for x in lines[1:]) and len(lines) <= 2, result.output
    assert not RAW.search(result.output), result.output


@pytest.mark.parametrize("kind", FILE_KINDS, ids=lambda k: k.id)
def test_a_damaged_export_ends_as_its_one_outcome(kind: FileKind, tmp_path: Path) -> None:
    folder = kind.build(tmp_path / "export")
    cfg_path = config_file(tmp_path, tmp_path / "stage")
    store = staging.LocalStore(tmp_path / "stage")

    def etl(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--config", str(cfg_path), "--progress", "quiet", *args])

    manifest_files = folder / "manifest-files.json"
    files_md5 = b64md5(manifest_files.read_bytes()) if manifest_files.exists() else ""
    message = kind.message.replace("{folder}", str(folder)).replace("{files_md5}", files_md5)
    exported = etl("export", "--month", M, "--use-existing", str(folder))
    if kind.stage == "export":
        one_error_line(exported, message)
        assert staging.read_manifest(store, M, "export") is None
        return
    assert exported.exit_code == 0, exported.output
    transformed = etl("transform", "--month", M)
    if kind.stage == "transform":
        one_error_line(transformed, message)
        assert staging.read_manifest(store, M, "transform") is None
        assert store.read_json(staging.failed_key(M, "transform"))["rerun"] == \
            f"etl --config {cfg_path} transform --month {M}"  # the config it came from
        return
    assert transformed.exit_code == 0, transformed.output
    manifest = staging.read_manifest(store, M, "transform")
    assert manifest is not None
    got = [r for p in sorted(manifest["parts"], key=lambda p: p["part"])
           for r in pq.read_table(store.key_uri(p["output"])).to_pylist()]
    assert got == list(kind.written)
    assert manifest["items_in"] == manifest["written"] == len(kind.written) and manifest["rejected"] == 0


def test_a_partition_key_over_2048_bytes(ddb_local: str, tmp_path: Path) -> None:
    """DynamoDB refuses a partition key over 2048 bytes: the transform writes the row exactly, the load quarantines
    it before sending (`key_too_long`, with its key's size, never its contents) and writes the good rows beside it."""
    table = create_table(ddb_local)
    cfg = load_config(str(config_file(tmp_path, tmp_path / "stage", ddb_local, table)), env={})
    big = "K" * 2049
    data = gzip.compress(line("G-1") + b"\n" + line(big) + b"\n" + line("G-2") + b"\n")
    run_export(cfg, [M], use_existing=str(write_raw_export(tmp_path / "export", [data], [3])))
    [t] = run_transform(cfg, [M])
    assert t["written"] == 3
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert pq.read_table(store.key_uri(staging.transformed_key(M, 0))).to_pylist() == \
        [row("G-1"), row(big), row("G-2")]
    [loaded] = run_load(cfg, [M], now=NOW)
    assert (loaded["written"], loaded["quarantined"]) == (2, 1)
    assert loaded["written"] + loaded["skipped_expired"] + loaded["deduplicated"] + loaded["quarantined"] == 3
    [q] = jsonl_gz(store, staging.load_rejected_key(M, 0))
    assert q["reason"] == "key_too_long" and "2,049 bytes, over DynamoDB's 2,048" in q["message"]
    assert big not in json.dumps(q["message"])
    ids = {i["OrderID"]["S"] for i in ddb_client(ddb_local).scan(TableName=table)["Items"]}
    assert ids == {"O-G-1", "O-G-2"}
