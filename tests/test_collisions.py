"""The collision check's key fingerprints: what a task writes beside its part, and what the commit does with
them (and without them). The collision results themselves are checked against a plain Python count in
test_transform.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl import staging
from etl.config import Config
from etl.pipeline import run_transform
from etl.transform import collisions
from tests.test_transform import M, row, stage

KEYS = ["CustomerID", "CreationDateTime"]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.tuples(st.text(max_size=40), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=40),
       cut=st.integers(0, 40))
def test_a_print_depends_only_on_the_key(values: list[tuple[str, int]], cut: int) -> None:
    """The same key gives the same print wherever it sits: another row, a slice (its offsets start past 0),
    another chunking, a large_string column; keys up to 16 bytes that differ give different prints."""
    t = pa.table({"CustomerID": [v[0] for v in values], "CreationDateTime": [v[1] for v in values]})
    prints = collisions.fingerprints(t, KEYS)
    assert prints.dtype == np.int64 and ((prints >= 0) & (prints < 2**40)).all()
    by_key: dict[tuple[str, int], int] = {}
    for key, p in zip(values, prints.tolist(), strict=True):
        assert by_key.setdefault(key, p) == p
    cut = min(cut, len(values))
    pieces = pa.concat_tables([t.slice(0, cut), t.slice(cut)])  # two chunks, the second one sliced
    assert (collisions.fingerprints(pieces, KEYS) == prints).all()
    assert (collisions.fingerprints(t.slice(cut), KEYS) == prints[cut:]).all()
    wide = t.cast(pa.schema([("CustomerID", pa.large_string()), ("CreationDateTime", pa.int64())]))
    assert (collisions.fingerprints(wide, KEYS) == prints).all()
    short = {k: p for k, p in by_key.items() if len(k[0].encode()) <= 16}
    assert len(set(short.values())) == len(short)


def test_prints_tell_apart_strings_that_differ_in_one_byte_anywhere_in_their_first_or_last_16() -> None:
    base = "C" + "0" * 39  # 40 bytes: its first 16 and last 16 are read, the 8 between are not
    variants = [base] + [base[:i] + "1" + base[i + 1:] for i in [*range(16), *range(24, 40)]]
    t = pa.table({"CustomerID": variants})
    assert len(set(collisions.fingerprints(t, ["CustomerID"]).tolist())) == len(variants)


def _parts(store: staging.Store) -> list[dict[str, Any]]:
    manifest = staging.read_manifest(store, M, "transform")
    assert manifest is not None
    return manifest["parts"]


def _losers(store: staging.Store, result: dict[str, Any]) -> list[tuple[int, int]]:
    if not result["losers"]:
        return []
    t = pq.read_table(store.key_uri(str(result["losers_file"])), columns=["_part", "_row"])
    return sorted(zip(t["_part"].to_pylist(), t["_row"].to_pylist(), strict=True))


@pytest.fixture
def colliding(make_config: Callable[..., Config], tmp_path: Path) -> tuple[Config, staging.Store]:
    """Two parts with shared keys within and across them, and near misses (same time, another customer)."""
    cfg = make_config(extra="[transform]\ncollision_bucket_rows = 3\n")  # several buckets
    store = stage(cfg, tmp_path, [
        [row("C1", "2016-04-12T10:15:30Z", "O1"), row("C2", "2016-04-12T10:15:30Z", "O2"),
         row("C1", "2016-04-12T10:15:30Z", "O3"), row("C3", "2016-04-13", "O4")],
        [row("C3", "2016-04-13", "O5"), row("C10", "2016-04-12T10:15:30Z", "O6"), row("C4", "2016-04-14", "O7")]])
    run_transform(cfg, [M])
    return cfg, store


def test_each_part_writes_its_prints_and_the_commit_uses_them(colliding: tuple[Config, staging.Store]) -> None:
    cfg, store = colliding
    parts = _parts(store)
    for p in parts:
        prints = staging.read_key_fingerprints(store, M, int(p["part"]), collisions.scheme(cfg))
        assert prints is not None and len(prints) == p["rows"]
        t = pq.read_table(store.key_uri(str(p["output"])))
        assert (prints == collisions.fingerprints(t, KEYS)).all()
    with_prints = collisions.find_collisions(cfg, store, M, parts)
    assert (with_prints["rows"], with_prints["keys"], with_prints["losers"]) == (4, 2, 2)
    assert _losers(store, with_prints) == [(0, 0), (0, 3)]  # O1 loses to O3; O4 loses to O5 (the greater)
    for p in parts:  # without the files, the prints are made from the parts: the same answer
        store.delete(staging.key_fingerprints_key(M, int(p["part"]), collisions.scheme(cfg)))
    without = collisions.find_collisions(cfg, store, M, parts)
    counts = ("rows", "keys", "losers")
    assert {k: without[k] for k in counts} == {k: with_prints[k] for k in counts}
    assert _losers(store, without) == [(0, 0), (0, 3)]


def test_a_shared_print_is_never_taken_for_a_shared_key(colliding: tuple[Config, staging.Store]) -> None:
    """Prints that all collide (every row the same print) still find exactly the rows that share a key."""
    cfg, store = colliding
    parts = _parts(store)
    for p in parts:
        zeros = np.zeros(int(p["rows"]), np.int64)
        staging.write_key_fingerprints(store, M, int(p["part"]), collisions.scheme(cfg), zeros)
    c = collisions.find_collisions(cfg, store, M, parts)
    assert (c["rows"], c["keys"], c["losers"]) == (4, 2, 2) and _losers(store, c) == [(0, 0), (0, 3)]


def test_prints_of_another_length_or_unreadable_are_made_again(colliding: tuple[Config, staging.Store]) -> None:
    cfg, store = colliding
    parts = _parts(store)
    key0 = staging.key_fingerprints_key(M, 0, collisions.scheme(cfg))
    staging.write_key_fingerprints(store, M, 0, collisions.scheme(cfg), np.arange(2, dtype=np.int64))  # stale: 2 rows
    store.write(staging.key_fingerprints_key(M, 1, collisions.scheme(cfg)), b"not numpy")
    assert staging.read_key_fingerprints(store, M, 1, collisions.scheme(cfg)) is None
    c = collisions.find_collisions(cfg, store, M, parts)
    assert (c["rows"], c["keys"], c["losers"]) == (4, 2, 2) and _losers(store, c) == [(0, 0), (0, 3)]
    assert store.exists(key0)


def test_prints_of_another_destination_key_are_not_read(make_config: Callable[..., Config], tmp_path: Path) -> None:
    """The destination's key changed between a run and a rerun that keeps the first run's parts (their checkpoints
    are for the transform config, which the key is not part of): the old prints are of another key, so the
    check makes this key's from the parts rather than miss a collision."""
    cfg = make_config(extra="[transform]\ncollision_bucket_rows = 3\n")
    store = stage(cfg, tmp_path, [
        [row("C1", "2016-04-12T10:15:30Z", "O1"), row("C1", "2016-04-12T11:15:30Z", "O2")],
        [row("C1", "2016-04-13T10:15:30Z", "O1")]])  # (C1, O1) twice; no (C1, time) twice
    [m] = run_transform(cfg, [M])
    assert m["collisions"]["keys"] == 0
    by_order = make_config(extra="[transform]\ncollision_bucket_rows = 3\n", ETL_DESTINATION_SORT_KEY="OrderID")
    assert collisions.scheme(by_order) != collisions.scheme(cfg)
    c = collisions.find_collisions(by_order, store, M, _parts(store))
    assert (c["rows"], c["keys"], c["losers"]) == (2, 1, 1) and _losers(store, c) == [(1, 0)]
