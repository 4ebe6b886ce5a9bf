"""notebooks/staged_backfill.ipynb runs top to bottom (nbclient, a real kernel) against a pipeline run whose
staging is on S3 on the local moto server, as after `make demo`, from a working directory outside the
repository, draws its plots, and shows the manifests' numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from etl import staging
from etl.config import Config
from etl.local import seed
from etl.pipeline import run_export, run_load, run_transform

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "staged_backfill.ipynb"

# what the notebook computed, read back after its last cell
PROBE = """
import json as _json
os.environ.pop("ETL_CONFIG", None)
print("PROBE" + _json.dumps({
    "stages": _json.loads(stages.reset_index().to_json(orient="records")),
    "rejected": _json.loads(rejected.groupby(["month", "reason"]).size().reset_index(name="n")
                            .to_json(orient="records")),
    "losers": _json.loads(losers.groupby("month").size().to_json()),
    "orders": _json.loads(orders.groupby("month").size().to_json()),
    "expiry_total": int(expiry.sum()),
    "fallback_config": str(find_config(None)),
}))
"""


def run_notebook(config: Path, cwd: Path) -> dict[str, Any]:
    """Every cell, then PROBE; the figures drawn and what PROBE printed."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(new_code_cell(PROBE))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETL_CONFIG", str(config))
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    [probe] = [o.text for o in outputs if o.output_type == "stream" and o.text.startswith("PROBE")]
    return {**json.loads(probe[len("PROBE"):]), "figures": sum("image/png" in o.get("data", {}) for o in outputs)}


def recent_months(*back: int) -> list[str]:
    first = datetime.now(UTC).replace(day=15)
    out = []
    for n in back:
        y, m = divmod(first.year * 12 + first.month - 1 - n, 12)
        out.append(f"{y}{m + 1:02d}")
    return sorted(out)


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_notebook_runs_against_the_demo_staging_on_s3(moto: str, make_config: Callable[..., Config],
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    # like `make demo`: recent months (one 13 months back, so some orders are past their one-year TTL)
    months = recent_months(13, 2, 1)
    cfg = make_config(endpoint=moto, root="s3://nb-demo-staging/backfill", extra="[load]\nmax_wcu = 5000\n")
    seed(cfg, months, 900)
    run_export(cfg, months)
    run_transform(cfg, months)
    run_load(cfg, months, yes=True)

    elsewhere = tmp_path_factory.mktemp("elsewhere")  # no config in it or above it
    started = datetime.now(UTC)
    got = run_notebook(Path(cfg.path), elsewhere)
    assert datetime.now(UTC) - started < timedelta(seconds=60)
    assert got["figures"] == 5  # stages, reasons, collisions, orders, expiry

    store = staging.open_store(cfg.staging.root, cfg.staging)
    t = {m: staging.read_manifest(store, m, "transform") or {} for m in months}
    ld = {m: staging.read_manifest(store, m, "load") or {} for m in months}
    assert [s["month"] for s in got["stages"]] == months
    for s in got["stages"]:
        m = s["month"]
        assert (s["transform_in"], s["written"], s["filtered"], s["rejected"]) == (
            t[m]["items_in"], t[m]["written"], t[m]["filtered"], t[m]["rejected"])
        assert (s["loaded"], s["expired"], s["deduplicated"]) == (
            ld[m]["written"], ld[m]["skipped_expired"], ld[m]["deduplicated"])
        assert s["collision_losers"] == t[m]["collisions"]["losers"] and s["reconciles"]
    assert {(r["month"], r["reason"]): r["n"] for r in got["rejected"]} == {
        (m, reason): n for m in months for reason, n in t[m]["rejected_by"].items()}
    assert got["losers"] == {m: t[m]["collisions"]["losers"] for m in months if t[m]["collisions"]["losers"]}
    assert got["orders"] == {m: t[m]["written"] for m in months} and got["expiry_total"] == sum(got["orders"].values())
    assert ld[months[0]]["skipped_expired"] > 0 and ld[months[-1]]["written"] > 0
    # without CONFIG or ETL_CONFIG, from outside the repository: this repository's config
    fallback = REPO / "pipeline.toml" if (REPO / "pipeline.toml").exists() else REPO / "demo.toml"
    assert got["fallback_config"] == str(fallback)

    # the same staging copied to a local directory, named relative to the config file: the same numbers
    local = tmp_path_factory.mktemp("local")
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="nb-demo-staging"):
        for obj in page["Contents"]:
            path = local / "stage" / obj["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s3.get_object(Bucket="nb-demo-staging", Key=obj["Key"])["Body"].read())
    (local / "pipeline.toml").write_text('domain = "shop"\nregion = "eu"\n[staging]\nroot = "stage/backfill"\n')
    offline = run_notebook(local / "pipeline.toml", elsewhere)
    assert {k: offline[k] for k in ("stages", "rejected", "losers", "orders", "figures")} == {
        k: got[k] for k in ("stages", "rejected", "losers", "orders", "figures")}
