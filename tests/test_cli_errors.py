"""Environment mistakes through the CLI: one clear line naming the side and what to do, exit 1, no raw
exception name and no traceback (the full one only under --debug)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from etl import aws
from etl.cli import cli
from etl.config import Config
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
