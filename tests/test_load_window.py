"""The in-flight window's sizing (Little's law) and the writer's own SigV4 signature, checked against botocore's."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from etl.load.window import HEADROOM, Window
from etl.load.writer import Signer


def settled(w: Window, rtt: float, answers: int = 2000) -> Window:
    """Answers at a steady round trip, many rounds of them."""
    for _ in range(answers):
        w.answered(rtt, 25)
    return w


def test_the_window_is_rate_times_round_trip_over_the_request_size_with_headroom() -> None:
    w = Window(None, 1000)
    w.budget_rate(40_000)
    assert settled(w, 0.010).limit == int(HEADROOM * 40_000 * 0.010 / 25 + 0.999) + 2 == 26
    far = Window(None, 1000)  # across regions
    far.budget_rate(40_000)
    assert settled(far, 0.100).limit == 242
    far.budget_rate(20_000)  # throttled, or an on-demand ramp: fewer requests in flight
    assert far.limit == 122


def test_the_window_stops_at_its_ceiling_and_an_override_fixes_it() -> None:
    w = Window(None, 64)
    w.budget_rate(1_000_000)
    assert settled(w, 0.1).limit == 64
    fixed = Window(4, 1000)
    fixed.budget_rate(1_000_000)
    assert settled(fixed, 0.1).limit == 4


def test_a_server_that_cannot_take_the_budget_is_not_flooded() -> None:
    """A budget far above what the server takes: Little's law alone would keep 1,000 requests in flight
    there; once round trips grow past twice the fastest, the window shrinks instead."""
    w = Window(None, 1000)
    w.budget_rate(1_000_000)
    settled(w, 0.005, 200)
    grown = w.limit
    assert grown > 8
    for _ in range(2000):  # every request more in flight only waits longer: round trips grow with the window
        w.answered(0.005 * max(1.0, w.limit / 16), 25)
    assert w.limit < grown and w.limit <= 48


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
