"""The pipeline under faults injected at the edge (a proxy in front of moto's server and DynamoDB Local), and
killed with SIGKILL then resumed: small versions of `make reliability` (bench/reliability.py). Every run ends
exact: verify passes, the counts reconcile, and the destination and the staged Parquet hold exactly the rows
of a clean run."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import recent_months
from bench.reliability import (
    Reference,
    Servers,
    kill_trial,
    run_cell,
    seed_sources,
)
from etl import lease, staging
from etl.config import AwsSide
from tests.conftest import s3_client
from tests.faultproxy import FaultProxy, Request, everything

ROWS = 400
MONTHS = recent_months(3)


@pytest.fixture(scope="module")
def env(moto_endpoint: str, ddb_local: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Servers, Reference, Path]]:
    """Three seeded months, both proxies, and a clean run's rows to compare with."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    work = tmp_path_factory.mktemp("faults")
    s = Servers(moto_endpoint, ddb_local, FaultProxy(moto_endpoint, scope=everything, seed=3),
                FaultProxy(ddb_local, scope=everything, seed=4))
    try:
        seed_sources(s, MONTHS, ROWS, work)
        clean, ref = run_cell(s, "none", "-", MONTHS, ROWS, work, None, seed=1)
        assert clean.exact, clean.problems
        assert sum(ref.table.values()) > 300 and sum(ref.staged.values()) >= sum(ref.table.values())
        yield s, ref, work
    finally:
        s.src.close()
        s.dst.close()


@pytest.mark.parametrize("kind", ["reset_mid", "error500", "throttle+partial", "reset+slow"])
def test_every_stage_under_faults_ends_exact(env: tuple[Servers, Reference, Path], kind: str) -> None:
    """20% of the requests each kind applies to fail, in export (scan), transform and load."""
    s, ref, work = env
    cell, _ = run_cell(s, kind, "all", MONTHS, ROWS, work, ref, seed=2, rate=0.2)
    assert cell.injected > 0, "the proxy injected no fault"
    assert cell.first_try, cell.errors  # the faults were absorbed, not turned into a failed stage
    assert cell.exact, (cell.problems, cell.lost, cell.extra, cell.staged_diff)
    assert (cell.verify_missing, cell.verify_different, cell.lost) == (0, 0, 0)
    if "slow" not in kind.split("+"):  # every fault was answered by a retry (or a body read on where it broke)
        assert cell.retries >= cell.injected


def test_a_body_cut_halfway_is_read_on_from_where_it_broke(moto_endpoint: str) -> None:
    moto = moto_endpoint  # not reset: the module's seeded months stay
    s3 = s3_client(moto)
    s3.create_bucket(Bucket="cut")
    data = os.urandom(300_000)
    s3.put_object(Bucket="cut", Key="p/big.bin", Body=data)
    cuts = iter(range(3))
    proxy = FaultProxy(moto, {"reset_mid": 1.0}, scope=lambda r: r.op == "GetObject" and next(cuts, None) is not None)
    try:
        store = staging.open_store("s3://cut/p", AwsSide(aws_region="us-east-1", endpoint_url=proxy.url))
        assert store.read("big.bin") == data
        assert proxy.faults == {"reset_mid": 3} and proxy.resumes == 3  # not the whole object again
        s3.put_object(Bucket="cut", Key="p/big.bin", Body=os.urandom(300_000))
        cuts = iter(range(1))
        with store.open_read("big.bin") as f:  # replaced while it was read: fails instead of splicing two objects
            s3.put_object(Bucket="cut", Key="p/big.bin", Body=data)
            with pytest.raises(Exception, match="PreconditionFailed|412"):
                f.read()
    finally:
        proxy.close()


def test_a_lease_whose_create_answer_was_lost_is_ours(moto_endpoint: str) -> None:
    moto = moto_endpoint
    s3_client(moto).create_bucket(Bucket="leases")
    first = iter(range(1))

    def first_lease_put(r: Request) -> bool:
        return r.op == "PutObject" and r.path.endswith(".lease") and next(first, None) is not None

    proxy = FaultProxy(moto, {"reset": 1.0}, scope=first_lease_put)  # S3 takes the put, the answer never comes
    try:
        store = staging.open_store("s3://leases/x", AwsSide(aws_region="us-east-1", endpoint_url=proxy.url))
        with lease.acquire(store, "_state/a.lease", "load 201604", "etl load --month 201604"):
            assert proxy.faults == {"reset": 1} and proxy.sdk_retries >= 1
            with pytest.raises(lease.LeaseHeld):  # and it still keeps others out
                lease.acquire(store, "_state/a.lease", "load 201604", "etl load --month 201604",
                              ttl=60).release()
        assert not store.exists("_state/a.lease")
    finally:
        proxy.close()


def test_sigkill_mid_transform_and_mid_load_then_resume_ends_exact(env: tuple[Servers, Reference, Path]) -> None:
    s, ref, work = env
    slow_load = {"ETL_LOAD_MAX_WCU": "100"}  # a load of seconds, so the kills land before the run ends

    def part_written() -> bool:
        return any("/transformed/" in w for w in s.src.s3_writes)

    def checkpoint_written() -> bool:
        return any("/load/part-" in w for w in s.src.s3_writes)

    total = sum(ref.table.values())
    for n, when in enumerate((part_written, checkpoint_written), 1):
        k = kill_trial(s, n, when, MONTHS, ROWS, work, ref, seed=5, env=slow_load)
        assert k.exit_code == -9 and any(st != "done" for st in k.at_kill.values()), k.at_kill
        assert k.exact, (k.problems, k.staged_diff, k.lost)
        if when is checkpoint_written:  # finished parts are not sent again
            assert "load" in k.at_kill.values() and k.resume_checkpoints >= 1 and k.resume_items < total
