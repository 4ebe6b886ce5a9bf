"""The checkout lookup, the forward writer and TTL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl import aws
from etl.config import Config
from etl.convert import to_epoch_seconds
from etl.pipeline import run_export, run_load, run_transform
from etl.promo import discount_for, months_before, order_item, record_order
from etl.ttl import enable, preview
from tests.conftest import ddb_client
from tests.helpers import write_real_export

AT = datetime(2017, 5, 31, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("at,months,expected", [
    (datetime(2017, 5, 31, 12, tzinfo=UTC), 3, datetime(2017, 2, 28, 12, tzinfo=UTC)),
    (datetime(2016, 5, 31, 12, tzinfo=UTC), 3, datetime(2016, 2, 29, 12, tzinfo=UTC)),
    (datetime(2016, 2, 29, 0, tzinfo=UTC), 24, datetime(2014, 2, 28, 0, tzinfo=UTC)),
    (datetime(2017, 3, 31, 23, 59, 59, tzinfo=UTC), 1, datetime(2017, 2, 28, 23, 59, 59, tzinfo=UTC)),
    (datetime(2017, 1, 15, tzinfo=UTC), 3, datetime(2016, 10, 15, tzinfo=UTC)),
])
def test_calendar_months_clamp_to_month_end(at: datetime, months: int, expected: datetime) -> None:
    assert months_before(at, months) == expected


def test_naive_at_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        months_before(datetime(2017, 1, 1), 3)


@pytest.fixture()
def promo_cfg(ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config]) -> Config:
    return make_config(dest_endpoint=ddb_local, dest_table=dest_table())


def put(cfg: Config, cid: str, created: int, order: str = "O1", expires: int | None = None) -> None:
    ddb = aws.client(cfg.destination, "dynamodb")
    ddb.put_item(TableName=cfg.destination_table(), Item={
        "CustomerID": {"S": cid}, "CreationDateTime": {"N": str(created)}, "OrderID": {"S": order},
        "ExpirationTimestamp": {"N": str(expires if expires is not None else created + 3 * 31536000)}})


def counting(cfg: Config) -> tuple[Any, list[int]]:
    """A client whose Query calls are counted at the edge (a botocore event hook)."""
    client = aws.client(cfg.destination, "dynamodb")
    calls: list[int] = []

    def count(parsed: dict[str, Any], **_: Any) -> None:
        calls.append(parsed.get("Count", 0))

    client.meta.events.register("after-call.dynamodb.Query", count)
    return client, calls


def test_window_boundaries(promo_cfg: Config) -> None:
    loyal_edge = int(months_before(AT, 3).timestamp())
    anniv_edge = int(months_before(AT, 24).timestamp())
    put(promo_cfg, "exactly3", loyal_edge)
    put(promo_cfg, "before3", loyal_edge - 1)
    put(promo_cfg, "exactly24", anniv_edge)
    put(promo_cfg, "before24", anniv_edge - 1)
    client, calls = counting(promo_cfg)
    names = ("exactly3", "before3", "exactly24", "before24", "nobody")
    got = {c: discount_for(c, AT, promo_cfg, client) for c in names}
    assert {c: (d.kind, d.percent) for c, d in got.items()} == {
        "exactly3": ("loyalty", 10), "before3": ("anniversary", 5), "exactly24": ("anniversary", 5),
        "before24": ("none", 0), "nobody": ("none", 0)}
    assert got["exactly3"].evidence == {"CreationDateTime": loyal_edge, "OrderID": "O1",
                                        "ExpirationTimestamp": loyal_edge + 3 * 31536000}
    assert len(calls) == 5  # one Query per question


def test_an_order_after_at_does_not_count(promo_cfg: Config) -> None:
    at = int(AT.timestamp())
    put(promo_cfg, "later", at + 1, "O-after")  # the customer's only order comes a second after `at`
    put(promo_cfg, "both", at - 86400 * 400, "O-old")  # anniversary by itself ...
    put(promo_cfg, "both", at + 86400 * 30, "O-next-month")  # ... and a later order that would make it loyalty
    put(promo_cfg, "edge", at, "O-at")  # an order at exactly `at` counts
    client, calls = counting(promo_cfg)
    got = {c: discount_for(c, AT, promo_cfg, client) for c in ("later", "both", "edge")}
    assert (got["later"].kind, got["later"].percent, got["later"].evidence) == ("none", 0, None)
    assert (got["both"].kind, got["both"].evidence and got["both"].evidence["OrderID"]) == ("anniversary", "O-old")
    assert (got["edge"].kind, got["edge"].evidence and got["edge"].evidence["OrderID"]) == ("loyalty", "O-at")
    assert len(calls) == 3  # still one Query per question


def test_lookup_at_before_a_customers_orders_answers_none(promo_cfg: Config) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    put(promo_cfg, "c9", int(AT.timestamp()) + 86400 * 180, "O-later")
    args = ["--config", promo_cfg.path, "--progress", "quiet", "lookup", "c9"]
    before = CliRunner().invoke(cli, [*args, "--at", AT.isoformat()])
    assert before.exit_code == 0 and before.output.startswith("c9: none: 0% (no unexpired order"), before.output
    after = CliRunner().invoke(cli, [*args, "--at", (AT + timedelta(days=200)).isoformat()])
    assert after.exit_code == 0 and "loyalty: 10% (order O-later" in after.output, after.output


def test_expired_but_not_yet_deleted_is_ignored(promo_cfg: Config) -> None:
    t = int((AT - timedelta(days=10)).timestamp())
    put(promo_cfg, "c", t, "O-expired", expires=int(AT.timestamp()) - 1)
    put(promo_cfg, "c", t - 86400 * 200, "O-old-valid", expires=int(AT.timestamp()) + 3600)
    d = discount_for("c", AT, promo_cfg, aws.client(promo_cfg.destination, "dynamodb"))
    assert (d.kind, d.evidence and d.evidence["OrderID"]) == ("anniversary", "O-old-valid")
    put(promo_cfg, "d", t, "O-expired", expires=int(AT.timestamp()))
    assert discount_for("d", AT, promo_cfg, aws.client(promo_cfg.destination, "dynamodb")).kind == "none"


def test_thousands_of_orders_are_still_one_request(promo_cfg: Config, ddb_local: str) -> None:
    ddb = ddb_client(ddb_local)
    base = int((AT - timedelta(days=600)).timestamp())
    items = [{"PutRequest": {"Item": {"CustomerID": {"S": "big"}, "CreationDateTime": {"N": str(base + i * 3600)},
                                      "OrderID": {"S": f"O{i}"}, "ExpirationTimestamp": {"N": str(2 * 10**9)}}}}
             for i in range(3000)]
    for i in range(0, len(items), 25):
        ddb.batch_write_item(RequestItems={promo_cfg.destination_table(): items[i : i + 25]})
    client, calls = counting(promo_cfg)
    d = discount_for("big", AT, promo_cfg, client)
    assert calls == [5]  # one Query; the Limit held
    assert d.evidence and d.evidence["OrderID"] == "O2999" and d.kind == "anniversary"  # newest of 3000


def test_time_zones_are_explicit(promo_cfg: Config) -> None:
    # 1 Mar 2017 00:30 in +14:00 is still 28 Feb in UTC: the window is computed in the configured zone (UTC)
    at = datetime(2017, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=14)))
    edge = months_before(at.astimezone(UTC), 3)
    assert edge == datetime(2016, 11, 28, 10, 30, tzinfo=UTC)
    put(promo_cfg, "tz", int(edge.timestamp()))
    d = discount_for("tz", at, promo_cfg, aws.client(promo_cfg.destination, "dynamodb"))
    assert d.kind == "loyalty" and d.at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="time zone"):
        discount_for("tz", datetime(2017, 3, 1), promo_cfg, aws.client(promo_cfg.destination, "dynamodb"))


zones = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(min_value=datetime(2016, 1, 1), max_value=datetime(2030, 1, 1), timezones=zones)
orders = st.lists(st.tuples(st.from_regex(r"C[0-9]{6}", fullmatch=True), st.from_regex(r"O[0-9]{8}", fullmatch=True),
                            instants,
                            st.sampled_from(["joda", "nomillis", "date", "epoch"])),
                  min_size=1, max_size=15, unique_by=lambda o: (o[0], o[2].date()))


def source_value(created: datetime, style: str) -> Any:
    if style == "joda":
        return created.isoformat(timespec="milliseconds")
    if style == "nomillis":
        return created.isoformat(timespec="seconds")
    if style == "date":
        return created.date().isoformat()
    return int(created.timestamp())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=orders)
def test_forward_writer_writes_exactly_what_the_backfill_writes(rows: list[Any], ddb_local: str,
                                                                dest_table: Callable[..., str],
                                                                make_config: Callable[..., Config],
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("fw")
    backfill, live = dest_table(), dest_table()
    cfg = make_config(root=str(tmp / "stage"), dest_endpoint=ddb_local, dest_table=backfill,
                      extra="[load]\nmax_wcu = 100000\n")
    items = []
    for cid, oid, created, style in rows:
        v = source_value(created, style)
        items.append({"CustomerID": {"S": cid}, "DateTime": {"N": str(v)} if isinstance(v, int) else {"S": v},
                      "OrderID": {"S": oid}})
    run_export(cfg, ["201601"], use_existing=str(write_real_export(tmp / "ext", [items])), force=True)
    run_transform(cfg, ["201601"], force=True)
    run_load(cfg, ["201601"], include_expired=True)
    live_cfg = make_config(root=str(tmp / "stage"), dest_endpoint=ddb_local, dest_table=live)
    ddb = aws.client(live_cfg.destination, "dynamodb")
    for cid, oid, created, style in rows:
        record_order(cid, oid, source_value(created, style), live_cfg, ddb)

    def scan(table: str) -> list[dict[str, Any]]:
        return sorted(ddb_client(ddb_local).scan(TableName=table)["Items"],
                      key=lambda i: (i["CustomerID"]["S"], i["CreationDateTime"]["N"], i["OrderID"]["S"]))

    assert scan(backfill) == scan(live)
    assert len(scan(live)) == len({(c, to_epoch_seconds(source_value(t, s))) for c, _, t, s in rows})


def test_forward_writer_refuses_what_the_transform_would_quarantine(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    with pytest.raises(ValueError, match="bad_datetime"):
        order_item("C1", "O1", "yesterday", cfg)
    with pytest.raises(ValueError, match="filtered"):
        order_item("C1", "", "2017-01-01T00:00:00Z", cfg)


def test_ttl_enable_is_idempotent_on_moto(moto: str, make_config: Callable[..., Config]) -> None:
    from etl.local import seed

    cfg = make_config(endpoint=moto, root="s3://stage-bucket/x")
    seed(cfg, [], 1)
    first = enable(cfg)
    assert first["changed"] and first["status"] in ("ENABLED", "ENABLING")
    assert first["attribute"] == "ExpirationTimestamp"
    again = enable(cfg)
    assert not again["changed"] and again["status"] in ("ENABLED", "ENABLING")


def test_ttl_preview_counts_match_a_hand_count(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    rows = [{"CustomerID": {"S": f"C{i}"}, "DateTime": {"S": f"2016-04-{i + 1:02d}T00:00:00Z"}, "OrderID": {"S": "O"}}
            for i in range(20)]
    run_export(cfg, ["201604"], use_existing=str(write_real_export(tmp_path / "ext", [rows[:12], rows[12:]])))
    run_transform(cfg, ["201604"])
    at = datetime(2017, 4, 6, 0, 0, tzinfo=UTC)  # one year after 6 April 2016 + the leap day
    hand = sum(1 for i in range(20) if datetime(2016, 4, i + 1, tzinfo=UTC).timestamp() + 31536000 <= at.timestamp())
    [p] = preview(cfg, at)
    assert p == {"month": "201604", "rows": 20, "expired_by": hand, "remaining": 20 - hand} and 0 < hand < 20
