"""Mappings that validate must run, end to end on DynamoDB Local: a string sort key that is also a mapped
column, and a table without a sort key (the collision check, the dedupe and the load key on what the table has)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.config import Config
from etl.pipeline import run_export, run_load, run_transform, run_verify
from tests.conftest import ddb_client
from tests.helpers import write_real_export

M = "201604"
NOW = int(datetime(2016, 6, 1, tzinfo=UTC).timestamp())
FAST = "[load]\nmax_wcu = 100000\nmax_rcu = 100000\n"


def rows() -> list[list[dict[str, Any]]]:
    def r(c: str, t: str, o: str) -> dict[str, Any]:
        return {"CustomerID": {"S": c}, "DateTime": {"S": t}, "OrderID": {"S": o}}

    return [[r("C1", "2016-04-12T10:00:00Z", "O1"), r("C1", "2016-04-13T10:00:00Z", "O2"),
             r("C2", "2016-04-12T10:00:00Z", "O1"), r("C2", "2016-04-12T11:00:00Z", "O1")],  # same (C2, O1)
            [r("C1", "2016-04-14T10:00:00Z", "O1"), r("C3", "2016-04-15T10:00:00Z", "O7")]]  # (C1, O1) again


def scan(endpoint: str, table: str) -> list[dict[str, Any]]:
    return [it for page in ddb_client(endpoint).get_paginator("scan").paginate(TableName=table)
            for it in page["Items"]]


def run_all(cfg: Config, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", rows())))
    [t] = run_transform(cfg, [M])
    [m] = run_load(cfg, [M], now=NOW)
    [v] = run_verify(cfg, [M])
    return t, m, v


def test_a_string_sort_key_that_is_also_a_mapped_column(ddb_local: str, dest_table: Callable[..., str],
                                                         make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table(key=("CustomerID", "S", "OrderID", "S"))
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST, ETL_DESTINATION_SORT_KEY="OrderID")
    t, m, v = run_all(cfg, tmp_path)
    # (C1, O1) twice and (C2, O1) twice: two keys collide, each keeps its smallest row (its earlier time)
    assert (t["collisions"]["keys"], t["collisions"]["losers"]) == (2, 2)
    assert (m["written"], m["deduplicated"]) == (4, 2) and v["ok"] and v["checked"] == 4
    got = {(i["CustomerID"]["S"], i["OrderID"]["S"]): int(i["CreationDateTime"]["N"]) for i in scan(ddb_local, table)}
    assert got == {("C1", "O1"): 1460455200, ("C1", "O2"): 1460541600, ("C2", "O1"): 1460455200,
                   ("C3", "O7"): 1460714400}


def test_a_table_without_a_sort_key(ddb_local: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = "shop_eu_AnniversaryPromo_2017_nosk"
    ddb_client(ddb_local).create_table(
        TableName=table, KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"}],
        ProvisionedThroughput={"ReadCapacityUnits": 1000, "WriteCapacityUnits": 1000})
    try:
        cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST, ETL_DESTINATION_SORT_KEY="")
        t, m, v = run_all(cfg, tmp_path)
        # one item per customer: the greatest OrderID wins, then the smallest row (the earlier time)
        assert (t["collisions"]["keys"], t["collisions"]["losers"]) == (2, 3)
        assert (m["written"], m["deduplicated"]) == (3, 3) and v["ok"] and v["checked"] == 3
        got = {i["CustomerID"]["S"]: (i["OrderID"]["S"], int(i["CreationDateTime"]["N"]))
               for i in scan(ddb_local, table)}
        assert got == {"C1": ("O2", 1460541600), "C2": ("O1", 1460455200), "C3": ("O7", 1460714400)}
    finally:
        ddb_client(ddb_local).delete_table(TableName=table)
