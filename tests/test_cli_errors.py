"""Environment mistakes through the CLI: one clear line naming the side and what to do, exit 1, no raw
exception name and no traceback (the full one only under --debug)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from etl import aws
from etl.cli import cli
from etl.config import Config
from etl.local import seed
from tests.conftest import free_port, s3_client

RAW = ("NoSuchBucket", "EndpointConnectionError", "NoCredentialsError", "ClientError", "Traceback", "botocore")


def invoke(cfg: Config, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--config", cfg.path, "--progress", "quiet", *args])


def test_a_missing_staging_bucket(moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://no-such-bucket/x")
    for args in (["status"], ["transform", "--month", "201604"], ["export", "--month", "201604"]):
        r = invoke(cfg, *args)
        assert r.exit_code == 1, (args, r.output)
        assert "staging bucket no-such-bucket does not exist" in r.output, (args, r.output)
        assert "no committed export" not in r.output and not any(w in r.output for w in RAW), (args, r.output)


def test_an_endpoint_that_refuses_connections_fails_at_once(make_config: Callable[..., Config]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = make_config(endpoint=url, root="s3://bucket/x")
    started = time.monotonic()
    r = invoke(cfg, "status")
    assert r.exit_code == 1 and time.monotonic() - started < 10
    assert f"cannot reach the staging endpoint {url}" in r.output and "etl local up" in r.output
    assert not any(w in r.output for w in RAW), r.output


@pytest.fixture()
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup (and no network)
    aws.session_for.cache_clear()
    yield
    aws.session_for.cache_clear()


def test_no_credentials(no_credentials: None, make_config: Callable[..., Config]) -> None:
    cfg = make_config(root="s3://bucket/x")  # real AWS: no endpoint, so nothing is sent without credentials
    r = invoke(cfg, "status")
    assert r.exit_code == 1 and "no AWS credentials found" in r.output and "sso login" in r.output
    assert not any(w in r.output for w in RAW), r.output


def test_refused_credentials_name_the_side_and_the_action(moto: str, make_config: Callable[..., Config]) -> None:
    cfg = make_config(endpoint=moto, root="s3://stage/x")
    s3_client(moto).create_bucket(Bucket="stage")

    def refuse(**kwargs: Any) -> Any:  # the service's answer, injected at the edge
        import botocore.awsrequest

        return (botocore.awsrequest.AWSResponse("", 403, {}, None),
                {"Error": {"Code": "InvalidAccessKeyId", "Message": "The key you provided does not exist"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}})

    aws.session_for(cfg.staging).events.register("before-call.s3.ListObjectsV2", refuse)
    r = invoke(cfg, "status")
    assert r.exit_code == 1, r.output
    assert "the staging side refused ListObjectsV2: InvalidAccessKeyId" in r.output and "AWS_PROFILE" in r.output
    assert not any(w in r.output for w in RAW), r.output
    r = invoke(cfg, "--debug", "status")
    assert "Traceback" in r.output  # the full one under --debug


def test_brackets_in_messages_are_text_on_a_terminal() -> None:
    import io

    from etl.progress import Reporter

    out = io.StringIO()
    r = Reporter("rich", out)
    r.info("set [source] endpoint_url")
    r.warn("check [destination] table_template")
    assert "set [source] endpoint_url" in out.getvalue()
    assert "warning: check [destination] table_template" in out.getvalue()


# --------------------------------------------------------------------------- every environment mistake, one line

RAW_NAME = re.compile(r"Traceback|botocore|\b[A-Z][A-Za-z]*(?:Error|Exception)\b")


def one_line(r: Any, message: str) -> None:
    """Exit 1, `error: <message>` and at most a hint after it; no traceback and no raw exception name."""
    lines = r.output.splitlines()
    assert r.exit_code == 1, r.output
    assert lines[0] == f"error: {message}", r.output
    assert len(lines) <= 2 and all(x.startswith("  -> ") for x in lines[1:]), r.output
    assert not RAW_NAME.search(r.output), r.output


@pytest.fixture(scope="module")
def moto_checking_credentials() -> Iterator[str]:
    """A moto server that checks every request's credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): the test's keys
    are unknown to it, so it refuses them as AWS does."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def test_credentials_the_service_refuses(moto_checking_credentials: str, make_config: Callable[..., Config],
                                         tmp_path: Path) -> None:
    url = moto_checking_credentials
    hint_free = "(its credentials are missing, expired or lack that permission)"
    cfg = make_config(endpoint=url, root="s3://stage/x")
    one_line(invoke(cfg, "status"), f"the staging side refused GetBucketLocation: InvalidAccessKeyId {hint_free}")
    local = make_config(endpoint=url, root=str(tmp_path / "stage"))  # only DynamoDB is asked
    one_line(invoke(local, "export", "--month", "201604", "--mode", "scan"),
             f"the source or destination side refused DescribeTable: HTTP 403 {hint_free}")
    one_line(invoke(local, "load", "--month", "201604", "--yes"),
             f"the source or destination side refused DescribeTable: HTTP 403 {hint_free}")


