"""The ``tos-sdk`` backend: Volcengine's TOS Python SDK (``TosClientV2``) behind the protocol.

It exists to compare with, and fall back to, the path deployments take today. Bytes
move as they do for the boto3 backend: ``get_object`` with a ``Range``, one part at a
time, scheduled by the engine under its skip logic, temp files, locks, verification and
records. (The SDK's own ``download_file`` is a comparison arm of ``modelpull bench``:
:mod:`modelpull.bench_sdk`.)

The SDK's own retries are off (the engine retries, and counts each retry) and so is its
CRC check (the engine verifies ``x-tos-hash-crc64ecma`` from HEAD, with every other
checksum, the same way for both backends). The SDK speaks TOS's native protocol: an S3
endpoint (``tos-s3-...``) is mapped back to the native one. It has no path-style
addressing; ``addressing_style="path"`` selects its custom-domain mode instead, where the
endpoint serves one bucket and requests carry only the key (a TOS custom domain, or a
local stand-in server rooted at the bucket's folder).

:func:`translate` is the one place ``TosClientError`` and ``TosServerError`` (and the
``requests``/``urllib3`` errors under them) become modelpull's (the store's answers by
the shared table in :mod:`modelpull.backends.errors`); the backend applies it as a
context manager, ``with self._errors(bucket, key):``.
"""

from __future__ import annotations

import datetime
import http.client
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import urllib3.exceptions as uexc

from modelpull.backends.base import (
    ByteRange,
    OpenRange,
    RangedGetBackend,
    socket_interrupt,
)
from modelpull.backends.errors import (
    ErrorMap,
    FaultTable,
    Site,
    causes,
    fault_error,
    fault_of,
    store_error,
)
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import BackendUnavailableError, ModelPullError, StoreError, UsageError
from modelpull.objects import ObjectInfo
from modelpull.uri import normalize_endpoint, region_from_endpoint

try:
    import requests.exceptions as rexc
    import tos
    from tos.exceptions import TosClientError, TosServerError
except ImportError as exc:  # the optional [tos] extra
    raise BackendUnavailableError(
        "the tos-sdk backend needs the TOS SDK: pip install 'modelpull[tos]'"
    ) from exc

__all__ = ["TosSdkBackend", "translate"]

# TosClientError messages the SDK raises when a body is shorter than its Content-Length.
_SHORT_BODY = ("IO Content not equal content-length", "Some error from read source")


_CRC64 = "x-tos-hash-crc64ecma"
# Where a CRC the SDK could not parse waits for the verifier, which ignores it with a
# warning as it does any malformed checksum (and as the boto3 backend does this one).
_MALFORMED_CRC64 = "x-modelpull-malformed-crc64ecma"


def _checksums(crc64: object) -> dict[str, str]:
    # The SDK parses x-tos-hash-crc64ecma to an int; the engine wants the published text.
    return {"crc64ecma": str(crc64)} if isinstance(crc64, int) else {}


def _answer_checksums(output: Any) -> dict[str, str]:
    malformed = output.header.get(_MALFORMED_CRC64)
    return {"crc64ecma": malformed} if malformed is not None else _checksums(output.hash_crc64_ecma)


# Headers the SDK parses strictly while it builds an answer, and modelpull never reads:
# one it cannot parse (a CDN's "Expires: 0") failed the whole request, exit 10.
_SDK_DATES = ("expires", "last-modified")  # in the SDK's GMT_DATE_FORMAT
_SDK_NUMBERS = (
    "x-tos-last-modified-ns",
    "x-tos-restore-expiry-days",
    "x-tos-symlink-target-size",
    "x-tos-tagging-count",
)


def _decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _gmt_date(text: str) -> bool:
    try:
        datetime.datetime.strptime(text, "%a, %d %b %Y %H:%M:%S GMT")
    except ValueError:
        return False
    return True


