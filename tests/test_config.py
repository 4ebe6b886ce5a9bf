from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import load_config
from etl.errors import ConfigError, EtlError
from etl.months import month_range, parse_month, resolve_months


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


def test_example_config_loads_and_builds_table_names() -> None:
    cfg = load_config("pipeline.example.toml", env={})
    assert cfg.source_table("201604") == "CustomerTracker_shop_eu_201604"
    assert cfg.destination_table() == "shop_eu_AnniversaryPromo_2017"
    assert [c.name for c in cfg.transform.columns] == [
        "CustomerID", "CreationDateTime", "OrderID", "ExpirationTimestamp"]
    assert cfg.transform.ttl_seconds == 31_536_000


def test_demo_config_loads() -> None:
    cfg = load_config("demo.toml", env={})
    assert cfg.staging.root.startswith("s3://")
    assert cfg.destination.production is False


def test_bad_value_names_key_file_value_and_what_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain="d"\nregion="r"\n[load]\nwrite_capacity_fraction = 10\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    msg = str(e.value)
    assert "load.write_capacity_fraction" in msg and path in msg and "10" in msg and "0 < f <= 1" in msg


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain="d"\nregion="r"\n[source]\nregoin="us-east-1"\n')
    with pytest.raises(ConfigError, match=r"unknown key source.regoin .*aws_region"):
        load_config(path, env={})


def test_wrong_type_and_bad_region(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="export.concurrency"):
        load_config(write(tmp_path, 'domain="d"\nregion="r"\n[export]\nconcurrency="many"\n'), env={})
    with pytest.raises(ConfigError, match="source.aws_region = 'Ireland'"):
        load_config(write(tmp_path, 'domain="d"\nregion="r"\n[source]\naws_region="Ireland"\n'), env={})


def test_both_budgets_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain="d"\nregion="r"\n[load]\nwrite_capacity_fraction=0.5\nmax_wcu=100\n')
    with pytest.raises(ConfigError, match="not both"):
        load_config(path, env={})


def test_env_overrides_file_and_cli_overrides_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain="d"\nregion="r"\n[staging]\nroot="/a"\n')
    cfg = load_config(path, env={"ETL_STAGING_ROOT": "/b", "ETL_EXPORT_CONCURRENCY": "7"})
    assert cfg.staging.root == "/b" and cfg.export.concurrency == 7
    cfg = load_config(path, env={"ETL_STAGING_ROOT": "/b"}, overrides={"staging": {"root": "/c"}})
    assert cfg.staging.root == "/c"
    with pytest.raises(ConfigError, match="environment ETL_EXPORT_CONCURRENCY"):
        load_config(path, env={"ETL_EXPORT_CONCURRENCY": "x"})


def test_missing_explicit_file_and_template_needs_month(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"), env={})
    path = write(tmp_path, 'domain="d"\nregion="r"\n[source]\ntable_template="T_{domain}"\n')
    with pytest.raises(ConfigError, match=r"\{month\}"):
        load_config(path, env={})


def test_config_hash_changes_with_the_mapping(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, 'domain="d"\nregion="r"\n[transform]\nttl_seconds=10\n'), env={})
    b = load_config(write(tmp_path, 'domain="d"\nregion="r"\n[transform]\nttl_seconds=11\n'), env={})
    assert a.hash_of("transform") != b.hash_of("transform")
    assert a.hash_of("source") == b.hash_of("source")


@pytest.mark.parametrize("bad", ["2016-4", "201613", "201600", "20164", "abcdef", ""])
def test_bad_months_are_refused(bad: str) -> None:
    with pytest.raises(EtlError, match="YYYYMM"):
        parse_month(bad)


def test_month_ranges_are_inclusive_and_cross_years() -> None:
    assert month_range("201511-201602") == ["201511", "201512", "201601", "201602"]
    assert len(month_range("201505-201705")) == 25
    assert resolve_months(["201604,201601", "201604"], ["201512-201601"]) == ["201512", "201601", "201604"]
    with pytest.raises(EtlError, match="comes after"):
        month_range("201605-201601")


def test_table_names_need_domain_and_region_only_when_used(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[local]\nport = 5999\n"), env={})  # enough for `etl local up`
    assert cfg.local.port == 5999
    with pytest.raises(ConfigError, match=r"domain = '' .* ETL_DOMAIN"):
        cfg.source_table("201604")


def test_an_invalid_override_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain="d"\nregion="r"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={"ETL_LOAD_WRITE_CAPACITY_FRACTION": "10"})
    assert "environment ETL_LOAD_WRITE_CAPACITY_FRACTION" in str(e.value) and path not in str(e.value)
    with pytest.raises(ConfigError, match=r"source.aws_region = 'Mars' \(from environment ETL_SOURCE_AWS_REGION\)"):
        load_config(path, env={"ETL_SOURCE_AWS_REGION": "Mars"})
    with pytest.raises(ConfigError, match=r"from command line"):
        load_config(path, env={}, overrides={"export": {"mode": "copy"}})


def test_a_bad_zone_is_named_by_its_own_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: promo.zone = 'Mars/Base'"):
        load_config(write(tmp_path, 'domain="d"\nregion="r"\n[promo]\nzone="Mars/Base"\n'), env={})
    with pytest.raises(ConfigError, match=r"^config: transform.date_zone = 'Nowhere'"):
        load_config(write(tmp_path, 'domain="d"\nregion="r"\n[transform]\ndate_zone="Nowhere"\n'), env={})


