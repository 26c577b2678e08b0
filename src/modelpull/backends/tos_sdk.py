"""The ``tos-sdk`` backend: Volcengine's TOS Python SDK (``TosClientV2``) behind the protocol.

It exists to compare with, and fall back to, the path deployments take today. Bytes
move one of two ways, both under the engine's skip logic, temp files, locks,
verification and records:

- :meth:`TosSdkBackend.read_range`: ``get_object`` with a ``Range``, one part at a time,
  scheduled by the engine like the boto3 backend's parts;
- :meth:`TosSdkBackend.fetch_file`: ``download_file``, the SDK's own parallel,
  checkpointed whole-file download (``task_num`` = ``concurrency``), for an engine
  that honours :attr:`TosSdkBackend.whole_file`.

The SDK's own retries are off (the engine retries, and counts each retry) and so is its
CRC check (the engine verifies ``x-tos-hash-crc64ecma`` from HEAD, with every other
checksum, the same way for both backends). The SDK speaks TOS's native protocol: an S3
endpoint (``tos-s3-...``) is mapped back to the native one. It has no path-style
addressing; ``addressing_style="path"`` selects its custom-domain mode instead, where the
endpoint serves one bucket and requests carry only the key (a TOS custom domain, or a
local stand-in server rooted at the bucket's folder).

:func:`translate` is the one place ``TosClientError`` and ``TosServerError`` (and the
``requests``/``urllib3`` errors under them) become modelpull's.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import boto3
import urllib3.exceptions as uexc

from modelpull.backends.base import ChunkSink, RangeResult
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import (
    AccessDeniedError,
    BackendUnavailableError,
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
from modelpull.uri import region_from_endpoint

try:
    import requests.exceptions as rexc
    import tos
    from tos.exceptions import TosClientError, TosServerError
except ImportError as exc:  # the optional [tos] extra
    raise BackendUnavailableError(
        "the tos-sdk backend needs the TOS SDK: pip install 'modelpull[tos]'"
    ) from exc

__all__ = ["ProgressSink", "TosSdkBackend", "translate"]

# Receives the byte count of each piece a whole-file download wrote; it may raise to stop.
ProgressSink = Callable[[int], None]
Mode = Literal["download_file", "ranged"]

_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "TooManyRequests",
    "RequestTimeTooSkewed",
    "ExceedAccountQPSLimit",
    "ExceedBucketQPSLimit",
}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidSecurityToken",
    "ExpiredToken",
    "AccountDisable",
}
_DENIED_HINT = (
    "check the credentials (TOS_ACCESS_KEY/TOS_SECRET_KEY, TOS_SECURITY_TOKEN) and that "
    "they may read this bucket"
)
# TosClientError messages the SDK raises when a body is shorter than its Content-Length.
_SHORT_BODY = ("IO Content not equal content-length", "Some error from read source")


def _checksums(crc64: object) -> dict[str, str]:
    # The SDK parses x-tos-hash-crc64ecma to an int; the engine wants the published text.
    return {"crc64ecma": str(crc64)} if isinstance(crc64, int) else {}


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = (headers or {}).get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _server_error(exc: TosServerError, bucket: str | None, key: str | None) -> ModelPullError:
    where = f"tos://{bucket}/{key or ''}" if bucket else "the store"
    status = exc.status_code if isinstance(exc.status_code, int) else None
    # Against a server that answers in XML (S3), the SDK finds no JSON code: status decides.
    code = str(exc.code or status or "Unknown")
    fields: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "status": status,
        "code": code,
        "request_id": exc.request_id or None,
        "reason": code if code in _TRANSIENT_CODES else str(status),
    }
    message = str(exc.message or "").strip()[:200]
    if code == "NoSuchBucket":
        return BucketNotFoundError(f"bucket {bucket!r} does not exist", **fields)
    if code in ("NoSuchKey", "404") or status == 404:
        return ObjectNotFoundError(f"no object at {where}", **fields)
    if code in _DENIED_CODES or status == 403:
        return AccessDeniedError(f"access denied to {where}: {_DENIED_HINT}", **fields)
    if code == "PreconditionFailed" or status == 412:
        return ObjectChangedError(f"{where} changed during the pull (ETag mismatch)", **fields)
    if code == "InvalidRange" or status == 416:
        return ObjectChangedError(f"{where} is shorter than listed: it changed", **fields)
    if code in _TRANSIENT_CODES or status == 429 or (status is not None and status >= 500):
        err = TransientStoreError(f"{where}: {code} {message}".strip(), **fields)
        err.retry_after = _retry_after(exc.header)
        return err
    if code == "PermanentRedirect" or status == 301:
        return StoreError(
            f"{where}: the bucket is in another region; set TOS_REGION and TOS_ENDPOINT", **fields
        )
    return StoreError(f"{where}: {code} {message}".strip(), **fields)


def _unreachable(exc: BaseException) -> bool:
    """True when a requests ConnectionError never reached the server (refused, DNS)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, uexc.NewConnectionError | uexc.NameResolutionError):
            return True
        reason = getattr(current, "reason", None)
        for nested in (*current.args, reason, current.__cause__, current.__context__):
            if isinstance(nested, BaseException):
                stack.append(nested)
    return False


