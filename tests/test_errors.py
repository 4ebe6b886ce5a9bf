"""Retry or fail is decided in one place."""

from __future__ import annotations

import botocore.exceptions
import pytest

from etl.errors import ConfigError, EtlError, Stopped, TransientError, classify, transient


@pytest.mark.parametrize(("status", "code", "outcome"), [
    (200, "", "ok"),
    (400, "ProvisionedThroughputExceededException", "throttle"),
    (400, "ThrottlingException", "throttle"),
    (400, "RequestLimitExceeded", "throttle"),
    (500, "InternalServerError", "retry"),
    (503, "ServiceUnavailable", "retry"),
    (502, "", "retry"),
    (400, "ValidationException", "fatal"),
    (400, "AccessDeniedException", "fatal"),
    (400, "ResourceNotFoundException", "fatal"),
    (403, "UnrecognizedClientException", "fatal"),
])
def test_classify(status: int, code: str, outcome: str) -> None:
    assert classify(status, code) == outcome


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                                           "Op")


def test_transient_exceptions() -> None:
    assert transient(TransientError("x"))
    assert transient(client_error("SlowDown", 503)) and transient(client_error("InternalError", 500))
    assert transient(ConnectionResetError()) and transient(TimeoutError())
    assert not transient(client_error("AccessDenied", 403))
    assert not transient(client_error("NoSuchBucket", 404))
    assert not transient(EtlError("bad")) and not transient(ConfigError("bad")) and not transient(Stopped("s"))
    assert not transient(ValueError("bug"))
    assert not transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
