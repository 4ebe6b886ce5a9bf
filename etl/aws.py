"""Sessions and clients for each side (source, staging, destination), built on botocore's own
credential chain, role assumption (refreshing) and retry config."""

from __future__ import annotations

import functools
import ipaddress
import threading
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    DeferredRefreshableCredentials,
)

from etl.config import AwsSide
from etl.errors import EtlError

_lock = threading.Lock()


def is_loopback(url: str | None) -> bool:
    if not url:
        return False
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=16)
def session_for(side: AwsSide) -> boto3.Session:
    """One boto3 session per side; a role_arn is assumed with refreshing credentials."""
    with _lock:
        session = boto3.Session(profile_name=side.profile, region_name=side.aws_region)
        if side.endpoint_url and is_loopback(side.endpoint_url) and session.get_credentials() is None:
            # A local emulator accepts any key; never used for a non-loopback endpoint.
            session = boto3.Session(
                aws_access_key_id="local", aws_secret_access_key="local", region_name=side.aws_region
            )
        if side.role_arn:
            base = session._session  # botocore session behind the boto3 one

            def sts_creator(service: str, **kwargs: Any) -> Any:
                # the role is assumed where the side's endpoint says (an emulator stays an emulator)
                if side.endpoint_url:
                    kwargs.setdefault("endpoint_url", side.endpoint_url)
                return base.create_client(service, **kwargs)

            fetcher = AssumeRoleCredentialFetcher(
                client_creator=sts_creator,
                source_credentials=base.get_credentials(),
                role_arn=side.role_arn,
                extra_args={"RoleSessionName": "etl-backfill"},
            )
            creds = DeferredRefreshableCredentials(
                method="assume-role", refresh_using=fetcher.fetch_credentials
            )
            bc = botocore.session.Session()
            bc._credentials = creds  # type: ignore[attr-defined]
            bc.set_config_variable("region", side.aws_region)
            session = boto3.Session(botocore_session=bc, region_name=side.aws_region)
        return session


def client(side: AwsSide, service: str, max_pool: int = 32, **config: Any) -> Any:
    check_reachable(type(side).__name__.removesuffix("Config").lower(), side)
    retries = config.pop("retries", {"mode": "adaptive", "max_attempts": 10})
    cfg = BotoConfig(
        retries=retries,
        max_pool_connections=max_pool,
        connect_timeout=config.pop("connect_timeout", 10),
        read_timeout=60,
        **config,
    )
    kwargs: dict[str, Any] = {"config": cfg, "region_name": side.aws_region}
    if side.endpoint_url:
        kwargs["endpoint_url"] = side.endpoint_url
    session: Any = session_for(side)
    return session.client(service, **kwargs)


_accounts: dict[tuple[AwsSide, int], str] = {}


def account_of(side: AwsSide) -> str:
    """The account a side's credentials belong to (for confirmations and ARNs), asked once per session; '?' if
    unknown (not kept, so a later call asks again)."""
    key = (side, id(session_for(side)))
    if key in _accounts:
        return _accounts[key]
    try:
        account = str(client(side, "sts").get_caller_identity()["Account"])
    except Exception:
        return "?"
    _accounts[key] = account
    return account


# --------------------------------------------------------------------------- environment errors

_SIDE_OF_OPERATION = {
    **dict.fromkeys(("ExportTableToPointInTime", "DescribeContinuousBackups", "UpdateContinuousBackups", "Scan",
                     "DescribeExport", "ListExports", "DescribeStream", "GetShardIterator", "GetRecords"), "source"),
    **dict.fromkeys(("PutObject", "GetObject", "HeadObject", "ListObjectsV2", "DeleteObject", "DeleteObjects",
                     "GetBucketLocation", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
                     "CreateDatabase", "GetDatabase", "CreateTable", "UpdateTable", "GetTable", "DeleteTable",
                     "GetPartitions", "BatchCreatePartition", "BatchDeletePartition"), "staging"),
    **dict.fromkeys(("BatchWriteItem", "BatchGetItem", "Query", "PutItem", "DeleteItem", "UpdateTimeToLive",
                     "DescribeTimeToLive"), "destination"),
}
_REFUSED_CODES = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
                  "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                  "InvalidSignatureException", "MissingAuthenticationToken", "MissingAuthenticationTokenException"}
