"""The pipeline: skip rules in one place, months that overlap, one month's failure stops only that month."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etl import pipeline, staging
from etl.config import Config
from etl.errors import EtlError
from etl.progress import Reporter
from tests.helpers import write_real_export

A, B = "201604", "201605"
NOW = int(datetime(2016, 7, 1, tzinfo=UTC).timestamp())
FAST = "[load]\nmax_wcu = 100000\nmax_rcu = 100000\n"


def orders(month: str, n: int, customer: str = "C") -> list[dict[str, Any]]:
    return [{"CustomerID": {"S": f"{customer}{i % 50:03d}"}, "DateTime": {"S": f"{month[:4]}-{month[4:]}-10T08:"
             f"{i // 60 % 60:02d}:{i % 60:02d}Z"}, "OrderID": {"S": f"O{i}"}} for i in range(n)]


def export(cfg: Config, tmp_path: Path, month: str, files: list[list[dict[str, Any]]]) -> None:
    pipeline.run_export(cfg, [month], use_existing=str(write_real_export(tmp_path / f"ext{month}", files)))


def test_skip_rules(ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config],
                    tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=dest_table(), extra=FAST)
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert pipeline.skip_reason(cfg, store, "export", A) is None  # nothing committed: run
    export(cfg, tmp_path, A, [orders(A, 30)])
    assert "already committed" in (pipeline.skip_reason(cfg, store, "export", A) or "")
    assert pipeline.skip_reason(cfg, store, "export", A, force=True) is None
    assert pipeline.skip_reason(cfg, store, "transform", A) is None
    pipeline.run(cfg, [A], ("transform", "load", "verify"), now=NOW)
    for stage in ("transform", "load", "verify"):
        assert pipeline.skip_reason(cfg, store, stage, A) is not None, stage
    # what shapes the output changed: the stage and every stage after it run again
    changed = make_config(dest_endpoint=ddb_local, dest_table=cfg.destination_table(),
                          extra=FAST + "[transform]\nttl_seconds = 60\n")
    assert pipeline.skip_reason(changed, store, "transform", A) is None
    other = make_config(dest_endpoint=ddb_local, dest_table=dest_table(), extra=FAST)
    assert pipeline.skip_reason(other, store, "load", A) is None  # loaded into another table
    out = pipeline.run(cfg, [A], now=NOW)
    assert all(out[s][0].get("skipped") for s in ("export", "transform", "load", "verify"))
    [v] = pipeline.run_verify(cfg, [A])  # asked for alone, verify reads the table again
    assert not v.get("skipped") and v["ok"]


def test_one_months_failure_stops_only_that_month(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config()
    export(cfg, tmp_path, A, [orders(A, 20)])
    with pytest.raises(EtlError, match=r"transform failed for 1 of 2 month\(s\): 201605: month 201605 has no "
                                       r"committed export") as e:
        pipeline.run_transform(cfg, [A, B])
    assert "etl transform --month 201605" in (e.value.hint or "")
    store = staging.open_store(cfg.staging.root, cfg.staging)
    assert staging.read_manifest(store, A, "transform") is not None
    assert store.read_json(staging.failed_key(B, "transform"))["rerun"] == "etl transform --month 201605"


def test_a_months_next_stage_starts_while_another_month_is_still_transforming(
        ddb_local: str, dest_table: Callable[..., str], make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(dest_endpoint=ddb_local, dest_table=dest_table(),
                      extra=FAST + '[transform]\nhook = "tests.hooks_example:slow_for_slow_customers"\n')
    export(cfg, tmp_path, A, [orders(A, 40, customer="SLOW")])  # its transform takes two seconds
    export(cfg, tmp_path, B, [orders(B, 40)])
    events = io.StringIO()
    out = pipeline.run(cfg, [A, B], ("transform", "load", "verify"), now=NOW, reporter=Reporter("json", events))
    assert [m["written"] for m in out["load"]] == [40, 40] and all(v["ok"] for v in out["verify"])
    finished = {e["task"]: e["ts"] for e in map(json.loads, events.getvalue().splitlines())
                if e.get("event") == "finish"}
    assert finished[f"verify {B}"] < finished[f"transform {A}"]  # B went all the way while A transformed
