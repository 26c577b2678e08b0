"""The default backend, ``boto3``: botocore for credentials, signing and the S3 protocol.

Bodies are read straight from the socket into the engine's buffer (``readinto`` on the
``http.client`` response under urllib3), so a byte is copied once between the kernel and
the page cache. botocore's own retries are off: the engine retries per part, from the byte
it reached, and counts each retry by reason.

:func:`translate` is the one place botocore and urllib3 errors become modelpull's.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import botocore.exceptions as bexc
import botocore.session
import urllib3.exceptions as uexc
from botocore.config import Config

from modelpull.backends.base import ChunkSink, RangeResult
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointError,
    ModelPullError,
    ObjectChangedError,
    ObjectNotFoundError,
    StoreError,
    TransientStoreError,
    UsageError,
)
from modelpull.objects import ObjectInfo
from modelpull.uri import normalize_endpoint

__all__ = ["Boto3Backend", "translate"]

# S3 additional checksums as HEAD/GET report them, and TOS's CRC-64 header.
_CHECKSUM_HEADERS = {
    "x-amz-checksum-crc64nvme": "crc64nvme",
    "x-amz-checksum-crc32c": "crc32c",
    "x-amz-checksum-crc32": "crc32",
    "x-amz-checksum-sha256": "sha256",
    "x-tos-hash-crc64ecma": "crc64ecma",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
    "TooManyRequests",
    "OperationAborted",
}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
}
_DENIED_HINT = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile) "
    "and that they may read this bucket"
)


def _headers(response: Mapping[str, Any]) -> Mapping[str, str]:
    headers: Mapping[str, str] = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers


def _checksums(headers: Mapping[str, str]) -> dict[str, str]:
    return {kind: headers[name] for name, kind in _CHECKSUM_HEADERS.items() if headers.get(name)}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: rare from object stores, and backoff still applies


def translate(exc: BaseException, *, bucket: str | None, key: str | None) -> ModelPullError:
    """Map a botocore, urllib3 or socket error to modelpull's tree; never leaks credentials."""
    where = f"s3://{bucket}/{key or ''}" if bucket else "the store"
    if isinstance(exc, ModelPullError):
        return exc
    if isinstance(exc, bexc.ClientError):
        response: Mapping[str, Any] = exc.response
        error = response.get("Error", {})
        meta = response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = str(error.get("Code") or status or "Unknown")
        request_id = error.get("RequestId") or meta.get("RequestId") or None
        fields: dict[str, Any] = {
            "bucket": bucket,
            "key": key,
            "status": status,
            "code": code,
            "request_id": request_id,
            "reason": code if code in _TRANSIENT_CODES else str(status),
        }
        message = str(error.get("Message") or "").strip()
        if code == "NoSuchBucket":
            return BucketNotFoundError(f"bucket {bucket!r} does not exist", **fields)
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ObjectNotFoundError(f"no object at {where}", **fields)
        if code in _DENIED_CODES or status == 403:
            return AccessDeniedError(f"access denied to {where}: {_DENIED_HINT}", **fields)
        if code in ("PreconditionFailed", "412") or status == 412:
            return ObjectChangedError(f"{where} changed during the pull (ETag mismatch)", **fields)
        if code == "InvalidRange" or status == 416:
            return ObjectChangedError(f"{where} is shorter than listed: it changed", **fields)
        if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            err = TransientStoreError(f"{where}: {code} {message}".strip(), **fields)
            err.retry_after = _retry_after(meta.get("HTTPHeaders", {}))
            return err
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
            return StoreError(
                f"{where}: the bucket is in another region; set --region or AWS_REGION", **fields
            )
        return StoreError(f"{where}: {code} {message}".strip(), **fields)
    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return AccessDeniedError(
            "no usable credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "choose a --profile, or run where an instance role is available",
            bucket=bucket,
            key=key,
            code="NoCredentials",
        )
    if isinstance(exc, bexc.ProfileNotFound):
        return UsageError(f"{exc}: check --profile / AWS_PROFILE against ~/.aws/config")
    if isinstance(exc, bexc.ParamValidationError):
        return UsageError(f"invalid request for {where}: {exc}")
    if isinstance(exc, bexc.SSLError | uexc.SSLError):
        return EndpointError(
            f"TLS verification failed for {where}: use --ca-bundle with the store's CA",
            bucket=bucket,
            key=key,
            reason="tls",
        )
    if isinstance(exc, bexc.ConnectTimeoutError):
        return EndpointError(
            f"timed out connecting for {where}: check --endpoint-url and the network",
            bucket=bucket,
            key=key,
            reason="connect_timeout",
        )
    if isinstance(exc, bexc.EndpointConnectionError):
        return EndpointError(
            f"cannot reach the endpoint for {where}: {exc.kwargs.get('endpoint_url', '?')}"
            " - check --endpoint-url / AWS_ENDPOINT_URL and the network",
            bucket=bucket,
            key=key,
            reason="connect",
        )
    if isinstance(exc, bexc.ReadTimeoutError | socket.timeout | uexc.ReadTimeoutError):
        return TransientStoreError(
            f"{where}: read timed out", bucket=bucket, key=key, reason="timeout"
        )
    if isinstance(
        exc,
        ConnectionError
        | bexc.ConnectionClosedError
        | uexc.ProtocolError
        | http.client.HTTPException
        | bexc.ResponseStreamingError,
    ):
        return TransientStoreError(
            f"{where}: connection broken ({type(exc).__name__})",
            bucket=bucket,
            key=key,
            reason="reset",
        )
    if isinstance(exc, bexc.BotoCoreError | OSError):
        return TransientStoreError(f"{where}: {exc}", bucket=bucket, key=key, reason="network")
    return StoreError(f"{where}: unexpected {type(exc).__name__}: {exc}", bucket=bucket, key=key)


