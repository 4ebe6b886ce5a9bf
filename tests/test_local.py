"""`etl local up/down`: a moto server in the background, found by its pid file, stopped alone."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from etl.cli import cli
from etl.local import _answers
from tests.conftest import free_port


def test_local_up_down_in_the_background(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[local]\nport = {port}\nstate_dir = "{tmp_path / "state"}"\n')
    runner = CliRunner()
    r = runner.invoke(cli, ["--config", str(cfg), "local", "up"])
    try:
        assert r.exit_code == 0, r.output
        assert _answers(port) and (tmp_path / "state" / f"moto-{port}.pid").exists()
        again = runner.invoke(cli, ["--config", str(cfg), "local", "up"])
        assert again.exit_code == 0 and "already running" in again.output
    finally:
        down = runner.invoke(cli, ["--config", str(cfg), "local", "down"])
    assert down.exit_code == 0 and "stopped" in down.output
    assert not _answers(port) and not (tmp_path / "state" / f"moto-{port}.pid").exists()
    r = runner.invoke(cli, ["--config", str(cfg), "local", "down"])
    assert r.exit_code == 0 and "no local AWS" in r.output
