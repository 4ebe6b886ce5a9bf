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

from etl import pipeline, times
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


def test_a_stream_catch_up_is_in_sync_only_up_to_what_it_read(ddb_local: str, dest_table: Callable[..., str],
                                                              make_config: Callable[..., Config],
                                                              tmp_path: Path) -> None:
    """An open shard may answer empty pages while records are still to come (GetRecords: "it might take multiple
    calls to get to a portion of the shard that contains stream records"): such pages are given at the edge, by a
    botocore hook in front of DynamoDB Local, while an order waits in the shard. The catch-up that read nothing
    claims nothing past its start; the next one applies the order, and one more a record written after a real
    empty page."""
    import json

    import botocore.awsrequest
    from click.testing import CliRunner

    from etl import aws
    from etl.cli import cli

    run = uuid.uuid4().hex[:8]
    ddb = ddb_client(ddb_local)
    env = {"ETL_DOMAIN": f"e{run}", **SCAN}
    cfg = make_config(endpoint=ddb_local, root=str(tmp_path / "a"), dest_table=dest_table(None), extra=EXTRA, **env)
    table = cfg.source_table(M)
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                {"AttributeName": "DateTime", "KeyType": "RANGE"}],
                     AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                           {"AttributeName": "DateTime", "AttributeType": "S"}],
                     StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    held = {"empty": 0}

    def empty_page(params: dict[str, Any], **_: Any) -> Any:
        """While `held`: an empty page whose NextShardIterator is the one asked with (the records wait behind it)."""
        if not held["empty"]:
            return None
        held["empty"] += 1
        iterator = json.loads(params["body"])["ShardIterator"]
        return botocore.awsrequest.AWSResponse(params["url"], 200, {}, None), {"Records": [],
                                                                               "NextShardIterator": iterator}

    def in_sync_to() -> datetime:
        r = CliRunner().invoke(cli, ["--config", cfg.path, "--json", "status"], env=env)
        assert r.exit_code == 0, r.output
        [row] = json.loads(r.output)["months"]
        return times.parse(row["catchup"]["synced_to"])

    def order(c: int) -> dict[str, Any]:
        return source_item(c, 0, 0, "O1")

    hook = aws.session_for(cfg.source).events
    hook.register("before-call.dynamodb-streams.GetRecords", empty_page, unique_id=f"empty-{run}")
    try:
        for c in (0, 1):
            ddb.put_item(TableName=table, Item=order(c))
        run_pipeline(cfg, [M], ("export", "transform", "load"))
        before_a = datetime.now(UTC)
        ddb.put_item(TableName=table, Item=order(2))  # A: waits behind the empty pages
        held["empty"] = 1
        [first] = pipeline.run_catchup(cfg, [M], mode="stream")
        assert held["empty"] > 1 and first["windows"][-1]["changes_in"] == 0  # pages were asked for, none had records
        assert in_sync_to() <= before_a  # not "in sync" past A, which was not read
        assert set(index(ddb_local, cfg.destination_table())) == {("C0", _epoch()), ("C1", _epoch())}
        held["empty"] = 0
        # reads A (and the puts before the export, already held)
        [second] = pipeline.run_catchup(cfg, [M], mode="stream")
        assert second["windows"][-1]["applied"] >= 1
        assert ("C2", _epoch()) in index(ddb_local, cfg.destination_table())
        before_b = datetime.now(UTC)
        assert in_sync_to() <= before_b
        ddb.put_item(TableName=table, Item=order(3))  # B, after the real empty page that ended the last read
        ddb.delete_item(TableName=table, Key={k: order(0)[k] for k in ("CustomerID", "DateTime")})
        assert in_sync_to() <= before_b
        [third] = pipeline.run_catchup(cfg, [M], mode="stream")
        assert third["changes_in"] == third["before_sync"] + third["applied"] + third["filtered"] + third["rejected"]
        assert set(index(ddb_local, cfg.destination_table())) == {("C1", _epoch()), ("C2", _epoch()),
                                                                  ("C3", _epoch())}
        assert in_sync_to() <= datetime.now(UTC)
        fresh = make_config(endpoint=ddb_local, root=str(tmp_path / "b"), dest_table=dest_table(None), extra=EXTRA,
                            **env)  # (rewrites cfg.path: status is asked before)
        run_pipeline(fresh, [M], ("export", "transform", "load"))
        assert index(ddb_local, cfg.destination_table()) == index(ddb_local, fresh.destination_table())
        [v] = run_verify(cfg, [M])
        assert v["ok"], v
    finally:
        hook.unregister("before-call.dynamodb-streams.GetRecords", unique_id=f"empty-{run}")
        ddb.delete_table(TableName=table)


def _epoch() -> str:
    """CreationDateTime of `source_item(c, 0, 0, ...)`: DAY at 10:00:00 UTC, in epoch seconds."""
    return str(int(datetime.fromisoformat(f"{DAY}T10:00:00+00:00").timestamp()))