class Boto3Backend:
    """S3 through botocore; one thread-safe client shared by every worker."""

    name = "boto3"

    def __init__(self, config: PullConfig, credentials: Credentials | None = None) -> None:
        endpoint = normalize_endpoint(config.endpoint_url) if config.endpoint_url else None
        botocore_config = Config(
            max_pool_connections=config.concurrency + 4,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"total_max_attempts": 1},
            tcp_keepalive=True,
            s3={"addressing_style": config.addressing_style},
            # The engine verifies whole files end to end itself; botocore's per-response
            # validation (on by default since 1.36) breaks on many S3-compatible stores.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        )
        verify: bool | str = config.ca_bundle or config.verify_ssl
        try:
            # botocore's session directly: boto3's own layer adds only import time here.
            session = botocore.session.Session(profile=config.profile)
            self._client = session.create_client(
                "s3",
                endpoint_url=endpoint,
                region_name=config.region,
                verify=verify,
                config=botocore_config,
                aws_access_key_id=credentials.access_key if credentials else None,
                aws_secret_access_key=credentials.secret_key if credentials else None,
                aws_session_token=credentials.token if credentials else None,
            )
        except ValueError as exc:  # botocore's "Invalid endpoint" and kin
            raise UsageError(f"invalid endpoint or region: {exc}") from None
        except Exception as exc:
            raise translate(exc, bucket=None, key=None) from exc

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            response = self._client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise translate(exc, bucket=bucket, key=key) from exc
        headers = _headers(response)
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            checksums=_checksums(headers),
            checksum_type=headers.get("x-amz-checksum-type"),
        )

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=str(item.get("ETag", "")).strip('"'),
                    )
        except Exception as exc:
            raise translate(exc, bucket=bucket, key=prefix) from exc

    def read_range(
        self,
        obj: ObjectInfo,
        bucket: str,
        start: int,
        end: int,
        buffer: memoryview,
        sink: ChunkSink,
    ) -> RangeResult:
        whole = start == 0 and end == obj.size
        params: dict[str, Any] = {"Bucket": bucket, "Key": obj.key}
        if obj.etag:
            params["IfMatch"] = f'"{obj.etag}"'
        if not whole:
            params["Range"] = f"bytes={start}-{end - 1}"
        started = time.monotonic()
        try:
            response = self._client.get_object(**params)
        except Exception as exc:
            raise translate(exc, bucket=bucket, key=obj.key) from exc
        first_byte = time.monotonic() - started
        body = response["Body"]
        raw = body._raw_stream
        try:
            headers = _headers(response)
            status = int(response["ResponseMetadata"]["HTTPStatusCode"])
            self._check_response(obj, bucket, response, start, end, whole)
            self._stream(body, raw, end - start, buffer, sink)
        except BaseException as exc:
            # Unread bytes make the connection unusable for the next request.
            raw.close()
            if isinstance(exc, Exception):
                raise translate(exc, bucket=bucket, key=obj.key) from exc
            raise
        raw.release_conn()
        return RangeResult(
            status=status,
            first_byte_seconds=first_byte,
            checksums=_checksums(headers),
            checksum_type=headers.get("x-amz-checksum-type"),
        )

    @staticmethod
    def _check_response(
        obj: ObjectInfo,
        bucket: str,
        response: Mapping[str, Any],
        start: int,
        end: int,
        whole: bool,
    ) -> None:
        where = f"s3://{bucket}/{obj.key}"
        fields: dict[str, Any] = {
            "bucket": bucket,
            "key": obj.key,
            "status": response["ResponseMetadata"]["HTTPStatusCode"],
        }
        etag = str(response.get("ETag", "")).strip('"')
        # Stores that ignore If-Match are caught here instead of being stitched together.
        if obj.etag and etag and etag != obj.etag:
            raise ObjectChangedError(
                f"{where} changed during the pull (ETag {obj.etag} became {etag})",
                code="ETagMismatch",
                **fields,
            )
        if not whole:
            # Some stores (rclone) answer a ranged GET with 200 and a Content-Range, so the
            # range itself is checked, not the status.
            expected = f"bytes {start}-{end - 1}/{obj.size}"
            got = _headers(response).get("content-range")
            if got is None:
                raise StoreError(f"{where}: the store ignored the Range header", **fields)
            if got.strip() != expected:
                raise ObjectChangedError(
                    f"{where}: asked for {expected}, the store sent {got}: it changed", **fields
                )
        if int(response.get("ContentLength", -1)) != end - start:
            raise ObjectChangedError(
                f"{where}: expected {end - start} bytes, the store sent "
                f"{response.get('ContentLength')}: it changed",
                **fields,
            )

    @staticmethod
    def _stream(body: Any, raw: Any, length: int, buffer: memoryview, sink: ChunkSink) -> None:
        fp = getattr(raw, "_fp", None)
        # http.client's readinto fills our buffer from the socket with no extra copy;
        # urllib3's own readinto reads into a temporary bytes object first.
        readinto = fp.readinto if isinstance(fp, http.client.HTTPResponse) else None
        remaining = length
        while remaining:
            view = buffer[: min(len(buffer), remaining)]
            if readinto is not None:
                n = readinto(view)
            else:
                data = body.read(len(view))
                n = len(data)
                view[:n] = data
            if n == 0:
                raise TransientStoreError(
                    f"body ended {remaining} bytes early", reason="short_body"
                )
            sink(view[:n])
            remaining -= n

    def close(self) -> None:
        self._client.close()
