"""Catch-up on Ray: its windows are tasks on the one Runner, so `--engine ray` applies the same changes, with the
window's changes and load run as Ray tasks within the destination's shared budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from etl import pipeline
from etl.config import Config
from tests.test_catchup import INCREMENTAL, MAPPING, fixture_changes, loaded_snapshot, names, unicorn_index

__all__ = ["unicorn_index"]  # the fixture, shared with the local catch-up tests


def test_a_catch_up_on_ray_applies_what_the_local_engine_applies(
        ray_cluster: Any, ddb_local: str, unicorn_index: str, make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=unicorn_index, extra=MAPPING + '[engine]\nkind = "ray"\n',
                      ETL_DESTINATION_SORT_KEY="")
    snapshot = loaded_snapshot(cfg, tmp_path)
    [r] = pipeline.run_catchup(cfg, ["202405"], use_existing=str(INCREMENTAL), adopt_other_table=True)
    lines = fixture_changes()
    deleted = {c["Keys"]["name"]["S"] for c in lines if "NewImage" not in c}
    added = {c["Keys"]["name"]["S"] for c in lines if "OldImage" not in c}
    assert (r["changes_in"], r["applied"], r["puts"], r["deletes"], r["written"]) == (15, 15, 1, 6, 7)
    assert names(ddb_local, unicorn_index) == (snapshot - deleted) | added
    [v] = pipeline.run_verify(cfg, ["202405"])
    assert v["ok"] and v["undeleted"] == 0
