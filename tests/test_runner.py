"""The one Runner: catch-up takes the destination's writing lease as a load does, and `etl status` and `etl run`
agree on what is stale, for every cause of staleness."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etl import freshness, lease, pipeline, staging
from etl.config import Config
from etl.load.preflight import describe_destination
from etl.status import collect
from tests.conftest import ddb_client
from tests.helpers import write_real_export

A = "201604"
NOW = int(datetime(2016, 7, 1, tzinfo=UTC).timestamp())
FAST = "[load]\nmax_wcu = 100000\nmax_rcu = 100000\n"
SCAN = {"ETL_EXPORT_MODE": "scan", "ETL_EXPORT_SCAN_MAX_RCU": "100000"}  # a scan export of a table on moto


def orders(month: str, n: int) -> list[dict[str, Any]]:
    return [{"CustomerID": {"S": f"C{i % 50:03d}"}, "DateTime": {"S": f"{month[:4]}-{month[4:]}-10T08:"
             f"{i // 60 % 60:02d}:{i % 60:02d}Z"}, "OrderID": {"S": f"O{i}"}} for i in range(n)]


def items_in(endpoint: str, table: str) -> int:
    return sum(p["Count"] for p in ddb_client(endpoint).get_paginator("scan").paginate(TableName=table))


def test_a_catch_up_is_refused_while_another_run_loads_the_destination(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra=FAST)
    pipeline.run_export(cfg, [A], use_existing=str(write_real_export(tmp_path / "ext", [orders(A, 40)])))
    pipeline.run(cfg, [A], ("transform", "load"), now=NOW)
    slow = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 20\n")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    before = items_in(ddb_local, table)
    loading = threading.Thread(target=lambda: pipeline.run_load(slow, [A], force=True, now=NOW))
    loading.start()  # a real load, slow enough to hold the destination's lease for a few seconds
    key = staging.destination_lease_key(table)
    deadline = time.monotonic() + 30
    while not store.exists(key):
        assert time.monotonic() < deadline and loading.is_alive(), "the load never took its lease"
        time.sleep(0.05)
    with pytest.raises(lease.LeaseHeld, match=r"loading .* is being run by another process .*`etl load --month "
                                              r"201604`"):
        pipeline.run_catchup(cfg, [A], use_existing=str(tmp_path / "nowhere"))
    assert staging.read_manifest(store, A, "catchup") is None  # nothing planned, captured or applied
    assert not store.exists(staging.failed_key(A, "catchup"))  # not a failure of the month: another run has it
    loading.join(60)
    assert items_in(ddb_local, table) == before


def agree(cfg: Config, store: staging.Store) -> dict[str, str]:
    """Each stage's state in `etl status` (as the CLI computes it), and checked against what `etl run` then
    does: a stage status calls done is skipped by the run, every other one runs."""
    destination = staging.destination_of(describe_destination(cfg))
    now = freshness.Current.of(cfg, destination, pipeline.source_tables(cfg, [A]))
    [row] = collect(store, [A], destination=destination, table=cfg.destination_table(), now=now)
    states = {s: c["state"] for s, c in row["stages"].items()}
    out = pipeline.run(cfg, [A], now=NOW)
    ran = {s: not out[s][0].get("skipped") for s in freshness.ORDER}
    assert {s: states[s] == "done" for s in freshness.ORDER} == {s: not r for s, r in ran.items()}, (states, ran)
    assert all(v["ok"] for v in out["verify"])
    return states


def test_status_and_run_agree_on_every_cause_of_staleness(
        moto: str, ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    table = dest_table()
    src = ddb_client(moto)

    def source_table() -> None:
        src.create_table(TableName="CustomerTracker_shop_eu_201604",
                         KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                                    {"AttributeName": "DateTime", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                               {"AttributeName": "DateTime", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
        for it in orders(A, 30):
            src.put_item(TableName="CustomerTracker_shop_eu_201604", Item=it)

    source_table()
    cfg = make_config(moto, dest_endpoint=ddb_local, dest_table=table, extra=FAST, **SCAN)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    first = agree(cfg, store)
    assert set(first.values()) == {"-"}  # nothing staged: every stage runs
    assert set(agree(cfg, store).values()) == {"done"}  # all current: every stage is skipped

    # the mapping changed: the transform and everything after it
    changed = make_config(moto, dest_endpoint=ddb_local, dest_table=table,
                          extra=FAST, **SCAN, ETL_TRANSFORM_TTL_SECONDS="86400")
    states = agree(changed, store)
    assert states == {"export": "done", "transform": "stale", "load": "stale", "verify": "stale"}

    # another destination (a table of another name), then the same name dropped and created again
    other = make_config(moto, dest_endpoint=ddb_local, dest_table=dest_table(),
                        extra=FAST, **SCAN, ETL_TRANSFORM_TTL_SECONDS="86400")
    assert agree(other, store) == {"export": "done", "transform": "done", "load": "stale", "verify": "stale"}
    assert agree(changed, store) == {"export": "done", "transform": "done", "load": "stale", "verify": "stale"}
    ddb_client(ddb_local).delete_table(TableName=table)
    time.sleep(1.1)  # another creation time
    dest_table(name=table)
    assert agree(changed, store) == {"export": "done", "transform": "done", "load": "stale", "verify": "stale"}

    # the upstream ran again: everything after it
    pipeline.run_export(changed, [A], force=True)
    assert agree(changed, store) == {"export": "done", "transform": "stale", "load": "stale", "verify": "stale"}

    # the source table dropped and created again: the export and everything after it
    src.delete_table(TableName="CustomerTracker_shop_eu_201604")
    time.sleep(1.1)  # another creation time
    source_table()
    assert agree(changed, store) == {"export": "stale", "transform": "stale", "load": "stale", "verify": "stale"}
    assert set(agree(changed, store).values()) == {"done"}
