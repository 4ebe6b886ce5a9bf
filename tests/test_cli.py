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
    assert json.loads(r.output)[0]["stages"]["transform"]["state"] == "done"
