from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from etl.catalog import register, summary
from etl.config import Config
from etl.errors import EtlError
from etl.local import seed
from etl.pipeline import run_export, run_transform


def test_catalog_registers_four_projected_tables_idempotently(moto: str, make_config: Callable[..., Config],
                                                               tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill")
    seed(cfg, ["201604", "201605"], 60)
    run_export(cfg, ["201604", "201605"])
    run_transform(cfg, ["201604"])
    glue = boto3.client("glue", endpoint_url=moto, region_name="us-east-1")
    # a table made by the older `register` (no projection, one partition per month) is replaced
    glue.create_database(DatabaseInput={"Name": "backfill"})
    old = {"Columns": [{"Name": "CustomerID", "Type": "string"}], "Location": "s3://stage-bucket/backfill/transformed/"}
    glue.create_table(DatabaseName="backfill", TableInput={"Name": "promo", "StorageDescriptor": old,
                                                           "PartitionKeys": [{"Name": "month", "Type": "string"}]})
    glue.create_partition(DatabaseName="backfill", TableName="promo", PartitionInput={
        "Values": ["201604"], "StorageDescriptor": {**old, "Location": old["Location"] + "month=201604/"}})
    first = register(cfg, "backfill", "promo")
    assert [(t["dataset"], t["table"], t["created"]) for t in first["tables"]] == [
        ("export", "anniversary_promo_export", True), ("transformed", "promo", False),
        ("rejected", "anniversary_promo_rejected", True), ("verify", "anniversary_promo_verify", True)]
    assert first["projection"] == {"month": "201604,NOW"}  # from the first staged month
    tables = {t["table"]: glue.get_table(DatabaseName="backfill", Name=t["table"])["Table"] for t in first["tables"]}
    for t, dataset in zip(tables.values(), ("export", "transformed", "rejected", "verify"), strict=True):
        location = f"s3://stage-bucket/backfill/{dataset}/"
        assert t["StorageDescriptor"]["Location"] == location
        assert t["PartitionKeys"] == [{"Name": "month", "Type": "string"}]
        p = t["Parameters"]
        assert (p["projection.enabled"], p["projection.month.type"], p["projection.month.format"]) == (
            "true", "date", "yyyyMM")
        assert (p["projection.month.range"], p["projection.month.interval"], p["projection.month.interval.unit"]) == (
            "201604,NOW", "1", "MONTHS")
        assert p["storage.location.template"] == location + "month=${month}/"
        assert glue.get_partitions(DatabaseName="backfill", TableName=t["Name"])["Partitions"] == []
    columns = {name: [(c["Name"], c["Type"]) for c in t["StorageDescriptor"]["Columns"]] for name, t in tables.items()}
    assert columns == {
        "anniversary_promo_export": [
            ("item", "struct<CustomerID:struct<S:string,N:string>,DateTime:struct<S:string,N:string>,"
                     "OrderID:struct<S:string,N:string>>")],
        "promo": [("customerid", "string"), ("creationdatetime", "bigint"), ("orderid", "string"),
                  ("expirationtimestamp", "bigint")],
        "anniversary_promo_rejected": [("reason", "string"), ("message", "string"), ("file", "string"),
                                       ("line", "string")],
        "anniversary_promo_verify": [("customerid", "string"), ("creationdatetime", "bigint"), ("kind", "string"),
                                     ("differing_columns", "array<string>")]}
    for name in ("promo", "anniversary_promo_verify"):
        assert tables[name]["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
    for name in ("anniversary_promo_export", "anniversary_promo_rejected"):
        serde = tables[name]["StorageDescriptor"]["SerdeInfo"]
        assert serde == {"SerializationLibrary": "org.openx.data.jsonserde.JsonSerDe",
                         "Parameters": {"ignore.malformed.json": "true"}}
    # again, after another month: the same definitions, nothing created
    run_transform(cfg, ["201605"])
    second = register(cfg, "backfill", "promo")
    assert [t["created"] for t in second["tables"]] == [False, False, False, False]
    again = {t["table"]: glue.get_table(DatabaseName="backfill", Name=t["table"])["Table"] for t in second["tables"]}
    for name, t in again.items():
        for key in ("StorageDescriptor", "PartitionKeys", "Parameters", "TableType"):
            assert t[key] == tables[name][key], (name, key)
    assert len(glue.get_tables(DatabaseName="backfill")["TableList"]) == 4
    text = summary(second)
    assert "backfill.anniversary_promo_export" in text and "backfill.anniversary_promo_rejected" in text
    assert all(q["sql"] in text for q in second["queries"])


def test_catalog_tables_match_the_sql_ddl(moto: str, make_config: Callable[..., Config]) -> None:
    """sql/create_*.sql and `etl catalog register` define the same tables (bar the placeholders)."""
    import sqlglot
    from sqlglot import exp

    cfg = make_config(endpoint=moto, root="s3://my-backfill-staging/anniversary")
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(Bucket="my-backfill-staging")
    r = register(cfg)
    glue = boto3.client("glue", endpoint_url=moto, region_name="us-east-1")
    sql = Path(__file__).resolve().parent.parent / "sql"
    for t in r["tables"]:
        table = glue.get_table(DatabaseName=r["database"], Name=t["table"])["Table"]
        create = sqlglot.parse_one((sql / f"create_{t['dataset']}_table.sql").read_text(), read="athena")
        assert create.this.this.name == t["table"]
        ddl_columns = [(c.name.lower(), c.args["kind"].sql("hive").lower().replace(" ", ""))
                       for c in create.this.expressions]
        assert ddl_columns == [(c["Name"], c["Type"].lower()) for c in table["StorageDescriptor"]["Columns"]]
        props = create.args["properties"].expressions
        assert next(p.this.name for p in props if isinstance(p, exp.LocationProperty)) == t["location"]
        projection = ("projection.", "storage.location.template")
        ddl_params = {p.name: p.text("value") for p in props
                      if type(p) is exp.Property and p.name.startswith(projection)}
        glue_params = {k: v for k, v in table["Parameters"].items() if k.startswith(projection)}
        assert ddl_params.pop("projection.month.range") == "201501,NOW"  # a placeholder: edit it to your first month
        assert glue_params.pop("projection.month.range").endswith(",NOW")
        assert ddl_params == glue_params
        serde = [p for p in props if isinstance(p, exp.RowFormatSerdeProperty)]
        assert [s.this.name for s in serde] == (
            [table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]] if serde else [])


def test_catalog_needs_s3(make_config: Callable[..., Config]) -> None:
    with pytest.raises(EtlError, match="S3 staging root"):
        register(make_config(), "db", "t")