CREDENTIALS_HINT = ("check the credentials of that side: AWS_PROFILE (or [side] profile), `aws sso login` for an SSO "
                    "profile, [side] role_arn for a role to assume; `etl iam-policy` prints what each role needs")


def side_of_endpoint(cfg: Any, url: str) -> str:
    sides = [s for s in ("source", "staging", "destination")
             if getattr(cfg, s).endpoint_url and url.startswith(getattr(cfg, s).endpoint_url.rstrip("/"))]
    return " and ".join(sides) if sides else "an AWS"


def explain(exc: BaseException, cfg: Any = None) -> EtlError | None:
    """An environment mistake (no credentials, refused credentials, an endpoint that does not answer, a missing
    bucket) as one clear line naming the side and what to do; None for anything else."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return EtlError("no AWS credentials found (the credential chain: environment, AWS_PROFILE, ~/.aws, "
                        "instance or container role)", hint=CREDENTIALS_HINT)
    if isinstance(exc, bx.TokenRetrievalError | bx.SSOTokenLoadError | bx.UnauthorizedSSOTokenError):
        return EtlError("the SSO login of the profile has expired or is missing", hint="run `aws sso login`")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        url = str(getattr(exc, "kwargs", {}).get("endpoint_url", ""))
        return unreachable(side_of_endpoint(cfg, url) if cfg is not None else "an AWS", url)
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        op = exc.operation_name
        side = _SIDE_OF_OPERATION.get(op, "source or destination" if op == "DescribeTable" else "an AWS")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _REFUSED_CODES or status == 403:  # a 403 whose body names no code (an emulator's, a proxy's)
            return EtlError(f"the {side} side refused {op}: {code if code in _REFUSED_CODES else 'HTTP 403'} (its "
                            "credentials are missing, expired or lack that permission)", hint=CREDENTIALS_HINT)
        if code == "ResourceNotFoundException" and side in ("source", "destination"):
            region = getattr(getattr(cfg, side, None), "aws_region", "its region")
            return EtlError(f"{op}: the {side} table does not exist in {region}",
                            hint=f"check [{side}] table_template and aws_region in the config")
        if code == "NoSuchBucket":
            bucket = exc.response.get("Error", {}).get("BucketName") or "the staging bucket"
            return EtlError(f"{op}: staging bucket {bucket} does not exist",
                            hint="create it in the staging region, or fix [staging] root")
    return None


def unreachable(side: str, url: str) -> EtlError:
    local = is_loopback(url)
    return EtlError(f"cannot reach the {side} endpoint {url}: nothing answers there",
                    hint="`etl local up` starts the local emulator" if local else
                    "check endpoint_url of that side in the config (or AWS_ENDPOINT_URL), the network and any proxy")


@functools.lru_cache(maxsize=64)
def _answers(url: str) -> bool:
    import socket
    import urllib.request

    parsed = urlparse(url)
    if urllib.request.getproxies().get(parsed.scheme) and not urllib.request.proxy_bypass(parsed.hostname or ""):
        return True  # reached through a proxy: the proxy decides
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https"
                                                                               else 80)), timeout=3):
            return True
    except OSError:
        _answers.cache_clear()  # only an answer is remembered
        return False


def check_reachable(side_name: str, side: AwsSide) -> None:
    """Fail at once, naming the side, when a configured endpoint refuses connections (botocore would retry for
    up to a minute first)."""
    if side.endpoint_url and not _answers(side.endpoint_url):
        raise unreachable(side_name, side.endpoint_url)
