"""The load's budget against global secondary indexes (DynamoDB Local: real consumed capacity per index), the
plan's write units, cost and warm-throughput advice, and the dry run's counts through the CLI."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from etl.cli import cli
from etl.config import Config
from etl.pipeline import run_load
from etl.progress import Reporter
from tests.conftest import ddb_client
from tests.test_load import NOW, M, orders, staged, table_items


@pytest.fixture()
def gsi_table(ddb_local: str) -> Iterator[Callable[..., str]]:
    """A destination with one GSI on OrderID (KEYS_ONLY), provisioned with `index_wcu`, below the table's."""
    made: list[str] = []

    def make(table_wcu: int = 1000, index_wcu: int = 40) -> str:
        name = f"shop_eu_AnniversaryPromo_2017_{uuid.uuid4().hex[:6]}"
        ddb_client(ddb_local).create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "CustomerID", "KeyType": "HASH"},
                       {"AttributeName": "CreationDateTime", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "CustomerID", "AttributeType": "S"},
                                  {"AttributeName": "CreationDateTime", "AttributeType": "N"},
                                  {"AttributeName": "OrderID", "AttributeType": "S"}],
            ProvisionedThroughput={"ReadCapacityUnits": 1000, "WriteCapacityUnits": table_wcu},
            GlobalSecondaryIndexes=[{"IndexName": "byOrder",
                                     "KeySchema": [{"AttributeName": "OrderID", "KeyType": "HASH"}],
                                     "Projection": {"ProjectionType": "KEYS_ONLY"},
                                     "ProvisionedThroughput": {"ReadCapacityUnits": 100,
                                                               "WriteCapacityUnits": index_wcu}}])
        made.append(name)
        return name

    yield make
    for name in made:
        ddb_client(ddb_local).delete_table(TableName=name)


def plan_of(buf: io.StringIO) -> str:
    events = list(map(json.loads, buf.getvalue().splitlines()))
    return "\n".join([line for e in events if e["event"] == "plan" for line in e["lines"]]
                     + [e["message"] for e in events if e["event"] == "info"])


def test_a_fraction_holds_each_index_to_its_own_capacity(ddb_local: str, gsi_table: Callable[..., str],
                                                         make_config: Callable[..., Config], tmp_path: Path) -> None:
    """Table 1,000 WCU, its index 40: at a fraction of 0.5 the index (20 WCU/s) governs, not the table (500)."""
    table = gsi_table(table_wcu=1000, index_wcu=40)
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table,
                      extra="[load]\nwrite_capacity_fraction = 0.5\nmax_rcu = 10000\n")
    staged(cfg, tmp_path, [orders(60), orders(40, 60)])
    buf = io.StringIO()
    [m] = run_load(cfg, [M], now=NOW, reporter=Reporter("json", stream=buf))
    plan = plan_of(buf)
    assert "table " + table + ": 1000 WCU provisioned -> 500 WCU/s" in plan
    assert "index byOrder: 40 WCU provisioned -> 20 WCU/s for its share of each write (governs)" in plan
    assert "+ 100 on index byOrder = 200 WCU" in plan  # every item has an OrderID: one index write each
    assert m["written"] == 100 and len(table_items(ddb_local, table)) == 100
    # DynamoDB Local charged the index for every item, and the budget was charged what it reported
    assert m["wcu_consumed_by_index"] == {"byOrder": 100.0} and m["wcu_consumed"] == 200.0
    # the index's 20 WCU/s held: 100 index units cannot have gone out in less than (100 - one request) / 20 s
    assert m["duration_s"] >= (100 - 25) / 20
    # progress said what held the rate: the budget (the index's share), in the table's units
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    progress = [e for e in events if e["event"] == "progress" and "limited_by" in e]
    assert progress and {e["limited_by"] for e in progress} == {"budget"}
    assert {e["budget_wcu_per_s"] for e in progress} == {20.0}
    assert [e for e in events if e["event"] == "finish"][-1]["wcu_per_s"] == pytest.approx(0, abs=0.5)


def test_an_absolute_budget_is_the_total_over_table_and_indexes(ddb_local: str, gsi_table: Callable[..., str],
                                                                make_config: Callable[..., Config],
                                                                tmp_path: Path) -> None:
    table = gsi_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 100000\nmax_rcu = 10000\n")
    staged(cfg, tmp_path, [orders(200)])
    buf = io.StringIO()
    [m] = run_load(cfg, [M], now=NOW, reporter=Reporter("json", stream=buf))
    plan = plan_of(buf)
    assert "100000 WCU/s (max_wcu) over the table and its 1 global secondary index(es) together" in plan
    assert "each write reaches up to 2 places (table, byOrder): about 50,000 items/s of 1 WCU" in plan
    assert "above the 1040 WCU provisioned" in plan  # 100,000 is more than the table and index have
    assert m["wcu_consumed"] == 400.0 and m["wcu_consumed_by_index"] == {"byOrder": 200.0}


