"""The default backend, ``boto3``: botocore for credentials, signing and the S3 protocol.

Bodies are read straight from the socket into the engine's buffer (``readinto`` on the
``http.client`` response under urllib3), so a byte is copied once between the kernel and
the page cache. botocore's own retries are off: the engine retries per part, from the byte
it reached, and counts each retry by reason.

:func:`translate` is the one place botocore and urllib3 errors become modelpull's (the
store's answers by the shared table in :mod:`modelpull.backends.errors`); the backend
applies it as a context manager, ``with self._errors(bucket, key):``.

Every request can be interrupted by the pull's watchdog (:mod:`modelpull.watch`), even
one still waiting for its headers: the client's connections are of a class that hands
the calling thread's flight a way to shut their socket down (:func:`_watch_connections`).
"""

from __future__ import annotations

import http.client
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions as bexc
import botocore.loaders
import botocore.session
import urllib3.exceptions as uexc
from botocore import UNSIGNED
from botocore.config import Config

from modelpull.backends.base import (
    ByteRange,
    OpenRange,
    RangedGetBackend,
    shutdown_of,
    socket_interrupt,
)
from modelpull.backends.errors import (
    ErrorMap,
    FaultTable,
    Site,
    fault_error,
    fault_of,
    store_error,
)
from modelpull.checksums import split_composite
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import AccessDeniedError, ModelPullError, TransientStoreError, UsageError
from modelpull.objects import Layout, ObjectInfo, UploadPart
from modelpull.uri import normalize_endpoint
from modelpull.watch import current

__all__ = ["Boto3Backend", "translate"]

# S3 additional checksums as HEAD/GET report them, and TOS's CRC-64 header.
_CHECKSUM_HEADERS = {
    "x-amz-checksum-crc64nvme": "crc64nvme",
    "x-amz-checksum-crc32c": "crc32c",
    "x-amz-checksum-crc32": "crc32",
    "x-amz-checksum-sha256": "sha256",
    "x-amz-checksum-sha1": "sha1",
    "x-tos-hash-crc64ecma": "crc64ecma",
}
# GetObjectAttributes' names for each part's checksums.
_PART_CHECKSUMS = {
    "ChecksumCRC64NVME": "crc64nvme",
    "ChecksumCRC32C": "crc32c",
    "ChecksumCRC32": "crc32",
    "ChecksumSHA256": "sha256",
    "ChecksumSHA1": "sha1",
}
_PLAIN_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


def _headers(response: Mapping[str, Any]) -> Mapping[str, str]:
    headers: Mapping[str, str] = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers


def _checksums(headers: Mapping[str, str]) -> dict[str, str]:
    return {kind: headers[name] for name, kind in _CHECKSUM_HEADERS.items() if headers.get(name)}


def _etag_md5(headers: Mapping[str, str]) -> bool:
    """False when S3 says the ETag is no MD5 of the bytes: objects encrypted with
    SSE-KMS (``aws:kms``, ``aws:kms:dsse``) or with a customer's key (SSE-C)."""
    sse = headers.get("x-amz-server-side-encryption", "")
    return not sse.startswith("aws:kms") and not headers.get(
        "x-amz-server-side-encryption-customer-algorithm"
    )


# The most parts an upload may have: S3's limit, and TOS's.
MAX_UPLOAD_PARTS = 10_000


def _believable(obj: ObjectInfo, count: int) -> bool:
    """Whether ``obj`` could have been uploaded in ``count`` parts: no more than an
    upload may have, none empty, and as many as its multipart ETag's ``-N`` says."""
    if count > min(MAX_UPLOAD_PARTS, obj.size):
        return False
    try:
        _, etag_count = split_composite(obj.etag)
    except ValueError:
        return True  # an ETag of another form says nothing about parts
    return etag_count is None or etag_count == count


def _int_header(response: Mapping[str, Any], name: str) -> int | None:
    value = _headers(response).get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _upload_part(head: Mapping[str, Any], object_etag: str) -> UploadPart:
    """One part as ``HEAD ?partNumber=`` tells it: its size, and its own values.

    Some stores answer with the part's own ETag (the MD5 of its bytes), others with the
    object's: only a plain MD5 that is not the object's counts as the part's.
    """
    values = _checksums(_headers(head))
    etag = str(head.get("ETag", "")).strip('"')
    if _PLAIN_MD5.match(etag) and etag != object_etag:
        values["md5"] = etag.lower()
    return UploadPart(int(head["ContentLength"]), values)


