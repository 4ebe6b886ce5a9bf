"""A Ray cluster of this machine for the distributed tests, reached on loopback only.

`make test` runs these tests inside a network namespace that has nothing but loopback (outside one, Ray
advertises the machine's external address); they are collected only there (ETL_RAY_TESTS=1)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

collect_ignore_glob = [] if os.environ.get("ETL_RAY_TESTS") else ["test_*.py"]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    import ray

    for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("AWS_EC2_METADATA_DISABLED", "true")):
        assert os.environ.get(name) == value, f"run the Ray tests through `make test` ({name}={value})"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1")
    try:
        addresses = [n["NodeManagerAddress"] for n in ray.nodes()]
        assert addresses and all(a.startswith("127.") for a in addresses), addresses
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