def _tolerate_garbled_headers(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A ``requests`` response hook, run before the SDK parses the headers: a CRC it
    could not parse is set aside for the verifier; other garbled headers it would parse,
    unused here, are dropped."""
    headers = response.headers
    crc = headers.get(_CRC64)
    if crc is not None and not _decimal(crc):
        del headers[_CRC64]
        headers[_MALFORMED_CRC64] = crc
    for names, fits in ((_SDK_DATES, _gmt_date), (_SDK_NUMBERS, _decimal)):
        for name in names:
            value = headers.get(name)
            if value is not None and not fits(value):
                del headers[name]
    return response


def _unreachable(exc: BaseException) -> bool:
    """True when a requests ConnectionError never reached the server (refused, DNS)."""
    return any(
        isinstance(e, uexc.NewConnectionError | uexc.NameResolutionError) for e in causes(exc)
    )


_FAULTS: FaultTable = (
    ((rexc.SSLError, uexc.SSLError), "tls"),
    (rexc.ConnectTimeout, "connect_timeout"),
    ((rexc.ReadTimeout, uexc.ReadTimeoutError, socket.timeout), "timeout"),
    (
        (
            rexc.ConnectionError,
            rexc.ChunkedEncodingError,
            uexc.ProtocolError,
            http.client.HTTPException,
            ConnectionError,
        ),
        "reset",
    ),
    ((rexc.RequestException, uexc.HTTPError, OSError), "network"),
)


def translate(exc: BaseException, site: Site) -> ModelPullError:
    """Map a TOS SDK, requests or urllib3 error to modelpull's tree; never leaks credentials.

    ``TosServerError`` keeps its status, error code and request id; a ``TosClientError``
    is judged by the error it wraps (a timeout, a reset, a short body, ...).
    """
    if isinstance(exc, ModelPullError):
        return exc
    if isinstance(exc, TosServerError):
        return store_error(
            status=exc.status_code if isinstance(exc.status_code, int) else None,
            code=exc.code,
            message=exc.message,
            request_id=exc.request_id,
            headers=exc.header,
            site=site,
        )
    if isinstance(exc, TosClientError):
        cause = exc.cause
        if isinstance(cause, BaseException) and cause is not exc:
            return translate(cause, site)
        message = str(exc.message or "")
        if message.startswith(_SHORT_BODY):
            return fault_error("short_body", exc, site)
        return StoreError(f"{site}: {message}", bucket=site.bucket, key=site.key)
    kind = fault_of(exc, _FAULTS)
    # requests raises one ConnectionError for a refused connection and a reset one.
    if kind == "reset" and isinstance(exc, rexc.ConnectionError) and _unreachable(exc):
        kind = "connect"
    return fault_error(kind, exc, site)


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


class TosSdkBackend(RangedGetBackend):
    """TOS through ``tos.TosClientV2``; one client shared by every worker.

    ``config.addressing_style == "path"`` selects the SDK's custom-domain mode, which
    leaves the bucket out of every URL. ``scheme`` is the URI scheme pulled from, for
    messages (``tos://`` and ``TOS_*`` by default).
    """

    name = "tos-sdk"

    def __init__(
        self, config: PullConfig, credentials: Credentials | None = None, *, scheme: str = "tos"
    ) -> None:
        super().__init__(config, scheme=scheme)
        if config.endpoint_url:
            # Native form (resolve() maps an S3 host); a scheme is added when missing.
            endpoint = normalize_endpoint(config.endpoint_url)
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
        custom = config.addressing_style == "path"
        # Empty keys make the SDK send unsigned requests (its AnonymousAuth).
        keys = None if config.no_sign_request else _sdk_credentials(config, credentials)
        try:
            self._client = tos.TosClientV2(
                ak=keys.access_key if keys else "",
                sk=keys.secret_key if keys else "",
                security_token=keys.token if keys else None,
                endpoint=endpoint,
                region=region,
                is_custom_domain=custom,
                max_retry_count=0,
                max_connections=config.most_concurrency + 4,
                enable_crc=False,
                connection_time=config.connect_timeout,
                socket_timeout=config.read_timeout,
                enable_verify_ssl=self.tls_verify is not False,
                ca_crt=self.tls_verify if isinstance(self.tls_verify, str) else None,
                # The SDK's DNS cache runs a thread of its own; the system resolver will do.
                dns_cache_time=0,
                auto_recognize_content_type=False,
            )
        except TosClientError as exc:
            raise UsageError(f"invalid TOS endpoint or region: {exc.message}") from None
        self._client.session.hooks["response"].append(_tolerate_garbled_headers)
        self._errors = ErrorMap(translate, self.names, endpoint)

    @property
    def client(self) -> Any:
        """The SDK's client, for comparison arms that call the SDK directly (``bench``)."""
        return self._client

    def head(self, bucket: str, key: str) -> ObjectInfo:
        with self._errors(bucket, key):
            output = self._client.head_object(bucket, key)
        return ObjectInfo(
            key=key,
            size=int(output.content_length),
            etag=str(output.etag or "").strip('"'),
            checksums=_answer_checksums(output),
        )

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        with self._errors(bucket, prefix):
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

    def open_range(self, obj: ObjectInfo, bucket: str, wanted: ByteRange) -> OpenRange:
        params: dict[str, Any] = {}
        if obj.etag:
            params["if_match"] = obj.etag  # bare, as download_file sends it
        if wanted is not None:
            params.update(range_start=wanted[0], range_end=wanted[1] - 1)
        with self._errors(bucket, obj.key):
            output = self._client.get_object(bucket, obj.key, **params)

        def readinto(view: memoryview) -> int:
            with self._errors(bucket, obj.key):
                data = output.read(len(view))
            view[: len(data)] = data
            return len(data)

        length = output.content_length
        return OpenRange(
            status=int(output.status_code),
            etag=output.etag,
            content_range=output.content_range,
            content_length=None if length is None else int(length),
            readinto=readinto,
            abort=output.resp.resp.close,  # requests' response
            release=lambda: None,  # requests hands back a connection whose body was read
            checksums=_answer_checksums(output),
            # The body only: a request waiting for its headers is bounded by read_timeout.
            interrupt=socket_interrupt(output.resp.resp.raw),
        )

    def close(self) -> None:
        self._client.close()
