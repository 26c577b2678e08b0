"""What the benchmark scripts share: the boto3 client every boto3 arm uses, the listing,
and the benchmarks' own client for setting up the store.

The arms' client reads its endpoint and keys from the environment the benchmark sets
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), addresses buckets in the path, and
asks for checksums only when an operation requires them, so botocore neither adds
flexible-checksum headers nor validates them on GETs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

__all__ = ["admin_client", "list_prefix", "make_client"]


def make_client(max_pool_connections: int = 10) -> Any:
    """A path-style S3 client on ``AWS_ENDPOINT_URL``; 10 connections is botocore's default."""
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max_pool_connections,
        ),
    )


def list_prefix(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every object under ``prefix``, with ListObjectsV2 pages."""
    found: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend((obj["Key"], obj["Size"]) for obj in page.get("Contents", ()))
    return found


def admin_client(
    endpoint: str, access_key: str, secret_key: str, ca_bundle: Path | None = None
) -> Any:
    """The benchmark's own client, for setting up the store (not one of the arms);
    ``ca_bundle`` is the CA to trust for an HTTPS endpoint."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        verify=str(ca_bundle) if ca_bundle is not None else None,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )
