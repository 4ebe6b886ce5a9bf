from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from etl import staging
from etl.cli import cli
from etl.config import Config
from etl.local import DIRTY_KINDS, generate_month, seed
from etl.status import collect


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(all_commands(cmd, (*prefix, name)))
    return out


@pytest.mark.parametrize("path", all_commands(cli))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(cli, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    cmd: click.Command = cli
    for p in path:
        cmd = cmd.commands[p]  # type: ignore[attr-defined]
    assert cmd.help and len(cmd.help) > 20  # says what it does, not just its name


def test_bad_month_is_one_clear_line_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{tmp_path}"\n')
    r = CliRunner().invoke(cli, ["--config", str(cfg), "export", "--month", "2016-4"])
    assert r.exit_code == 2  # a usage error (click's): the command line is wrong, nothing was tried
    assert "month '2016-4' is not valid" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--config", str(cfg), "export"])
    assert r.exit_code == 2 and "no month given" in r.output


def test_bad_config_value_from_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('domain="d"\nregion="r"\n[load]\nwrite_capacity_fraction=10\n')
    r = CliRunner().invoke(cli, ["--config", str(cfg), "status"])
    assert r.exit_code == 1 and "write_capacity_fraction" in r.output and "Traceback" not in r.output


def test_status_from_manifests_alone(moto: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage-bucket/b")
    seed(cfg, ["201604"], 120)
    path = tmp_path / "pipeline.toml"
    runner = CliRunner()
    r = runner.invoke(cli, ["--config", str(path), "--progress", "quiet", "export", "--month", "201604",
                            "--month", "201605"])
    assert r.exit_code == 3 and "1 of 2 month(s)" in r.output and "201605" in r.output
    store = staging.open_store(cfg.staging.root, cfg.staging)
    rows = {row["month"]: row for row in collect(store)}
    assert rows["201604"]["stages"]["export"]["state"] == "done"
    assert "120 items" in rows["201604"]["stages"]["export"]["summary"]
    assert rows["201604"]["next"] == "etl transform --month 201604"
    assert rows["201605"]["stages"]["export"]["state"] == "failed"
    assert "not found" in rows["201605"]["stages"]["export"]["error"]
    assert rows["201605"]["next"] == f"etl --config {path} export --month 201605"  # as the failed run recorded it
    r = runner.invoke(cli, ["--config", str(path), "status", "--json"])
    assert r.exit_code == 0
    parsed = json.loads(r.output)
    assert [p["month"] for p in parsed["months"]] == ["201604", "201605"]
    r = runner.invoke(cli, ["--config", str(path), "status"])
    assert r.exit_code == 0 and "201605" in r.output and "failed" in r.output


def test_seed_is_deterministic_and_has_dirty_rows() -> None:
    a = generate_month("201604", 3000, 5)
    b = generate_month("201604", 3000, 5)
    assert a == b and a != generate_month("201604", 3000, 6)
    kinds = {r["_dirty"] for r in a if "_dirty" in r}
    assert kinds == set(DIRTY_KINDS)
    orders = [r for r in a if r.get("OrderID", {}).get("S")]
    assert 0.25 < len(orders) / len(a) < 0.42
    dts = [r["DateTime"]["S"] for r in a]
    assert any(d.endswith("Z") for d in dts) and any(len(d) == 10 for d in dts)
    assert any(len(d) == 25 for d in dts)  # without millis: 2016-04-12T10:15:30-07:00
    assert len({(r["CustomerID"]["S"], r["DateTime"]["S"]) for r in a}) == len(a)  # unique source keys


def test_status_marks_a_stage_made_from_an_older_upstream_as_stale(make_config: Callable[..., Config],
                                                                   tmp_path: Path) -> None:
    from etl.pipeline import run_export, run_transform
    from tests.helpers import item, write_real_export

    cfg = make_config()
    folder = write_real_export(tmp_path / "ext", [[item(i) for i in range(3)]])
    run_export(cfg, ["201604"], use_existing=str(folder))
    run_transform(cfg, ["201604"])
    store = staging.open_store(cfg.staging.root, cfg.staging)
    [row] = collect(store)
    assert row["stages"]["transform"]["state"] == "done" and row["next"] == "etl load --month 201604"
    run_export(cfg, ["201604"], use_existing=str(folder), force=True)  # a new export of the month
    [row] = collect(store)
    assert row["stages"]["transform"]["state"] == "stale"
    assert row["next"] == "etl transform --month 201604"
    [again] = run_transform(cfg, ["201604"])  # notices the new export by itself
    assert not again.get("skipped")
    assert collect(store)[0]["stages"]["transform"]["state"] == "done"
