"""Staging keys and stores: the same layout on a local directory and on S3; manifests; the collisions file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from etl import staging
from etl.config import Config
from etl.errors import EtlError
from tests.conftest import s3_client

M = "201604"


def test_every_key_of_a_month() -> None:
    assert staging.export_prefix(M) == "export/month=201604"
    assert staging.export_folder_key(M, "01-ab") == "export/month=201604/AWSDynamoDB/01-ab"
    assert staging.transformed_key(M, 3) == "transformed/month=201604/part-00003.parquet"
    assert staging.rejected_key(M, 3) == "rejected/month=201604/part-00003.jsonl.gz"
    assert staging.load_rejected_key(M, 3) == "rejected/month=201604/load-part-00003.jsonl.gz"
    assert staging.manifest_key(M, "load") == "_state/month=201604/load.json"
    assert staging.failed_key(M, "load") == "_state/month=201604/load.failed.json"
    assert staging.pending_export_key(M) == "_state/month=201604/export.pending.json"
    assert staging.load_part_checkpoint_key(M, 12) == "_state/month=201604/load/part-00012.done"
    assert staging.load_part_checkpoint_key(M, 12).startswith(staging.checkpoints_prefix(M))
    assert staging.collisions_key(M) == "_state/month=201604/transform-collisions.parquet"
    assert staging.transformed_part_key(M, 3) == "_state/month=201604/transform/part-00003.done"
    assert staging.key_fingerprints_key(M, 3, "fp1") == "_state/month=201604/transform/part-00003.keys-fp1.npy"
    for key in (staging.transformed_part_key(M, 3), staging.key_fingerprints_key(M, 3, "fp1")):
        assert key.startswith(staging.transformed_parts_prefix(M))  # `--force` removes them with the checkpoints
    # data keeps Hive partitions; state lives outside the data prefixes
    for key in (staging.transformed_key(M, 0), staging.rejected_key(M, 0)):
        assert "/month=201604/" in key and not key.startswith("_state/")


@pytest.fixture(params=["local", "s3"])
def config(request: pytest.FixtureRequest, tmp_path: Path, make_config: Callable[..., Config]) -> Config:
    if request.param == "local":
        return make_config(root=str(tmp_path / "root"))
    moto = request.getfixturevalue("moto")
    s3_client(moto).create_bucket(Bucket="stage")
    return make_config(endpoint=moto, root="s3://stage/pre/fix")


@pytest.fixture()
def store(config: Config) -> staging.Store:
    return staging.open_store(config.staging.root, config.staging)


def test_stores_behave_alike(store: staging.Store, config: Config) -> None:
    key = staging.transformed_key(M, 0)
    store.write(key, b"abc")
    with store.open_write(staging.rejected_key(M, 0)) as f:
        f.write(b"xyz")
    assert store.read(key) == b"abc" and store.exists(key) and not store.exists(staging.transformed_key(M, 1))
    info = store.head(key)
    assert info is not None and info.size == 3 and info.key == key
    assert [o.key for o in store.list(f"transformed/{staging.month_dir(M)}/")] == [key]
    assert [o.key for o in store.list("")] == sorted([key, staging.rejected_key(M, 0)])
    assert store.md5(key)[1] == "900150983cd24fb0d6963f7d28e17f72"
    assert store.key_uri(key).endswith("/transformed/month=201604/part-00000.parquet")
    store.write_json(staging.manifest_key(M, "transform"), {"written": 1})
    assert staging.known_months(store) == [M]
    assert store.delete_prefix("transformed/") == 1 and not store.exists(key)
    with pytest.raises(EtlError, match="does not exist"):
        store.read(key)
    with staging.open_uri(store.key_uri(staging.rejected_key(M, 0)), config.staging) as f:
        assert f.read() == b"xyz"


def test_s3_location_is_for_s3_only(store: staging.Store) -> None:
    if isinstance(store, staging.S3Store):
        assert store.s3_location("export/month=201604") == ("stage", "pre/fix/export/month=201604")
    else:
        with pytest.raises(EtlError, match="local directory, not S3"):
            store.s3_location("x")


def test_a_manifest_is_written_last_and_clears_an_old_failure(store: staging.Store) -> None:
    staging.record_failure(store, M, "transform", "boom", "etl transform --month 201604")
    assert staging.read_manifest(store, M, "transform") is None
    m = staging.commit_manifest(store, M, "transform", {"written": 5})
    assert staging.read_manifest(store, M, "transform") == m and m["status"] == "done" and m["run_id"]
    assert not store.exists(staging.failed_key(M, "transform"))


def test_collision_losers_round_trip(store: staging.Store) -> None:
    losers = pa.table({"_part": pa.array([1, 0, 1], pa.int32()), "_row": pa.array([9, 4, 2], pa.int64())})
    staging.write_collisions(store, M, losers)
    got = staging.read_losers(store, M)
    assert sorted(got) == [0, 1] and got[1].tolist() == [2, 9] and got[0].tolist() == [4]
    staging.write_collisions(store, M, losers.slice(0, 0))  # none: no file
    assert staging.read_losers(store, M) == {} and not store.exists(staging.collisions_key(M))


def test_key_fingerprints_round_trip_per_scheme(store: staging.Store) -> None:
    prints = np.array([7, 2**40 - 1, 0, 7], np.int64)
    staging.write_key_fingerprints(store, M, 2, "fp1", prints)
    got = staging.read_key_fingerprints(store, M, 2, "fp1")
    assert got is not None and got.dtype == np.int64 and got.tolist() == prints.tolist()
    assert staging.read_key_fingerprints(store, M, 2, "fp2") is None  # another scheme's prints are not these
    assert staging.read_key_fingerprints(store, M, 3, "fp1") is None
    store.write(staging.key_fingerprints_key(M, 3, "fp1"), b"\x93NUMPY cut short")
    assert staging.read_key_fingerprints(store, M, 3, "fp1") is None  # unreadable: made again by the caller
