"""Test helpers shared by the suite: one S3 server seen through :class:`S3Store`."""

from __future__ import annotations

import functools
import os
import posixpath
import uuid
from typing import Any

import boto3
from botocore.config import Config

from modelpull.config import PullConfig
from modelpull.credentials import Credentials

__all__ = ["ISOLATED_PREFIXES", "MOTO_CREDENTIALS", "S3Store"]

# Variables that would let a developer's shell change a result; conftest removes them.
ISOLATED_PREFIXES = ("AWS_", "TOS_", "MODELPULL_", "DOWNLOADER_")
# moto checks no signature: any pair works, as long as it is always the same.
MOTO_CREDENTIALS = Credentials(access_key="modelpull-test", secret_key="modelpull-test-secret")
REGION = "us-east-1"


class S3Store:
    """A local S3 server (``name`` is ``"moto"`` or ``"rclone"``) and ways to use it."""

    def __init__(self, name: str, endpoint_url: str, credentials: Credentials) -> None:
        self.name = name
        self.endpoint_url = endpoint_url
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"S3Store({self.name!r}, {self.endpoint_url!r})"

    @functools.cached_property
    def _client(self) -> Any:
        return self.client_with(self.credentials)

    def client(self) -> Any:
        """A boto3 S3 client for this server (shared; boto3 clients are thread-safe)."""
        return self._client

    def client_with(self, credentials: Credentials) -> Any:
        """A new boto3 S3 client signing with ``credentials`` (to test refusals)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.token,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                # Plain requests: no aws-chunked uploads or checksum trailers, which
                # only some servers speak, and no validation of what we did not ask for.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self._client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def put_tree(self, bucket: str, prefix: str, files: dict[str, bytes]) -> list[str]:
        """Upload ``files`` (relative path -> bytes) under ``prefix``; return the keys."""
        keys = []
        for relative, data in files.items():
            key = posixpath.join(prefix, relative)
            self.put(bucket, key, data)
            keys.append(key)
        return keys

    def env(self) -> dict[str, str]:
        """Environment for running the CLI in a subprocess against this server."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(ISOLATED_PREFIXES)}
        return base | {
            # conftest points these at files that do not exist; outside a test, at nothing.
            "AWS_CONFIG_FILE": os.environ.get("AWS_CONFIG_FILE", os.devnull),
            "AWS_SHARED_CREDENTIALS_FILE": os.environ.get(
                "AWS_SHARED_CREDENTIALS_FILE", os.devnull
            ),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": REGION,
            "MODELPULL_ADDRESSING_STYLE": "path",
        }

    def config(self, **overrides: Any) -> PullConfig:
        """A :class:`PullConfig` for this server; ``overrides`` set other fields."""
        return PullConfig(endpoint_url=self.endpoint_url, addressing_style="path", **overrides)
