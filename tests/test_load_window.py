"""The in-flight window's sizing (Little's law) and the writer's own SigV4 signature, checked against botocore's."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from etl.load import HEADROOM, Window
from etl.writer import Signer


def test_the_window_is_rate_times_round_trip_over_the_request_size_with_headroom() -> None:
    w = Window(None, 1000)
    w.budget_rate(40_000)
    w.answered(0.010, 25)
    assert w.limit == int(HEADROOM * 40_000 * 0.010 / 25 + 0.999) + 2 == 26
    far = Window(None, 1000)  # across regions
    far.budget_rate(40_000)
    far.answered(0.100, 25)
    assert far.limit == 242
    far.budget_rate(20_000)  # throttled, or an on-demand ramp: fewer requests in flight
    assert far.limit == 122


def test_the_window_stops_at_its_ceiling_and_an_override_fixes_it() -> None:
    w = Window(None, 64)
    w.budget_rate(1_000_000)
    w.answered(0.1, 25)
    assert w.limit == 64
    fixed = Window(4, 1000)
    fixed.budget_rate(1_000_000)
    fixed.answered(0.1, 25)
    assert fixed.limit == 4


def test_a_server_that_queues_does_not_grow_the_window_without_bound() -> None:
    w = Window(None, 1000)
    w.budget_rate(40_000)
    w.answered(0.010, 25)
    for _ in range(100):  # answers slow down to 50x the fastest: queueing, not distance
        w.answered(0.5, 25)
    assert w.limit <= int(HEADROOM * 40_000 * 4 * 0.010 / 25) + 3


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("url,host", [("https://dynamodb.eu-west-1.amazonaws.com/", "dynamodb.eu-west-1.amazonaws.com"),
                                      ("http://127.0.0.1:8000/", "127.0.0.1:8000")])
def test_the_signature_is_botocores(token: str | None, url: str, host: str) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"RequestItems":{"t":[{"PutRequest":{"Item":{"k":{"S":"v"}}}}]},"ReturnConsumedCapacity":"INDEXES"}'
    request = AWSRequest(method="POST", url=url, data=body, headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.BatchWriteItem"})
    SigV4Auth(creds.get_frozen_credentials(), "dynamodb", "eu-west-1").add_auth(request)
    theirs = {k.lower(): v for k, v in request.headers.items()}
    ours = dict(Signer(creds, "eu-west-1", host).headers(body, "BatchWriteItem", theirs["x-amz-date"]))
    assert ours["authorization"] == theirs["authorization"]
    assert ours.get("x-amz-security-token") == theirs.get("x-amz-security-token")
