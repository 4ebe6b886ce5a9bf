"""verify: every loaded key read back; missing and different items counted, with examples."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from etl import pipeline
from etl.config import Config
from etl.verify import compare
from tests.conftest import ddb_client
from tests.helpers import write_real_export

M = "201604"
NOW = int(datetime(2016, 6, 1, tzinfo=UTC).timestamp())


def test_compare() -> None:
    assert compare({"a": 1, "b": "x"}, None) is None
    assert compare({"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 5}) == []
    assert compare({"a": 1, "b": "x"}, {"a": 2, "b": "y"}) == ["a", "b"]
    assert compare({"a": 1, "b": None}, {"a": 1}) == []  # a null is an attribute the load left out


def test_missing_and_different_items_are_counted(ddb_local: str, dest_table: Callable[..., str],
                                                 make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 100000\nmax_rcu = 100000\n")
    items = [{"CustomerID": {"S": f"C{i}"}, "DateTime": {"S": f"2016-04-12T10:00:{i:02d}Z"}, "OrderID": {"S": f"O{i}"}}
             for i in range(30)]
    pipeline.run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", [items[:20], items[20:]])))
    pipeline.run(cfg, [M], ("transform", "load"), now=NOW)
    ddb = ddb_client(ddb_local)
    t3 = int(datetime(2016, 4, 12, 10, 0, 3, tzinfo=UTC).timestamp())
    t25 = t3 + 22
    ddb.update_item(TableName=table, Key={"CustomerID": {"S": "C3"}, "CreationDateTime": {"N": str(t3)}},
                    UpdateExpression="SET OrderID = :o", ExpressionAttributeValues={":o": {"S": "CHANGED"}})
    ddb.update_item(TableName=table, Key={"CustomerID": {"S": "C25"}, "CreationDateTime": {"N": str(t25)}},
                    UpdateExpression="SET ExpirationTimestamp = :e", ExpressionAttributeValues={":e": {"N": "1"}})
    ddb.delete_item(TableName=table, Key={"CustomerID": {"S": "C7"}, "CreationDateTime": {"N": str(t3 + 4)}})
    [v] = pipeline.run_verify(cfg, [M])
    assert not v["ok"] and (v["checked"], v["missing"], v["different"]) == (30, 1, 2)
    assert v["missing_examples"] == [{"CustomerID": "C7", "CreationDateTime": t3 + 4}]
    assert sorted((d["CustomerID"], tuple(d["columns"])) for d in v["different_examples"]) == [
        ("C25", ("ExpirationTimestamp",)), ("C3", ("OrderID",))]
