"""The lean BatchWriteItem path: botocore for credentials (refreshing), SigV4 signing and the endpoint;
a pooled urllib3 connection posting pre-serialised JSON (orjson) for the requests themselves.

Why not `client.batch_write_item`: per request, botocore's serialise/validate/parse pipeline costs more
CPU than DynamoDB's answer takes to arrive (see BENCHMARKS.md). What botocore does that matters here
(credentials, signing, endpoint, the error codes) is kept; retries are decided in one place,
`classify`, and driven by the loader.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import orjson
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from etl import aws
from etl.config import AwsSide

THROTTLE_CODES = {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                  "TransactionInProgressException"}
RETRY_CODES = {"InternalServerError", "ServiceUnavailable", "InternalFailure", "RequestTimeout"}


@dataclass
class Reply:
    outcome: str  # ok | throttle | retry | fatal
    unprocessed: list[dict[str, Any]]
    consumed: float | None
    status: int
    code: str = ""
    message: str = ""


def classify(status: int, code: str) -> str:
    """Retry or fail, in one place: throttling and 5xx retry; other 4xx (validation, access) fail."""
    if code in THROTTLE_CODES:
        return "throttle"
    if status >= 500 or code in RETRY_CODES:
        return "retry"
    if status == 200:
        return "ok"
    return "fatal"


class BatchWriter:
    def __init__(self, side: AwsSide, table: str, max_connections: int = 16, timeout: float = 30.0) -> None:
        client = aws.client(side, "dynamodb")
        self.url = client.meta.endpoint_url.rstrip("/") + "/"
        self.region = client.meta.region_name
        self.table = table
        credentials = aws.session_for(side).get_credentials()
        if credentials is None:
            from etl.errors import EtlError

            raise EtlError("no AWS credentials found for the destination (credential chain, AWS_PROFILE, role)")
        self._credentials = credentials
        parsed = urlparse(self.url)
        self.pool = urllib3.connection_from_url(
            self.url, maxsize=max_connections, block=True,
            timeout=urllib3.Timeout(connect=5.0, read=timeout), retries=False,
        ) if parsed.scheme else None
        self._local = threading.local()
        self._prefix = orjson.dumps(table)

    def _sign(self, body: bytes, target: str) -> dict[str, str]:
        request = AWSRequest(method="POST", url=self.url, data=body, headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{target}",
        })
        SigV4Auth(self._credentials.get_frozen_credentials(), "dynamodb", self.region).add_auth(request)
        return dict(request.headers.items())

    def body(self, puts: list[bytes]) -> bytes:
        """`puts` are pre-serialised `{"PutRequest":{"Item":...}}` fragments."""
        return (b'{"RequestItems":{' + self._prefix + b":[" + b",".join(puts) + b']},'
                b'"ReturnConsumedCapacity":"TOTAL"}')

    def post(self, target: str, body: bytes) -> tuple[int, bytes]:
        assert self.pool is not None
        headers = self._sign(body, target)
        r = self.pool.urlopen("POST", "/", body=body, headers=headers, preload_content=True,
                              assert_same_host=False)
        return r.status, r.data

    def write(self, puts: list[bytes]) -> Reply:
        """One BatchWriteItem. Connection-level failures surface as outcome 'retry'."""
        try:
            status, data = self.post("BatchWriteItem", self.body(puts))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Reply("retry", [], None, 0, type(exc).__name__, str(exc))
        try:
            parsed = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            parsed = {}
        if status != 200:
            code = str(parsed.get("__type", "")).rsplit("#", 1)[-1]
            message = str(parsed.get("message") or parsed.get("Message") or data[:200].decode("utf-8", "replace"))
            return Reply(classify(status, code), [], None, status, code, message)
        unprocessed = parsed.get("UnprocessedItems", {}).get(self.table, [])
        consumed = None
        for c in parsed.get("ConsumedCapacity") or []:
            consumed = float(c.get("CapacityUnits", 0.0))
        return Reply("ok", unprocessed, consumed, status)