def test_the_plan_shows_write_units_and_cost_and_the_dry_run_counts_them(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    table = dest_table(wcu=None)  # on demand
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table,
                      extra="[load]\nmax_wcu = 8000\nprice_per_million_wcu = 1.25\n")
    files = [orders(300)]
    files[0].append({"CustomerID": {"S": "C00001"}, "DateTime": {"S": "2016-04-12T10:00:01.999-07:00"},
                     "OrderID": {"S": "OZZZ"}})  # collides with O0000001: one deduplicated
    staged(cfg, tmp_path, files)
    buf = io.StringIO()
    [m] = run_load(cfg, [M], now=NOW, dry_run=True, reporter=Reporter("json", stream=buf))
    plan = plan_of(buf)
    assert "write units: about 300 items (100% at 1 WCU) = 300 WCU on the table (from a sample of 301 rows)" in plan
    assert "cost: about $0.00 at $1.25 per million write request units" in plan
    assert "no warm throughput reported for " + table in plan  # DynamoDB Local has none
    assert (m["written"], m["deduplicated"], m["skipped_expired"]) == (300, 1, 0)
    assert m["wcu_estimated"] == {"table": 300} and m["cost_usd"] == pytest.approx(300 * 1.25 / 1e6, abs=1e-4)
    assert table_items(ddb_local, table) == {}
    # through the CLI, today: the rows of 2016 have expired, unless included
    dry = ["--config", cfg.path, "--progress", "quiet", "load", "--month", M, "--dry-run"]
    r = CliRunner().invoke(cli, [*dry, "--include-expired"])
    assert r.exit_code == 0, r.output
    assert ("300 would be written, 0 expired skipped, 1 deduplicated, 0 quarantined; 300 WCU (300 on the table), "
            "$0.00 at $1.25 per million write units") in r.output
    r = CliRunner().invoke(cli, dry)
    assert "0 would be written, 300 expired skipped, 1 deduplicated" in r.output


def test_the_writer_reports_each_indexs_share(ddb_local: str, gsi_table: Callable[..., str],
                                              make_config: Callable[..., Config]) -> None:
    import orjson

    from etl.load.writer import BatchWriter

    table = gsi_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table)
    puts: list[Any] = [{"PutRequest": {"Item": {"CustomerID": {"S": "a"}, "CreationDateTime": {"N": str(i)},
                                                "OrderID": {"S": f"o{i}"}}}} for i in range(3)]
    puts.append({"PutRequest": {"Item": {"CustomerID": {"S": "b"}, "CreationDateTime": {"N": "1"}}}})  # no OrderID
    reply = BatchWriter(cfg.destination, table).write([orjson.dumps(p) for p in puts])
    assert reply.outcome == "ok" and reply.consumed == 7.0 and reply.per_index == {"byOrder": 3.0}
    assert reply.rtt > 0


def test_a_month_transformed_after_the_plan_says_its_units_and_cost_when_its_load_starts(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    from etl.pipeline import run, run_export
    from tests.helpers import write_real_export

    table = dest_table()
    cfg = make_config(dest_endpoint=ddb_local, dest_table=table, extra="[load]\nmax_wcu = 100000\n")
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", [orders(120)])))
    buf = io.StringIO()
    out = run(cfg, [M], ("transform", "load"), reporter=Reporter("json", stream=buf), now=NOW)
    plan = plan_of(buf)
    assert "after their transform: 201604" in plan and "said as each month's load starts" in plan
    assert "load 201604: write units: about 120 items (100% at 1 WCU) = 120 WCU on the table" in plan
    assert out["load"][0]["written"] == 120


def test_an_on_demand_table_below_the_budget_starts_at_its_warm_throughput(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    """Against the benchmark's stand-in for DynamoDB, which reports a warm throughput (DynamoDB Local does not)."""
    import subprocess
    import sys
    import time

    from tests.conftest import free_port

    port, ready = free_port(), tmp_path / "sink.ready"
    sink = subprocess.Popen([sys.executable, "-m", "bench.sink", json.dumps({
        "port": port, "table": "shop_eu_sink", "seconds": 120, "ready": str(ready), "warm_write_units": 2000})],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        while not ready.exists():
            assert sink.poll() is None, "the sink did not start"
            time.sleep(0.05)
        cfg = make_config(dest_endpoint=f"http://127.0.0.1:{port}", dest_table="shop_eu_sink",
                          extra="[load]\nmax_wcu = 50000\n")
        staged(cfg, tmp_path, [orders(1000)])
        buf = io.StringIO()
        [m] = run_load(cfg, [M], now=NOW, reporter=Reporter("json", stream=buf))
        plan = plan_of(buf)
        assert "warm throughput of shop_eu_sink: 2,000 write units/s" in plan
        assert "the load starts at 2,000 and at most doubles every 30 min (full budget after about 139 min)" in plan
        assert "aws dynamodb update-table --table-name shop_eu_sink --warm-throughput WriteUnitsPerSecond=50000" in plan
        assert "time: about 0.0 min at 50,000 WCU/s of table writes, ramping from 2,000" in plan
        assert m["written"] == 1000 and m["budget_share"] < 0.1  # at the ramp's start, far below the budget
    finally:
        sink.kill()
        sink.wait()