def _transport_error(exc: BaseException, bucket: str | None, key: str | None) -> ModelPullError:
    where = f"tos://{bucket}/{key or ''}" if bucket else "the store"
    fields: dict[str, Any] = {"bucket": bucket, "key": key}
    if isinstance(exc, rexc.SSLError | uexc.SSLError):
        return EndpointError(
            f"TLS verification failed for {where}: use --ca-bundle with the store's CA",
            reason="tls",
            **fields,
        )
    if isinstance(exc, rexc.ConnectTimeout):
        return EndpointError(
            f"timed out connecting for {where}: check --endpoint-url / TOS_ENDPOINT and the "
            "network",
            reason="connect_timeout",
            **fields,
        )
    if isinstance(exc, rexc.ConnectionError) and _unreachable(exc):
        return EndpointError(
            f"cannot reach the endpoint for {where} - check --endpoint-url / TOS_ENDPOINT and "
            "the network",
            reason="connect",
            **fields,
        )
    if isinstance(exc, rexc.ReadTimeout | uexc.ReadTimeoutError | socket.timeout):
        return TransientStoreError(f"{where}: read timed out", reason="timeout", **fields)
    if isinstance(
        exc,
        rexc.ConnectionError
        | rexc.ChunkedEncodingError
        | uexc.ProtocolError
        | http.client.HTTPException
        | ConnectionError,
    ):
        return TransientStoreError(
            f"{where}: connection broken ({type(exc).__name__})", reason="reset", **fields
        )
    if isinstance(exc, rexc.RequestException | uexc.HTTPError | OSError):
        return TransientStoreError(f"{where}: {exc}", reason="network", **fields)
    return StoreError(f"{where}: unexpected {type(exc).__name__}: {exc}", **fields)


def translate(exc: BaseException, *, bucket: str | None, key: str | None) -> ModelPullError:
    """Map a TOS SDK, requests or urllib3 error to modelpull's tree; never leaks credentials.

    ``TosServerError`` keeps its status, error code and request id; a ``TosClientError``
    is judged by the error it wraps (a timeout, a reset, a short body, ...).
    """
    if isinstance(exc, ModelPullError):
        return exc
    if isinstance(exc, TosServerError):
        return _server_error(exc, bucket, key)
    if isinstance(exc, TosClientError):
        cause = exc.cause
        if isinstance(cause, BaseException) and cause is not exc:
            return translate(cause, bucket=bucket, key=key)
        message = str(exc.message or "")
        where = f"tos://{bucket}/{key or ''}" if bucket else "the store"
        if message.startswith(_SHORT_BODY):
            return TransientStoreError(
                f"{where}: body ended early", bucket=bucket, key=key, reason="short_body"
            )
        return StoreError(f"{where}: {message}", bucket=bucket, key=key)
    return _transport_error(exc, bucket, key)