MAPPING = """domain="d"
region="r"
[destination]
{dest}
[[transform.columns]]
name = "CustomerID"
source = "CustomerID"
required = {pk_required}
[[transform.columns]]
name = "{second}"
source = "DateTime"
converter = "datetime"
[[transform.columns]]
name = "OrderID"
source = "OrderID"
"""


def test_mappings_that_cannot_run_are_refused_at_load(tmp_path: Path) -> None:
    def load(dest: str = "", pk_required: str = "true", second: str = "CreationDateTime") -> None:
        load_config(write(tmp_path, MAPPING.format(dest=dest, pk_required=pk_required, second=second)), env={})

    with pytest.raises(ConfigError, match=r"transform.columns\[0\].required = False .* true: CustomerID is the "
                                          r"destination's partition_key"):
        load(pk_required="false")
    with pytest.raises(ConfigError, match=r"distinct column names \('OrderID' is named twice\)"):
        load(second="OrderID", dest='sort_key = "OrderID"')
    with pytest.raises(ConfigError, match=r"destination.sort_key = 'Nope'"):
        load(dest='sort_key = "Nope"')
    with pytest.raises(ConfigError, match=r"destination.sort_key = 'CustomerID' .* other than the partition key"):
        load(dest='sort_key = "CustomerID"')
    load(dest='sort_key = "OrderID"')  # a string sort key that is also a mapped column: runs
    load(dest='sort_key = ""')  # a table without a sort key: runs


def test_the_region_falls_back_as_boto3_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'domain="d"\nregion="r"\n[staging]\naws_region = "eu-west-1"\n')
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    cfg = load_config(path, env={"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "us-west-2"})
    assert (cfg.source.aws_region, cfg.staging.aws_region) == ("ap-south-1", "eu-west-1")
    assert dict(cfg.sources)["source.aws_region"] == "environment AWS_REGION"
    cfg = load_config(path, env={"AWS_DEFAULT_REGION": "us-west-2"})
    assert cfg.destination.aws_region == "us-west-2"
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[profile shop]\nregion = sa-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    cfg = load_config(write(tmp_path, 'domain="d"\nregion="r"\n[source]\nprofile = "shop"\n'
                                      '[staging]\naws_region = "eu-west-1"\n[destination]\naws_region = "eu-west-1"\n'),
                      env={})
    assert cfg.source.aws_region == "sa-east-1" and dict(cfg.sources)["source.aws_region"] == "profile shop"
    cfg = load_config(write(tmp_path, 'domain="d"\nregion="r"\n'), env={})  # nothing says: AWS's default, named
    assert cfg.destination.aws_region == "us-east-1"
    assert dict(cfg.sources)["destination.aws_region"].startswith("default (no AWS_REGION")


def test_config_show_names_every_source_and_masks_secrets(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from etl.cli import cli

    path = write(tmp_path, 'domain="d"\nregion="r"\n[source]\naws_region = "eu-west-1"\n'
                           'endpoint_url = "http://user:pw@127.0.0.1:9"\n[staging]\naws_region = "eu-west-1"\n'
                           '[destination]\naws_region = "eu-west-1"\n')
    r = CliRunner(env={"ETL_LOAD_MAX_WCU": "500"}).invoke(cli, ["--config", path, "config", "show", "--json"])
    assert r.exit_code == 0, r.output
    rows = {x["key"]: x for x in json.loads(r.output)["settings"]}
    assert rows["domain"] == {"key": "domain", "value": "d", "source": path}
    assert rows["load.max_wcu"] == {"key": "load.max_wcu", "value": 500.0, "source": "environment ETL_LOAD_MAX_WCU"}
    assert rows["load.concurrency"]["source"] == "default"
    assert rows["source.endpoint_url"]["value"] == "http://***@127.0.0.1:9" and "pw" not in r.output
    r = CliRunner().invoke(cli, ["--config", path, "config", "show"])
    assert r.exit_code == 0 and "transform.ttl_seconds" in r.output and "(default)" in r.output


def test_a_date_pattern_without_a_year_is_refused(tmp_path: Path) -> None:
    """A strptime pattern without a year reads every date as 1900 (and Python 3.15 refuses it): refused at load,
    naming the pattern; one with a year (or %% before a y) is taken."""
    with pytest.raises(ConfigError, match=r"^config: transform.date_formats = '%d/%m %H:%M' .*with a year"):
        load_config(write(tmp_path, 'domain="d"\nregion="r"\n[transform]\ndate_formats=["%d/%m %H:%M"]\n'), env={})
    with pytest.raises(ConfigError, match=r"transform.date_formats = '%d %%Y'"):
        load_config(write(tmp_path, 'domain="d"\nregion="r"\n[transform]\ndate_formats=["%d %%Y"]\n'), env={})
    cfg = load_config(write(tmp_path, 'domain="d"\nregion="r"\n[transform]\ndate_formats=["%d/%m/%y", "%c"]\n'),
                      env={})
    assert cfg.transform.date_formats == ("%d/%m/%y", "%c")