_FAULTS: FaultTable = (
    ((bexc.SSLError, uexc.SSLError), "tls"),
    (bexc.ConnectTimeoutError, "connect_timeout"),
    (bexc.EndpointConnectionError, "connect"),
    ((bexc.ReadTimeoutError, socket.timeout, uexc.ReadTimeoutError), "timeout"),
    (
        (
            ConnectionError,
            bexc.ConnectionClosedError,
            uexc.ProtocolError,
            http.client.HTTPException,
            bexc.ResponseStreamingError,
        ),
        "reset",
    ),
    ((bexc.BotoCoreError, OSError), "network"),
)


def translate(exc: BaseException, site: Site) -> ModelPullError:
    """Map a botocore, urllib3 or socket error to modelpull's tree; never leaks credentials."""
    if isinstance(exc, ModelPullError):
        return exc
    if isinstance(exc, bexc.ClientError):
        response: Mapping[str, Any] = exc.response
        error = response.get("Error", {})
        meta = response.get("ResponseMetadata", {})
        return store_error(
            status=meta.get("HTTPStatusCode"),
            code=error.get("Code"),
            message=error.get("Message"),
            request_id=error.get("RequestId") or meta.get("RequestId"),
            headers=meta.get("HTTPHeaders"),
            site=site,
        )
    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return AccessDeniedError(
            f"no usable credentials found: {site.names.no_credentials}",
            bucket=site.bucket,
            key=site.key,
            code="NoCredentials",
        )
    if isinstance(exc, bexc.ProfileNotFound):
        return UsageError(f"{exc}: check --profile / AWS_PROFILE against ~/.aws/config")
    if isinstance(exc, bexc.ConfigParseError):  # a local file, no store error (exit 10)
        return UsageError(f"{exc}: check AWS_CONFIG_FILE / ~/.aws/config")
    if isinstance(exc, bexc.ParamValidationError):
        return UsageError(f"invalid request for {site}: {exc}")
    return fault_error(fault_of(exc, _FAULTS), exc, site)


def _watched(pool: Any) -> Any:
    """``pool`` (a urllib3 connection pool class) whose connections, as each request
    waits for its answer, give the calling thread's flight a way to interrupt it."""

    class WatchedConnection(pool.ConnectionCls):  # type: ignore[misc]
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            flight = current()
            sock = self.sock
            self.modelpull_flight = flight
            if flight is not None and isinstance(sock, socket.socket):
                shutdown = shutdown_of(sock)

                def interrupt() -> None:
                    # Only while this request owns the connection: the pool may have
                    # handed it to another by the time an abort comes.
                    if self.modelpull_flight is flight and self.sock is sock:
                        shutdown()

                flight.attach(interrupt)
            return super().getresponse(*args, **kwargs)

    return type(f"Watched{pool.__name__}", (pool,), {"ConnectionCls": WatchedConnection})