def _sdk_credentials(config: PullConfig, credentials: Credentials | None) -> Credentials | None:
    """Explicit credentials, else whatever boto3's chain finds (TOS takes the same keys)."""
    if credentials is not None:
        return credentials
    try:
        found = boto3.session.Session(profile_name=config.profile).get_credentials()
    except Exception as exc:  # ProfileNotFound, a broken config file, ...
        raise UsageError(f"cannot read credentials from boto3's chain: {exc}") from None
    if found is None:
        return None  # anonymous requests, for public buckets
    frozen = found.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class TosSdkBackend:
    """TOS through ``tos.TosClientV2``; one client shared by every worker.

    ``custom_domain`` (default: ``config.addressing_style == "path"``) makes the SDK
    leave the bucket out of every URL. ``mode`` says whether whole files go through
    ``download_file`` (the default: the SDK's own path, for comparison) or every part
    through the engine's ranged GETs.
    """

    name = "tos-sdk"

    def __init__(
        self,
        config: PullConfig,
        credentials: Credentials | None = None,
        *,
        custom_domain: bool | None = None,
        mode: Mode = "download_file",
    ) -> None:
        if mode not in ("download_file", "ranged"):
            raise UsageError(f"invalid tos-sdk mode {mode!r}: use download_file or ranged")
        self.whole_file = mode == "download_file"
        self._config = config
        if config.endpoint_url:
            endpoint = config.endpoint_url  # native form: resolve() maps it
        elif config.region:
            endpoint = f"https://tos-{config.region}.volces.com"
        else:
            raise UsageError(
                "the tos-sdk backend needs an endpoint: set TOS_ENDPOINT or TOS_REGION"
            )
        region = config.region or region_from_endpoint(endpoint)
        if region is None:
            raise UsageError(
                "the tos-sdk backend needs a region for signing: set TOS_REGION or --region"
            )
        custom = config.addressing_style == "path" if custom_domain is None else custom_domain
        keys = _sdk_credentials(config, credentials)
        try:
            self._client = tos.TosClientV2(
                ak=keys.access_key if keys else "",
                sk=keys.secret_key if keys else "",
                security_token=keys.token if keys else None,
                endpoint=endpoint,
                region=region,
                is_custom_domain=custom,
                max_retry_count=0,
                max_connections=config.concurrency + 4,
                enable_crc=False,
                connection_time=config.connect_timeout,
                socket_timeout=config.read_timeout,
                enable_verify_ssl=config.verify_ssl,
                ca_crt=config.ca_bundle,
                # The SDK's DNS cache runs a thread of its own; the system resolver will do.
                dns_cache_time=0,
                auto_recognize_content_type=False,
            )
        except TosClientError as exc:
            raise UsageError(f"invalid TOS endpoint or region: {exc.message}") from None

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            output = self._client.head_object(bucket, key)
        except Exception as exc:
            raise translate(exc, bucket=bucket, key=key) from exc
        return ObjectInfo(
            key=key,
            size=int(output.content_length),
            etag=str(output.etag or "").strip('"'),
            checksums=_checksums(output.hash_crc64_ecma),
        )

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        try:
            while True:
                # One page at a time: without list_only_once the SDK gathers every page
                # into one list before returning.
                page = self._client.list_objects_type2(
                    bucket,
                    prefix=prefix or None,
                    continuation_token=token,
                    max_keys=1000,
                    list_only_once=True,
                )
                for item in page.contents:
                    yield ObjectInfo(
                        key=item.key,
                        size=int(item.size),
                        etag=str(item.etag or "").strip('"'),
                        checksums=_checksums(item.hash_crc64_ecma),
                    )
                token = page.next_continuation_token if page.is_truncated else None
                if not token:
                    return
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
        params: dict[str, Any] = {}
        if obj.etag:
            params["if_match"] = obj.etag  # bare, as download_file sends it
        if not whole:
            params.update(range_start=start, range_end=end - 1)
        started = time.monotonic()
        try:
            output = self._client.get_object(bucket, obj.key, **params)
        except Exception as exc:
            raise translate(exc, bucket=bucket, key=obj.key) from exc
        first_byte = time.monotonic() - started
        response = output.resp.resp  # requests' response, closed when a read breaks
        try:
            self._check(obj, bucket, output, start, end, whole)
            remaining = end - start
            while remaining:
                view = buffer[: min(len(buffer), remaining)]
                n = self._read_into(output, view, bucket, obj.key, remaining)
                # What the sink raises (a full disk, a stop) is the engine's: not translated.
                sink(view[:n])
                remaining -= n
        except BaseException:
            # Unread bytes make the connection unusable for the next request.
            response.close()
            raise
        return RangeResult(
            status=int(output.status_code),
            first_byte_seconds=first_byte,
            checksums=_checksums(output.hash_crc64_ecma),
        )

    @staticmethod
    def _read_into(output: Any, view: memoryview, bucket: str, key: str, remaining: int) -> int:
        try:
            data = output.read(len(view))
        except Exception as exc:
            raise translate(exc, bucket=bucket, key=key) from exc
        if not data:
            raise TransientStoreError(
                f"tos://{bucket}/{key}: body ended {remaining} bytes early",
                bucket=bucket,
                key=key,
                reason="short_body",
            )
        view[: len(data)] = data
        return len(data)

    @staticmethod
    def _check(
        obj: ObjectInfo, bucket: str, output: Any, start: int, end: int, whole: bool
    ) -> None:
        where = f"tos://{bucket}/{obj.key}"
        fields: dict[str, Any] = {"bucket": bucket, "key": obj.key, "status": output.status_code}
        etag = str(output.etag or "").strip('"')
        if obj.etag and etag and etag != obj.etag:
            raise ObjectChangedError(
                f"{where} changed during the pull (ETag {obj.etag} became {etag})",
                code="ETagMismatch",
                **fields,
            )
        if not whole:
            expected = f"bytes {start}-{end - 1}/{obj.size}"
            got = output.content_range
            if got is None:
                raise StoreError(f"{where}: the store ignored the Range header", **fields)
            if str(got).strip() != expected:
                raise ObjectChangedError(
                    f"{where}: asked for {expected}, the store sent {got}: it changed", **fields
                )
        if output.content_length is not None and int(output.content_length) != end - start:
            raise ObjectChangedError(
                f"{where}: expected {end - start} bytes, the store sent "
                f"{output.content_length}: it changed",
                **fields,
            )

    def fetch_file(
        self, obj: ObjectInfo, bucket: str, path: Path, progress: ProgressSink
    ) -> RangeResult:
        """All of ``obj`` into ``path`` (created or replaced) with ``download_file``.

        The SDK writes ``<path>.temp`` with ``concurrency`` threads of ``part_size``
        ranged GETs, keeps a checkpoint beside it (so a failed or interrupted download
        resumes from its completed parts on the next call) and renames it to ``path``.
        ``progress`` receives each piece's byte count from the SDK's threads; an
        exception it raises stops the download and is raised again here unchanged.
        """
        raised: list[BaseException] = []

        def listener(consumed: int, total: int, once: int, kind: object) -> None:
            if once <= 0:
                return
            try:
                progress(once)
            except BaseException as exc:
                raised.append(exc)
                raise

        try:
            output = self._client.download_file(
                bucket,
                obj.key,
                str(path),
                if_match=obj.etag or None,
                part_size=self._config.part_size,
                task_num=self._config.concurrency,
                enable_checkpoint=True,
                data_transfer_listener=listener,
            )
        except Exception as exc:
            if raised:
                # The SDK wraps what a listener raised; the engine's own signal goes back.
                raise raised[0] from None
            raise translate(exc, bucket=bucket, key=obj.key) from exc
        return RangeResult(
            status=int(output.status_code), checksums=_checksums(output.hash_crc64_ecma)
        )

    def close(self) -> None:
        self._client.close()
