from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from etl.catalog import register
from etl.cli import cli
from etl.config import Config, load_config
from etl.errors import EtlError
from etl.local import seed
from etl.pipeline import run_export, run_transform


def test_catalog_register_creates_table_and_partitions_once(moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/backfill")
    seed(cfg, ["201604", "201605"], 50)
    run_export(cfg, ["201604", "201605"])
    run_transform(cfg, ["201604"])
    first = register(cfg, "backfill", "promo")
    assert first["created"] and first["partitions_added"] == ["201604"]
    run_transform(cfg, ["201605"])
    second = register(cfg, "backfill", "promo")
    assert not second["created"] and second["partitions_added"] == ["201605"]
    assert second["partitions"] == ["201604", "201605"]
    glue = boto3.client("glue", endpoint_url=moto, region_name="us-east-1")
    t = glue.get_table(DatabaseName="backfill", Name="promo")["Table"]
    assert t["StorageDescriptor"]["Location"] == "s3://stage-bucket/backfill/transformed/"
    assert [c["Name"] for c in t["StorageDescriptor"]["Columns"]] == ["CustomerID", "CreationDateTime", "OrderID",
                                                                       "ExpirationTimestamp"]
    assert [p["Name"] for p in t["PartitionKeys"]] == ["month"]


def test_catalog_needs_s3(make_config: Callable[..., Config]) -> None:
    with pytest.raises(EtlError, match="S3 staging root"):
        register(make_config(), "db", "t")


def test_iam_policy_names_exactly_the_resources() -> None:
    r = CliRunner().invoke(cli, ["--config", "pipeline.example.toml", "iam-policy", "--month", "201604"])
    assert r.exit_code == 0, r.output
    docs = json.loads(r.output)
    src = json.dumps(docs["source"])
    assert "table/CustomerTracker_shop_eu_201604" in src and "201605" not in src
    assert "arn:aws:s3:::my-backfill-staging/anniversary/*" in json.dumps(docs["staging"])
    dest = docs["destination"]["Statement"]
    assert all(a.startswith(("dynamodb:", "sts:")) for s in dest for a in s["Action"])
    assert "dynamodb:DeleteItem" not in json.dumps(docs) and '"dynamodb:*"' not in json.dumps(docs)


def test_iam_policy_wildcards_the_month_without_months(tmp_path: Path) -> None:
    from etl.iam import policies

    cfg = load_config("pipeline.example.toml", env={})
    assert policies(cfg)["source"]["Statement"][0]["Resource"] == [
        "arn:aws:dynamodb:eu-west-1:*:table/CustomerTracker_shop_eu_*"]
