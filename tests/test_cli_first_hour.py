"""What a new user meets in the first hour (issue 23): printed commands that carry the config they came from, a
clear word when there is no config file, failures that go away when they are dealt with, `--json` and exit codes
as documented, output that fits the terminal, and a misspelled ETL_* variable said."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from etl import commands, staging
from etl.cli import cli
from etl.config import Config, unknown_env_variables
from etl.pipeline import run_export, run_transform
from etl.progress import Reporter, readable
from etl.status import collect
from tests.helpers import item, write_real_export

M = "201604"
ROOT = Path(__file__).parent.parent


def exported(cfg: Config, tmp_path: Path) -> staging.Store:
    """The month exported (an existing export adopted: no AWS needed), nothing after it."""
    run_export(cfg, [M], use_existing=str(write_real_export(tmp_path / "ext", [[item(i) for i in range(5)]])))
    return staging.open_store(cfg.staging.root, cfg.staging)


def invoke(*args: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(cli, list(args), env=env)


# --------------------------------------------------------------------------- printed commands carry --config


def test_status_next_carries_a_config_that_is_not_the_default(make_config: Callable[..., Config],
                                                              tmp_path: Path) -> None:
    cfg = make_config()  # tmp_path/pipeline.toml: not ./pipeline.toml
    exported(cfg, tmp_path)
    r = CliRunner().invoke(cli, ["--config", cfg.path, "--json", "status"])
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)["months"]
    assert row["next"] == f"etl --config {cfg.path} transform --month {M}"
    r = CliRunner().invoke(cli, ["--config", cfg.path, "status"], env={"COLUMNS": "300"})
    assert f"etl --config {cfg.path} transform --month {M}" in r.stdout
    assert commands.config_in_use() is None  # set for one invocation only: the library alone prints no --config
    assert collect(staging.open_store(cfg.staging.root, cfg.staging))[0]["next"] == f"etl transform --month {M}"


def test_render_quotes_and_leaves_the_default_config_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        commands.use_config("pipeline.toml")
        assert commands.render("load", "--month", M) == f"etl load --month {M}"
        commands.use_config(str(tmp_path / "pipeline.toml"))  # the same file, named another way
        assert commands.render("load", "--month", M) == f"etl load --month {M}"
        commands.use_config("my configs/demo.toml")
        assert commands.render("catch-up", "--month", M) == f"etl --config 'my configs/demo.toml' catch-up --month {M}"
        assert commands.render("local up") == "etl --config 'my configs/demo.toml' local up"
    finally:
        commands.use_config(None)


# --------------------------------------------------------------------------- no config file


def test_no_config_file_says_so_and_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no pipeline.toml here
    monkeypatch.delenv("ETL_CONFIG", raising=False)
    for args in (["lookup", "C1"], ["status"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1, r.output
        assert "no ./pipeline.toml found" in r.stderr and "copy pipeline.example.toml to pipeline.toml" in r.stderr
        assert "--config FILE or $ETL_CONFIG" in r.stderr
        assert "<defaults>" not in r.output and "Traceback" not in r.output


# --------------------------------------------------------------------------- failures that go away


def test_a_refused_step_is_not_failed_once_what_it_needed_commits(make_config: Callable[..., Config],
                                                                   tmp_path: Path) -> None:
    cfg = make_config()
    store = staging.open_store(cfg.staging.root, cfg.staging)
    with pytest.raises(Exception, match="no committed export"):
        run_transform(cfg, [M])
    [row] = collect(store, [M])
    assert row["stages"]["transform"]["state"] == "failed"  # refused: recorded as it should be
    exported(cfg, tmp_path)  # the step it needed commits, in the same second or later
    [row] = collect(store, [M])
    assert row["stages"]["transform"]["state"] == "-" and row["next"] == f"etl transform --month {M}"
    run_transform(cfg, [M])
    assert collect(store, [M])[0]["stages"]["transform"]["state"] == "done"


def test_a_month_typed_wrong_can_be_forgotten(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = exported(cfg, tmp_path)
    staging.record_failure(store, "201406", "export", "table CustomerTracker_shop_eu_201406 not found",
                           "etl export --month 201406")
    assert [r["month"] for r in collect(store)] == ["201406", M]
    r = CliRunner().invoke(cli, ["--config", cfg.path, "--json", "status", "--forget-month", "201406"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["forgotten"] == {"201406": ["export"]} and [m["month"] for m in out["months"]] == [M]
    r = CliRunner().invoke(cli, ["--config", cfg.path, "status", "--forget-month", M], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and f"{M}: no failure recorded" in r.stdout
    assert collect(store)[0]["stages"]["export"]["state"] == "done"  # staged data and manifests are kept
    assert "--forget-month" in CliRunner().invoke(cli, ["status", "--help"]).output


def test_an_interrupted_stage_shows_as_interrupted(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    store = exported(cfg, tmp_path)
    staging.record_failure(store, M, "transform", "interrupted (Ctrl-C)", f"etl transform --month {M}",
                           kind="interrupted")
    [row] = collect(store, [M])
    assert row["stages"]["transform"]["state"] == "interrupted" and row["next"] == f"etl transform --month {M}"
    r = CliRunner().invoke(cli, ["--config", cfg.path, "status"], env={"COLUMNS": "200"})
    assert "interrupted" in r.stdout and "failed" not in r.stdout
    with pytest.raises(ValueError, match="kind"):
        staging.record_failure(store, M, "transform", "x", "etl transform", kind="broken")


# --------------------------------------------------------------------------- --json and exit codes


def test_an_error_under_json_is_one_object_on_stdout(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    r = CliRunner().invoke(cli, ["--config", cfg.path, "--progress", "quiet", "--json", "transform", "--month", M])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["command"] == "transform" and out["error"]["exit_code"] == 1
    assert "no committed export" in out["error"]["message"] and out["error"]["hint"]
    assert "error: " in r.stderr  # the red line for people stays on stderr


@pytest.mark.parametrize("args", [["load"], ["load", "--month", "2026-10"], ["export", "--months", "201612-201601"],
                                  ["local", "seed", "--month", "13"]])
def test_a_usage_error_exits_2_and_says_json_under_json(make_config: Callable[..., Config], args: list[str]) -> None:
    cfg = make_config()
    r = CliRunner().invoke(cli, ["--config", cfg.path, *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--config", cfg.path, "--json", *args])
    assert r.exit_code == 2
    [line] = r.stdout.splitlines()  # one object, said once (not again by the enclosing group)
    out = json.loads(line)
    assert out["command"] == " ".join(args[:2] if args[0] == "local" else args[:1]) and out["error"]["exit_code"] == 2


def test_status_json_is_one_object(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    exported(cfg, tmp_path)
    out = json.loads(CliRunner().invoke(cli, ["--config", cfg.path, "status", "--json"]).stdout)
    assert isinstance(out, dict) and out["command"] == "status" and out["staging"]
    assert [m["month"] for m in out["months"]] == [M]


# --------------------------------------------------------------------------- output that fits


def test_status_fits_80_columns_and_cuts_no_timestamp_or_command(make_config: Callable[..., Config],
                                                                 tmp_path: Path) -> None:
    cfg = make_config()
    store = exported(cfg, tmp_path)
    stamp = "2026-11-29T10:00:00.123456+00:00"
    staging.record_failure(store, M, "transform", f"the export changed at {stamp} while the transform ran",
                           f"etl transform --month {M}")
    for columns in (80, 60):
        r = CliRunner().invoke(cli, ["--config", cfg.path, "status"], env={"COLUMNS": str(columns)})
        assert r.exit_code == 0, r.output
        lines = r.stdout.splitlines()
        next_command = f"etl transform --month {M}"  # the failure's rerun, as recorded
        assert any(next_command in line for line in lines), r.stdout  # whole, on one line (soft-wrapped)
        # every line fits but the two a user copies whole: the staging root and the next command
        assert all(len(line) <= columns for line in lines if next_command not in line
                   and not line.startswith("staging: ")), r.stdout
        assert stamp in r.stdout
    wide = CliRunner().invoke(cli, ["--config", cfg.path, "status"], env={"COLUMNS": "250"}).stdout
    assert "┃" in wide and stamp in wide and max(map(len, wide.splitlines())) <= 250  # the table, when it fits


def test_progress_fields_are_words_and_the_end_shows_no_rate_of_the_moment() -> None:
    fields = {"wcu_per_s": 923.4, "budget_wcu_per_s": 1000.0, "in_flight": 64, "rtt_ms": 5.2,
              "limited_by": "budget"}
    assert readable(fields) == "923 of 1,000 WCU/s budget, 64 in flight, round trip 5.2 ms, limited by budget"
    assert readable({**fields, "wcu_per_s": -0.04}).startswith("0 of 1,000 WCU/s budget")
    assert readable(fields, final=True) == "64 in flight, round trip 5.2 ms, limited by budget"
    out = io.StringIO()
    rich = Reporter("rich", out)
    task = rich.task("load 201604", 100, "items")
    task.advance(60, add={"wcu_per_s": 900.0}, in_flight=8)
    task.advance(40, add={"wcu_per_s": -900.04})  # every part took its share back at its end
    task.finish()
    text = out.getvalue()
    assert "wcu_per_s" not in text and "=" not in text and "-0" not in text and "WCU/s" not in text
    assert "items/s on average" in text and "8 in flight" in text
    events = io.StringIO()
    as_json = Reporter("json", events)
    task = as_json.task("load 201604", 10, "items")
    task.advance(10, add={"wcu_per_s": 0.1})
    task.advance(0, add={"wcu_per_s": -0.14})
    task.finish()
    finish = [json.loads(x) for x in events.getvalue().splitlines()][-1]
    assert finish["event"] == "finish" and finish["wcu_per_s"] == 0.0 and str(finish["wcu_per_s"]) == "0.0"


@pytest.mark.parametrize("mode", ["quiet", "json", "rich"])
def test_the_plan_is_readable_lines_in_every_mode(mode: str) -> None:
    out = io.StringIO()
    Reporter(mode, out).plan("destination: t (1,000 WCU)\nestimate: 6,509 items, 7 s")
    if mode == "json":
        [event] = [json.loads(x) for x in out.getvalue().splitlines()]
        assert event["event"] == "plan" and event["lines"] == ["destination: t (1,000 WCU)",
                                                               "estimate: 6,509 items, 7 s"]
    else:
        assert out.getvalue().splitlines() == ["destination: t (1,000 WCU)", "estimate: 6,509 items, 7 s"]


# --------------------------------------------------------------------------- ETL_* variables


def test_a_misspelled_etl_variable_is_said_with_the_nearest_key(make_config: Callable[..., Config]) -> None:
    env = {"ETL_DESTINATON_TABLE_TEMPLATE": "x", "ETL_LOAD_MAX_WCU": "5", "ETL_CONFIG": "c.toml",
           "ETL_RAY_TESTS": "1", "ETL_DDB_LOCAL_DIR": "d", "ETL_TEST_HOOK_FAILS": "1", "ETL_LOCAL_PORT": "5000",
           "ETL_ZZZ": "1"}
    assert unknown_env_variables(env) == [("ETL_DESTINATON_TABLE_TEMPLATE", "ETL_DESTINATION_TABLE_TEMPLATE"),
                                          ("ETL_ZZZ", None)]
    cfg = make_config()
    r = CliRunner().invoke(cli, ["--config", cfg.path, "config", "show"], env={"ETL_LOAD_MAX_WCUU": "5"})
    assert r.exit_code == 0
    [warning] = [x for x in r.stderr.splitlines() if "ETL_" in x]
    assert warning == ("warning: ETL_LOAD_MAX_WCUU is not a setting of etl (did you mean ETL_LOAD_MAX_WCU?); "
                       "it is ignored")


def test_every_etl_variable_the_project_uses_is_known() -> None:
    """The variables the Makefile, the tests, the benchmarks and the docs set are config keys or on the list of
    the others: none of them is warned about."""
    used: set[str] = set()
    for path in [ROOT / "Makefile", *ROOT.glob("*.md"), *ROOT.glob("docs/*"), *ROOT.glob("tests/**/*.py"),
                 *ROOT.glob("bench/*.py"), *ROOT.glob("etl/**/*.py")]:
        if path.is_file():
            used |= set(re.findall(r"\bETL_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    used -= {"ETL_DESTINATON_TABLE_TEMPLATE", "ETL_LOAD_MAX_WCUU", "ETL_ZZZ"}  # this file's own misspellings
    assert len(used) > 10 and unknown_env_variables(dict.fromkeys(used, "")) == []
