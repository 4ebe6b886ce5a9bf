"""Items DynamoDB would refuse: quarantined with a reason before sending, or found by splitting a refused batch;
the rest of the part is written and the counts reconcile. Against DynamoDB Local (the real validation)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from etl import staging
from etl.config import Config
from etl.errors import EtlError
from etl.pipeline import run_load
from tests.faultproxy import FaultProxy
from tests.test_load import FAST, NOW, M, orders, staged, table_items


@pytest.fixture()
def proxy(ddb_local: str) -> Iterator[Callable[..., FaultProxy]]:
    made: list[FaultProxy] = []

    def make(weights: dict[str, float] | None = None, **kw: Any) -> FaultProxy:
        p = FaultProxy(ddb_local, weights, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def rewrite_part(cfg: Config, change: Callable[[pa.Table], pa.Table], part: int = 0) -> None:
    """Change a staged Parquet part in place (the data the load reads: the edge this test injects at)."""
    store = staging.open_store(cfg.staging.root, cfg.staging)
    path = Path(store.key_uri(staging.transformed_key(M, part)))
    pq.write_table(change(pq.read_table(path)), path)


def set_values(t: pa.Table, column: str, values: dict[int, Any]) -> pa.Table:
    col = t[column].to_pylist()
    for row, v in values.items():
        col[row] = v
    i = t.schema.get_field_index(column)
    return t.set_column(i, t.schema.field(i), pa.array(col, t.schema.field(i).type))


def quarantined(cfg: Config) -> list[dict[str, Any]]:
    store = staging.open_store(cfg.staging.root, cfg.staging)
    return sorted((json.loads(x) for x in gzip.decompress(store.read(staging.load_rejected_key(M, 0))).splitlines()),
                  key=lambda q: q.get("row", -1))


def test_items_dynamodb_would_refuse_are_quarantined_before_sending_and_the_rest_written(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path,
        proxy: Callable[..., FaultProxy]) -> None:
    p = proxy()
    table = dest_table()
    cfg = make_config(dest_endpoint=p.url, dest_table=table, extra=FAST)
    t = staged(cfg, tmp_path, [orders(60)])
    rewrite_part(cfg, lambda t: set_values(set_values(t, "CustomerID", {3: "x" * 2049, 5: "", 7: "é" * 1024}),
                                           "OrderID", {9: "X" * 450_000}))
    [m] = run_load(cfg, [M], now=NOW)
    assert (m["written"], m["quarantined"]) == (57, 3)
    assert m["written"] + m["skipped_expired"] + m["deduplicated"] + m["quarantined"] == t["written"] == 60
    assert m["quarantined_by"] == {"key_too_long": 1, "empty_key": 1, "item_too_large": 1}
    assert [(q["row"], q["reason"]) for q in quarantined(cfg)] == [(3, "key_too_long"), (5, "empty_key"),
                                                                    (9, "item_too_large")]
    assert "2,049 bytes, over DynamoDB's 2,048" in quarantined(cfg)[0]["message"]
    items = table_items(ddb_local, table)
    assert len(items) == 57 and any(k[0] == "é" * 1024 for k in items)  # 2,048 bytes: at the limit, written
    assert sum(s["items"] for s in p.seen) == 57  # the refused ones were never sent


def test_a_sort_key_over_1024_bytes_is_quarantined(ddb_local: str, dest_table: Callable[..., str],
                                                    make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table(key=("CustomerID", "S", "OrderID", "S"))
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST, ETL_DESTINATION_SORT_KEY="OrderID")
    staged(cfg, tmp_path, [orders(30)])
    rewrite_part(cfg, lambda t: set_values(t, "OrderID", {2: "a" * 1025, 4: "b" * 1024}))
    [m] = run_load(cfg, [M], now=NOW)
    assert (m["written"], m["quarantined"]) == (29, 1)
    [q] = quarantined(cfg)
    assert (q["row"], q["reason"]) == (2, "key_too_long") and "sort key OrderID" in q["message"]
    assert len(table_items_by(ddb_local, table, "OrderID")) == 29


def table_items_by(endpoint: str, table: str, sort: str) -> set[tuple[str, str]]:
    from tests.conftest import ddb_client

    return {(it["CustomerID"]["S"], it[sort]["S"]) for page in ddb_client(endpoint).get_paginator("scan")
            .paginate(TableName=table) for it in page["Items"]}


def test_a_refused_batch_is_split_to_find_the_item_the_rest_is_written(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path,
        proxy: Callable[..., FaultProxy]) -> None:
    """A rule the load does not check before sending (a number beyond DynamoDB's range, in a non-key attribute):
    DynamoDB Local refuses the whole batch; splitting it finds the two items."""
    p = proxy()
    table = dest_table()
    cfg = make_config(dest_endpoint=p.url, dest_table=table, extra=FAST)
    staged(cfg, tmp_path, [orders(60)])
    rewrite_part(cfg, lambda t: t.append_column("Score", pa.array([1e200 if i in (4, 17) else 1.5
                                                                   for i in range(t.num_rows)], pa.float64())))
    [m] = run_load(cfg, [M], now=NOW)
    assert (m["written"], m["quarantined"]) == (58, 2)
    assert m["quarantined_by"] == {"refused_by_dynamodb": 2}
    q = quarantined(cfg)
    assert [x["row"] for x in q] == [4, 17] and all("Number overflow" in x["message"] for x in q)
    assert {x["key"]["CustomerID"] for x in q} == {"C00004", "C00017"}
    assert len(table_items(ddb_local, table)) == 58
    assert min(s["items"] for s in p.seen) == 1 and sum(s["items"] for s in p.seen) > 60  # split, sent again


def test_a_refusal_about_the_table_fails_clearly_and_quarantines_nothing(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path,
        proxy: Callable[..., FaultProxy]) -> None:
    """Every item was checked against the table's key at the start, so a refusal naming the key schema is the
    table's (created again with another key?), not an item's; and when every item tried is refused and none
    written, that is no item's fault either."""
    table = dest_table()
    p = proxy({"invalid": 1.0})  # "Missing the key CreationDateTime in the item"
    cfg = make_config(dest_endpoint=p.url, dest_table=table, extra=FAST)
    staged(cfg, tmp_path, [orders(60)])
    store = staging.open_store(cfg.staging.root, cfg.staging)
    with pytest.raises(EtlError, match="key schema: One or more parameter values were invalid: Missing the key") as e:
        run_load(cfg, [M], now=NOW)
    assert "etl load --month 201604" in (e.value.hint or "")
    assert store.read_json(staging.failed_key(M, "load"))["rerun"] == "etl load --month 201604"
    assert not store.exists(staging.load_rejected_key(M, 0))
    assert not store.exists(staging.load_part_checkpoint_key(M, 0))
    p2 = proxy({"invalid": 1.0}, invalid_message="Number overflow. Attempting to store a number with magnitude "
                                                  "larger than supported range")
    cfg = make_config(dest_endpoint=p2.url, dest_table=table, extra=FAST)
    with pytest.raises(EtlError, match="refused each of the first 25 items of part 0 as invalid and wrote none"):
        run_load(cfg, [M], now=NOW)
    assert table_items(ddb_local, table) == {} and not store.exists(staging.load_part_checkpoint_key(M, 0))


def test_a_key_column_of_another_type_than_the_tables_fails_the_part(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST)
    staged(cfg, tmp_path, [orders(10)])
    rewrite_part(cfg, lambda t: t.set_column(1, "CreationDateTime", pc.cast(t["CreationDateTime"], pa.string())))
    with pytest.raises(EtlError, match="key CreationDateTime is string in the Parquet, but .* keys it as N"):
        run_load(cfg, [M], now=NOW)
    assert table_items(ddb_local, table) == {}
