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
    retries = config.pop("retries", {"mode": "adaptive", "max_attempts": 10})
    cfg = BotoConfig(
        retries=retries,
        max_pool_connections=max_pool,
        connect_timeout=10,
        read_timeout=60,
        **config,
    )
    kwargs: dict[str, Any] = {"config": cfg, "region_name": side.aws_region}
    if side.endpoint_url:
        kwargs["endpoint_url"] = side.endpoint_url
    session: Any = session_for(side)
    return session.client(service, **kwargs)


def account_of(side: AwsSide) -> str:
    """The account a side's credentials belong to (for confirmations and ARNs); '?' if unknown."""
    try:
        return str(client(side, "sts").get_caller_identity()["Account"])
    except Exception:
        return "?"
