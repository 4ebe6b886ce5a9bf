"""The stream source, end to end on DynamoDB Local: random puts, updates (OrderID added, changed, removed) and
deletes after a backfill, then `catch-up --mode stream`; the index must equal a fresh full backfill's, key for key."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from etl import pipeline
from etl.config import Config
from etl.pipeline import run as run_pipeline
from etl.pipeline import run_verify
from tests.conftest import ddb_client

M = "202601"
EXTRA = "[load]\nmax_wcu = 100000\nmax_rcu = 100000\n"
SCAN = {"ETL_EXPORT_MODE": "scan", "ETL_EXPORT_SCAN_MAX_RCU": "100000"}  # the full backfill: a scan export
DAY = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")  # recent: no order is past its TTL

orders = st.sampled_from([None, "", "O1", "O2", "O3"])
item = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2), orders)  # customer, second, millis, order
op = st.one_of(st.tuples(st.just("put"), item), st.tuples(st.just("update"), st.integers(0, 99), orders),
               st.tuples(st.just("delete"), st.integers(0, 99)))


def tagged(order: str, ms: int) -> str:
    """Two items of one index key never share a whole row here: DynamoDB Local stamps stream records to the
    minute, so every change in the export's minute may already be in the snapshot and is applied idempotently,
    and two identical rows cannot be told apart in it (DynamoDB stamps to the second). Identical rows from two
    items are tested with exact write times in test_catchup.py."""
    return f"{order}-{ms}" if order else order


def source_item(c: int, s: int, ms: int, order: str | None) -> dict[str, Any]:
    # the same customer and second with other millis: one index key (a collision)
    it = {"CustomerID": {"S": f"C{c}"}, "DateTime": {"S": f"{DAY}T10:00:0{s}.{ms:03d}Z"}}
    if order is not None:
        it["OrderID"] = {"S": tagged(order, ms)}
    return it


def index(endpoint: str, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(it["CustomerID"]["S"], it["CreationDateTime"]["N"]): it
            for page in ddb_client(endpoint).get_paginator("scan").paginate(TableName=table) for it in page["Items"]}


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.generate])
@given(initial=st.lists(item, min_size=1, max_size=12), changes=st.lists(op, min_size=1, max_size=15))
def test_stream_catch_up_equals_a_fresh_backfill(ddb_local: str, dest_table: Callable[..., str],
                                                 make_config: Callable[..., Config], tmp_path: Path,
                                                 initial: list[tuple[int, int, int, str | None]],
                                                 changes: list[tuple[Any, ...]]) -> None:
    run = uuid.uuid4().hex[:8]
    ddb = ddb_client(ddb_local)
    cfg = make_config(endpoint=ddb_local, root=str(tmp_path / run / "a"), dest_table=dest_table(None), extra=EXTRA,
                      ETL_DOMAIN=f"s{run}", **SCAN)
    table = cfg.source_table(M)
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "DateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "DateTime", "AttributeType": "S"}],
                     StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    try:
        items = [source_item(*i) for i in initial]
        for it in items:
            ddb.put_item(TableName=table, Item=it)
        run_pipeline(cfg, [M], ("export", "transform", "load"))
        for change in changes:  # after the full export: what only the catch-up can bring
            if change[0] == "put":
                items.append(source_item(*change[1]))
                ddb.put_item(TableName=table, Item=items[-1])
                continue
            target = items[change[1] % len(items)]
            key = {"CustomerID": target["CustomerID"], "DateTime": target["DateTime"]}
            if change[0] == "delete":
                ddb.delete_item(TableName=table, Key=key)
            elif change[2] is None:
                ddb.update_item(TableName=table, Key=key, UpdateExpression="REMOVE OrderID")
            else:
                ms = int(target["DateTime"]["S"][-4:-1])
                ddb.update_item(TableName=table, Key=key, UpdateExpression="SET OrderID = :o",
                                ExpressionAttributeValues={":o": {"S": tagged(change[2], ms)}})
        [r] = pipeline.run_catchup(cfg, [M], mode="stream")
        assert r["changes_in"] == r["before_sync"] + r["applied"] + r["filtered"] + r["rejected"]
        assert r["keys_touched"] == r["puts"] + r["deletes"] + r["unchanged"]
        fresh = make_config(endpoint=ddb_local, root=str(tmp_path / run / "b"), dest_table=dest_table(None),
                            extra=EXTRA, ETL_DOMAIN=f"s{run}", **SCAN)
        run_pipeline(fresh, [M], ("export", "transform", "load"))
        assert index(ddb_local, cfg.destination_table()) == index(ddb_local, fresh.destination_table())
        [v] = run_verify(cfg, [M])
        assert v["ok"], v
        [again] = pipeline.run_catchup(cfg, [M], mode="stream")  # nothing new: one more window, nothing applied
        assert again["windows"][-1]["changes_in"] == 0 and len(again["windows"]) == 2
    finally:
        ddb.delete_table(TableName=table)