def test_a_bucket_in_another_region_than_the_config_says(moto: str, make_config: Callable[..., Config]) -> None:
    seed(make_config(endpoint=moto, root="s3://other-bucket/x"), ["201604"], 10)  # the source table
    s3_client(moto).create_bucket(Bucket="eu-stage", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    cfg = make_config(endpoint=moto, root="s3://eu-stage/x")
    one_line(invoke(cfg, "export", "--month", "201604"),
             "staging bucket eu-stage is in eu-west-1, but [staging] aws_region is us-east-1")


def test_tables_that_do_not_exist(moto: str, make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config(endpoint=moto, root=str(tmp_path / "stage"))
    one_line(invoke(cfg, "export", "--month", "201604", "--mode", "scan"),
             "source table CustomerTracker_shop_eu_201604 (month 201604) not found in us-east-1")
    one_line(invoke(cfg, "load", "--month", "201604", "--yes"),
             "destination table shop_eu_AnniversaryPromo_2017 not found in us-east-1")
    one_line(invoke(cfg, "lookup", "C1"), "Query: the destination table does not exist in us-east-1")


BASE = 'domain = "shop"\nregion = "eu"\n[staging]\nroot = "/tmp/never-used"\n'


@pytest.mark.parametrize("name,content,env,message", [
    ("missing", None, {}, "config file {path} not found"),
    ("directory", "dir", {}, "config: {path} cannot be read: Is a directory"),
    ("not-toml", b'domain = "shop"\nregion = \n', {}, "config: {path} is not valid TOML: Invalid value (at line 2, "
                                                     "column 10)"),
    ("not-utf8", b"\xff\xfe", {}, "config: {path} is not valid TOML: 'utf-8' codec can't decode byte 0xff in "
                                  "position 0: invalid start byte"),
    ("unknown-key", BASE + 'bucket = "y"\n', {}, "config: unknown key staging.bucket in {path}; valid keys here: "
     "account, aws_region, endpoint_url, kms_key_id, profile, role_arn, root, sse"),
    ("wrong-type", BASE + '[transform]\nttl_seconds = "a year"\n', {},
     "config: transform.ttl_seconds = 'a year' (from {path}) is not valid: expected an integer"),
    ("unknown-zone", BASE + '[transform]\ndate_zone = "Mars/Olympus"\n', {},
     "config: transform.date_zone = 'Mars/Olympus' (from {path}) is not valid: expected an IANA zone such as UTC or "
     "Europe/Berlin"),
    ("ttl-past-int64", BASE + "[transform]\nttl_seconds = 9223372036854775807\n", {},
     "config: transform.ttl_seconds = 9223372036854775807 (from {path}) is not valid: expected an integer from 0 to "
     "315537897599 (years 0001 to 9999)"),
    ("fraction-as-percent", BASE + "[load]\nwrite_capacity_fraction = 10\n", {},
     "config: load.write_capacity_fraction = 10.0 (from {path}) is not valid: expected a fraction 0 < f <= 1 (0.25 "
     "means 25%; for an absolute rate use the max_* setting)"),
    ("no-staging-root", 'domain = "shop"\nregion = "eu"\n', {},
     "config: staging.root is not set (looked in {path} and $ETL_STAGING_ROOT)"),
    ("bad-env-override", BASE, {"ETL_TRANSFORM_TTL_SECONDS": "abc"},
     "config: transform.ttl_seconds = 'abc' (from environment ETL_TRANSFORM_TTL_SECONDS) is not valid: expected an "
     "integer"),
])
def test_a_bad_config(name: str, content: str | bytes | None, env: dict[str, str], message: str,
                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pipeline.toml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    monkeypatch.delenv("ETL_STAGING_ROOT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(cli, ["--config", str(path), "--progress", "quiet", "status"])
    one_line(r, message.replace("{path}", str(path)))
