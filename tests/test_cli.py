"""The CLI's output for scripts and for people: one JSON object per command under --json, formatted lines
otherwise (no Python reprs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from etl.cli import cli
from etl.config import Config
from tests.helpers import write_real_export


def test_json_and_text_results(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    items = [{"CustomerID": {"S": f"C{i}"}, "DateTime": {"S": "2016-04-12T10:15:30Z" if i else "yesterday"},
              "OrderID": {"S": f"O{i}"}} for i in range(10)]
    folder = write_real_export(tmp_path / "ext", [items])
    base = ["--config", cfg.path, "--progress", "quiet"]
    r = CliRunner().invoke(cli, [*base, "--json", "export", "--month", "201604", "--use-existing", str(folder)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["command"] == "export" and out["months"][0]["item_count"] == 10 and "files" not in out["months"][0]
    r = CliRunner().invoke(cli, [*base, "--json", "transform", "--month", "201604"])
    [m] = json.loads(r.output)["months"]
    assert (m["items_in"], m["written"], m["rejected"], m["rejected_by"]) == (10, 9, 1, {"bad_datetime": 1})
    r = CliRunner().invoke(cli, [*base, "transform", "--month", "201604", "--force"])
    assert r.exit_code == 0
    assert r.output.strip() == ("transform 201604: 10 items -> 9 rows written, 0 filtered, 1 rejected "
                                "(bad_datetime 1), 0 colliding keys")
    r = CliRunner().invoke(cli, [*base, "--json", "status"])
    assert json.loads(r.output)["months"][0]["stages"]["transform"]["state"] == "done"


def test_every_command_that_prints_says_json_under_the_global_flag(tmp_path: Path) -> None:
    from tests.conftest import free_port

    cfg = tmp_path / "c.toml"
    port = free_port()
    cfg.write_text(f'domain="d"\nregion="r"\n[staging]\nroot="{tmp_path / "stage"}"\n'
                   f'[local]\nport = {port}\nstate_dir = "{tmp_path / "state"}"\n')
    for args, command in ((["ttl", "preview", "--at", "2017-06-01T00:00:00Z"], "ttl preview"),
                          (["local", "up"], "local up"), (["local", "down"], "local down")):
        r = CliRunner().invoke(cli, ["--config", str(cfg), "--json", *args])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["command"] == command
    r = CliRunner().invoke(cli, ["--config", str(cfg), "--json", "config", "show"])
    assert json.loads(r.output)["config_file"] == str(cfg)
