"""One winner rule for a destination key (`etl.winner`): the full transform and the catch-up pick the same row,
ties on OrderID included, whatever order the rows come in."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl import mapping, staging, winner
from etl.catchup import changes
from etl.config import Config
from etl.engine import TaskContext
from etl.pipeline import run_transform
from etl.transform import collisions
from tests.test_transform import row, stage

SNAPSHOT, FULL = "201604", "201605"  # the catch-up's snapshot month; the month the transform sees whole
NO_SORT_KEY = {"ETL_DESTINATION_SORT_KEY": ""}  # one key per customer: rows of one key differ in their time
X = row("C1", "2016-04-12T10:00:00Z", "O1")  # an older order of the customer: loses to either of
A = row("C1", "2016-04-14T10:00:00Z", "O5")  # two orders with one OrderID (a tie), A later than B
B = row("C1", "2016-04-13T10:00:00Z", "O5")


def transform_winner(cfg: Config, store: staging.Store, month: str) -> tuple[Any, ...]:
    """The row of C1 that the transform keeps: every row of the month but the collision losers."""
    [m] = [x for x in run_transform(cfg, [month]) if x["month"] == month]
    names = mapping.output_schema(cfg).names
    losers = staging.read_losers(store, month)
    kept = []
    for p in m["parts"]:
        rows = pq.read_table(store.key_uri(p["output"])).to_pylist()
        lost = set(losers.get(p["part"], []).tolist()) if p["part"] in losers else set()
        kept += [tuple(r[n] for n in names) for i, r in enumerate(rows) if i not in lost and r["CustomerID"] == "C1"]
    assert len(kept) == 1
    return kept[0]


def change_line(ts: int, item: dict[str, Any]) -> dict[str, Any]:
    """An incremental export's line for a new item."""
    return {"Metadata": {"WriteTimestampMicros": {"N": str(ts)}},
            "Keys": {k: item[k] for k in ("CustomerID", "DateTime")}, "NewImage": item}


def catchup_winner(cfg: Config, store: staging.Store, tmp_path: Path, new: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The row of C1 a catch-up window puts, over the snapshot month's transformed parts and change lines that
    add the items `new` (in that order)."""
    run_transform(cfg, [SNAPSHOT])
    data = tmp_path / "changes.json.gz"
    data.write_bytes(gzip.compress("".join(json.dumps(change_line(1_000_000 + i, it)) + "\n"
                                           for i, it in enumerate(new)).encode()))
    parts = staging.read_manifest(store, SNAPSHOT, "transform")["parts"]  # type: ignore[index]
    task = changes.ChangesTask(
        month=SNAPSHOT, window=1, files=(str(data),), view="NEW_AND_OLD_IMAGES", since_micros=0,
        snapshot_parts=tuple(p["output"] for p in parts), previous_rows=(),
        output=staging.changes_key(SNAPSHOT, 1), rejected=staging.changes_rejected_key(SNAPSHOT, 1),
        rows=staging.catchup_rows_key(SNAPSHOT, 1))
    r = changes.run_task(cfg, task, TaskContext())
    assert (r["applied"], r["keys_touched"], r["puts"], r["deletes"]) == (len(new), 1, 1, 0)
    [put] = pq.read_table(io.BytesIO(store.read(task.output))).to_pylist()
    assert put.pop(mapping.OP) == mapping.PUT
    return tuple(put[n] for n in mapping.output_schema(cfg).names)


@pytest.mark.parametrize("order", ["AB", "BA"])
def test_transform_and_catchup_pick_the_same_row_on_a_tie(make_config: Callable[..., Config], tmp_path: Path,
                                                          order: str) -> None:
    """A and B tie on OrderID for one key; the transform sees them in one export (in file order `order`), the
    catch-up as changes (in write-time order `order`) on a snapshot holding X: both keep B, the smaller row."""
    cfg = make_config(**NO_SORT_KEY)
    new = [{"A": A, "B": B}[c] for c in order]
    store = stage(cfg, tmp_path, [[X, *new]], FULL)
    by_transform = transform_winner(cfg, store, FULL)
    stage(cfg, tmp_path, [[X]], SNAPSHOT)
    by_catchup = catchup_winner(cfg, store, tmp_path, new)
    assert by_transform == by_catchup
    assert by_transform[:3] == ("C1", 1460541600, "O5")  # B: 2016-04-13T10:00:00Z


def _model(rows: list[tuple[str, int | None, str | None]]) -> tuple[str, int | None, str | None]:
    """The rule written out plainly: the greatest OrderID (a row without one last), then the smallest row,
    column by column with a null after any value."""
    def nulls_last(v: Any) -> tuple[bool, Any]:
        return (v is None, v if v is not None else 0)

    by_row = sorted(rows, key=lambda r: tuple(nulls_last(v) for v in r))
    return sorted(by_row, key=lambda r: (r[2] is not None, r[2] or ""), reverse=True)[0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["C1", "C2"]), st.one_of(st.none(), st.integers(-2, 2)),
                               st.one_of(st.none(), st.sampled_from(["O1", "O2", "O10"]))), min_size=1, max_size=12),
       parts=st.integers(1, 3))
def test_both_paths_follow_the_rule_on_any_rows(make_config: Callable[..., Config],
                                                rows: list[tuple[str, int | None, str | None]], parts: int) -> None:
    """Any rows of a table keyed on CustomerID, split over parts in any order: the collision finder's winners
    (every row but its losers) and the catch-up's `winners` are the plainly written rule's."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = make_config(root=d, **NO_SORT_KEY)
        store = staging.open_store(cfg.staging.root, cfg.staging)
        schema = mapping.output_schema(cfg)
        listed, split = [], [rows[i::parts] for i in range(parts)]
        for i, chunk in enumerate(split):
            t = pa.table({"CustomerID": [r[0] for r in chunk], "CreationDateTime": [r[1] for r in chunk],
                          "OrderID": [r[2] for r in chunk], "ExpirationTimestamp": [None] * len(chunk)},
                         schema=pa.schema([f.with_nullable(True) for f in schema]))
            buf = io.BytesIO()
            pq.write_table(t, buf)
            store.write(staging.transformed_key(FULL, i), buf.getvalue())
            listed.append({"part": i, "output": staging.transformed_key(FULL, i), "rows": len(chunk)})
        c = collisions.find_collisions(cfg, store, FULL, listed)
        lost = set()
        if c["losers"]:
            t = pq.read_table(store.key_uri(c["losers_file"]), columns=["_part", "_row"])
            lost = set(zip(t["_part"].to_pylist(), t["_row"].to_pylist(), strict=True))
        kept: dict[str, list[tuple[str, int | None, str | None]]] = {}
        for i, chunk in enumerate(split):
            for j, r in enumerate(chunk):
                if (i, j) not in lost:
                    kept.setdefault(r[0], []).append(r)
        groups: dict[str, list[tuple[str, int | None, str | None]]] = {}
        for r in rows:
            groups.setdefault(r[0], []).append(r)
        want = {k: _model(v) for k, v in groups.items()}
        assert kept == {k: [r] for k, r in want.items()}
        by_catchup = winner.winners({k: [(*r, None) for r in v] for k, v in groups.items()},
                                    schema.names.index("OrderID"))
        assert {k: r[:3] if r else None for k, r in by_catchup.items()} == want