def _watch_connections(client: Any) -> None:
    """Make every connection ``client`` opens one that the watchdog can interrupt.

    botocore builds its pools from one mapping of scheme to pool class, shared by its
    pool and proxy managers (a private attribute, stable since botocore 1.11). Without
    it only response bodies can be interrupted: a request waiting for its headers is
    bounded by ``read_timeout`` alone.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    classes = getattr(session, "_pool_classes_by_scheme", None)
    if isinstance(classes, dict):
        for scheme, pool in list(classes.items()):
            classes[scheme] = _watched(pool)


class _S3Loader(botocore.loaders.Loader):  # type: ignore[misc]
    """botocore's data loader for a session that only makes S3 clients.

    Before it loads a service's model, botocore lists every service it ships to check
    the name: some 400 folders and 2,700 ``stat`` calls, 20 ms of each start-up. The name
    is always ``s3`` here; a missing model still fails as botocore's own loader would.
    """

    def list_available_services(self, type_name: str) -> list[str]:
        return ["s3"]


_INTEGER_HEADERS: dict[str, tuple[str, ...]] = {}


def _drop_unreadable_integers(operation_model: Any, response_dict: Any, **_: Any) -> None:
    """Drop a header botocore parses as an integer that is none, as if it were not sent.

    botocore's parser fails the whole answer on one (``x-amz-mp-parts-count: zz`` from a
    broken or hostile store: exit 10, 'unexpected ValueError'), while modelpull reads such
    headers leniently and checks what they say; an absent header is a case it handles.
    """
    names = _INTEGER_HEADERS.get(operation_model.name)
    if names is None:
        shape = operation_model.output_shape
        members = shape.members.values() if shape is not None else ()
        names = tuple(
            m.serialization.get("name", "")
            for m in members
            if m.serialization.get("location") == "header" and m.type_name in ("integer", "long")
        )
        _INTEGER_HEADERS[operation_model.name] = names
    headers = response_dict.get("headers")
    for name in names:
        value = headers.get(name) if headers is not None else None
        if value is not None and not value.strip().lstrip("+-").isdigit():
            del headers[name]


def _session(profile: str | None) -> botocore.session.Session:
    """A botocore session for ``profile`` whose loader skips the service listing."""
    session = botocore.session.Session(profile=profile)
    # AWS_DATA_PATH (or data_path in the profile), read as botocore's create_loader does.
    spec: str | None = session.get_config_variable("data_path")
    paths = spec.split(os.pathsep) if spec else None
    extra = (
        None if paths is None else [str(Path(os.path.expandvars(p)).expanduser()) for p in paths]
    )
    session.register_component("data_loader", _S3Loader(extra_search_paths=extra))
    # No field modelpull reads is a timestamp, and parsing them (LastModified on every GET
    # and every listed key) costs more than the rest of the answer.
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return session


class Boto3Backend(RangedGetBackend):
    """S3 through botocore; one thread-safe client shared by every worker.

    ``scheme`` is the URI scheme pulled from: ``tos`` makes messages name ``tos://`` and
    ``TOS_*`` instead of ``s3://`` and ``AWS_*``.
    """

    name = "boto3"

    def __init__(
        self, config: PullConfig, credentials: Credentials | None = None, *, scheme: str = "s3"
    ) -> None:
        super().__init__(config, scheme=scheme)
        endpoint = normalize_endpoint(config.endpoint_url) if config.endpoint_url else None
        # Unsigned requests look for no credentials at all, as the AWS CLI's do.
        unsigned = {"signature_version": UNSIGNED} if config.no_sign_request else {}
        if config.no_sign_request:
            credentials = None
        botocore_config = Config(
            max_pool_connections=config.most_concurrency + 4,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"total_max_attempts": 1},
            tcp_keepalive=True,
            s3={"addressing_style": config.addressing_style},
            # The engine verifies whole files end to end itself; botocore's per-response
            # validation (on by default since 1.36) breaks on many S3-compatible stores.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
            **unsigned,
        )
        with ErrorMap(translate, self.names, endpoint)(None, None):
            try:
                # botocore's session directly: boto3's own layer adds only import time here.
                session = _session(config.profile)
                self._client = session.create_client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=config.region,
                    verify=self.tls_verify,
                    config=botocore_config,
                    aws_access_key_id=credentials.access_key if credentials else None,
                    aws_secret_access_key=credentials.secret_key if credentials else None,
                    aws_session_token=credentials.token if credentials else None,
                )
            except ValueError as exc:  # botocore's "Invalid endpoint" and kin
                raise UsageError(f"invalid endpoint or region: {exc}") from None
        _watch_connections(self._client)
        self._client.meta.events.register("before-parse.s3.*", _drop_unreadable_integers)
        self._errors = ErrorMap(translate, self.names, self._client.meta.endpoint_url)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._errors(bucket, key):
            response = self._client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        headers = _headers(response)
        if "ContentLength" not in response:  # absent, or no number: dropped before parsing
            site = Site(bucket, key, self.names, self._client.meta.endpoint_url)
            raise TransientStoreError(
                f"{site}: the store's answer to HEAD has no usable Content-Length",
                bucket=bucket,
                key=key,
                reason="bad_response",
            )
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            checksums=_checksums(headers),
            checksum_type=headers.get("x-amz-checksum-type"),
            etag_md5=_etag_md5(headers),
        )

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(bucket, prefix):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=str(item.get("ETag", "")).strip('"'),
                    )

    def open_range(self, obj: ObjectInfo, bucket: str, wanted: ByteRange) -> OpenRange:
        params: dict[str, Any] = {"Bucket": bucket, "Key": obj.key}
        if obj.etag:
            params["IfMatch"] = f'"{obj.etag}"'
        if wanted is not None:
            params["Range"] = f"bytes={wanted[0]}-{wanted[1] - 1}"
        else:
            # A whole-object GET answers with the checksums a HEAD would: a small file
            # then needs no HEAD.
            params["ChecksumMode"] = "ENABLED"
        with self._errors(bucket, obj.key):
            response = self._client.get_object(**params)
        body = response["Body"]
        raw = body._raw_stream
        fp = getattr(raw, "_fp", None)
        # http.client's readinto fills our buffer from the socket with no extra copy;
        # urllib3's own readinto reads into a temporary bytes object first.
        direct = fp.readinto if isinstance(fp, http.client.HTTPResponse) else None

        def readinto(view: memoryview) -> int:
            with self._errors(bucket, obj.key):
                if direct is not None:
                    n: int = direct(view)
                    return n
                data = body.read(len(view))
            view[: len(data)] = data
            return len(data)

        headers = _headers(response)
        length = response.get("ContentLength")
        return OpenRange(
            status=int(response["ResponseMetadata"]["HTTPStatusCode"]),
            etag=response.get("ETag"),
            content_range=headers.get("content-range"),
            content_length=None if length is None else int(length),
            readinto=readinto,
            abort=raw.close,
            release=raw.release_conn,
            checksums=_checksums(headers),
            checksum_type=headers.get("x-amz-checksum-type"),
            etag_md5=_etag_md5(headers),
            interrupt=socket_interrupt(raw),
        )

    def upload_parts(self, bucket: str, obj: ObjectInfo, *, checksums: bool) -> Layout | None:
        """The layout from ``HEAD ?partNumber=``: part 1 gives the count and, for the
        uniform layouts uploaders make, every size; per-part values come from the object's
        attributes (one request a thousand parts) or, failing that, one HEAD per part."""
        first = self._head_part(bucket, obj.key, 1)
        count = _int_header(first, "x-amz-mp-parts-count")
        if count is None or count < 1:
            return None  # not a multipart object, or a store that ignores partNumber
        size1 = first.get("ContentLength")
        if not _believable(obj, count) or not isinstance(size1, int):
            return None  # a store that says so is not asked once per part it claims
        last = obj.size - (count - 1) * size1
        if checksums:
            parts = self._attribute_parts(bucket, obj, count)
            if parts is not None:
                return Layout(parts)
        if not checksums and 0 < last <= size1:
            sizes = [size1] * (count - 1) + [last]
            return Layout((_upload_part(first, obj.etag), *(UploadPart(s) for s in sizes[1:])))
        heads = [first, *(self._head_part(bucket, obj.key, n) for n in range(2, count + 1))]
        if not all(isinstance(head.get("ContentLength"), int) for head in heads):
            return None  # a part the store will not size says no layout
        return Layout(tuple(_upload_part(head, obj.etag) for head in heads))

    def _head_part(self, bucket: str, key: str, number: int) -> Mapping[str, Any]:
        with self._errors(bucket, key):
            response: Mapping[str, Any] = self._client.head_object(
                Bucket=bucket, Key=key, PartNumber=number, ChecksumMode="ENABLED"
            )
        return response

    def _attribute_parts(
        self, bucket: str, obj: ObjectInfo, count: int
    ) -> tuple[UploadPart, ...] | None:
        """Each part's size and checksums from GetObjectAttributes, when the store has it.

        It needs its own permission (``s3:GetObjectAttributes``) and lists parts only for
        uploads made with checksums: anything short of every part is ``None``.
        """
        parts: list[UploadPart] = []
        marker = 0
        try:
            while True:
                response = self._client.get_object_attributes(
                    Bucket=bucket,
                    Key=obj.key,
                    ObjectAttributes=["ObjectParts"],
                    MaxParts=1000,
                    PartNumberMarker=marker,
                )
                listed = response.get("ObjectParts") or {}
                for item in listed.get("Parts") or ():
                    values = {
                        kind: str(item[field])
                        for field, kind in _PART_CHECKSUMS.items()
                        if item.get(field)
                    }
                    parts.append(UploadPart(int(item["Size"]), values))
                if not listed.get("IsTruncated"):
                    break
                marker = int(listed["NextPartNumberMarker"])
        except (bexc.BotoCoreError, bexc.ClientError, KeyError, ValueError, TypeError):
            return None  # not supported, not allowed, or not what was asked
        if len(parts) != count or sum(p.size for p in parts) != obj.size:
            return None
        return tuple(parts)

    def close(self) -> None:
        self._client.close()
