"""Real local servers for the tests: moto's server on 127.0.0.1 (S3, DynamoDB with export, Glue)."""

from __future__ import annotations

import os
import socket
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from etl import aws
from etl.config import Config, load_config

# No test may reach a real AWS account: dummy credentials, and every client gets a loopback endpoint.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("ETL_CONFIG", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def moto(moto_endpoint: str) -> Iterator[str]:
    """A moto server with an empty state for each test."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    aws.session_for.cache_clear()
    yield moto_endpoint
    aws.session_for.cache_clear()


@pytest.fixture()
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Write a TOML config for the test and load it through the real loader."""

    def make(endpoint: str | None = None, root: str | None = None, extra: str = "", **env: str) -> Config:
        ep = f'endpoint_url = "{endpoint}"' if endpoint else ""
        text = textwrap.dedent(f"""
            domain = "shop"
            region = "eu"
            [source]
            aws_region = "us-east-1"
            {ep}
            [staging]
            root = "{root or tmp_path / 'stage'}"
            aws_region = "us-east-1"
            {ep}
            [destination]
            aws_region = "us-east-1"
            production = false
            {ep}
            [export]
            poll_max_seconds = 0.5
            """) + textwrap.dedent(extra)
        path = tmp_path / "pipeline.toml"
        path.write_text(text)
        return load_config(str(path), env=env)

    return make


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def ddb_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
