"""What a store's answer or a broken transfer means, shared by every backend.

Two tables, one per kind of failure, so that the boto3 and TOS backends classify alike:

- :data:`ANSWERS` maps what the store said (HTTP status and S3/TOS error code) to a
  :class:`~modelpull.errors.StoreError` class and message; the first row that names the
  code or the status wins. :func:`store_error` applies it.
- :data:`FAULTS` maps a transport fault (a label such as ``"reset"``, which is also the
  retry counter's ``reason``) to a class and a message. :func:`fault_error` applies it.

Each backend keeps only what its SDK makes different: a :data:`FaultTable` saying which
exception class is which fault, and where a store answer's status and code sit. Its
``translate`` becomes its one context manager through :class:`ErrorMap`
(``with self._errors(bucket, key): ...``), in the manner of httpx's
``map_httpcore_exceptions``. Messages name the URI scheme and the variables of
the store being pulled from (:class:`StoreNames`): ``s3://`` and ``AWS_*``, or ``tos://``
and ``TOS_*``.
"""

from __future__ import annotations

import email.utils
import http.client
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from modelpull.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    EndpointError,
    ModelPullError,
    ObjectChangedError,
    ObjectNotFoundError,
    StoreError,
    TransientStoreError,
)

__all__ = [
    "ANSWERS",
    "DENIED_CODES",
    "FAULTS",
    "MAX_CLOCK_SKEW",
    "S3_NAMES",
    "TOS_NAMES",
    "TRANSIENT_CODES",
    "Answer",
    "ErrorMap",
    "Fault",
    "FaultKind",
    "FaultTable",
    "Site",
    "StoreNames",
    "Translate",
    "causes",
    "clock_skew",
    "fault_error",
    "fault_of",
    "names_for",
    "retry_after",
    "store_error",
]


@dataclass(frozen=True, slots=True)
class StoreNames:
    """How messages name one kind of store: its URI scheme and the settings to check."""

    scheme: str
    credentials: str  # the variables that hold keys
    no_credentials: str  # what to do when no keys were found at all
    endpoint: str  # the variable that holds the endpoint
    region: str  # what to set when the bucket lives in another region


S3_NAMES = StoreNames(
    scheme="s3",
    credentials="AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile",
    no_credentials="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a --profile, "
    "run where an instance role is available, or pass --no-sign-request for a public bucket",
    endpoint="AWS_ENDPOINT_URL",
    region="--region or AWS_REGION",
)
TOS_NAMES = StoreNames(
    scheme="tos",
    credentials="TOS_ACCESS_KEY/TOS_SECRET_KEY, TOS_SECURITY_TOKEN",
    no_credentials="set TOS_ACCESS_KEY and TOS_SECRET_KEY, choose a --profile, or pass "
    "--no-sign-request for a public bucket",
    endpoint="TOS_ENDPOINT",
    region="TOS_REGION and TOS_ENDPOINT",
)


def names_for(scheme: str) -> StoreNames:
    """The names for a URI scheme: ``tos`` gets TOS's, anything else S3's."""
    return TOS_NAMES if scheme == "tos" else S3_NAMES


@dataclass(frozen=True, slots=True)
class Site:
    """Where a request went: what messages name (``s3://bucket/key``) and errors carry."""

    bucket: str | None
    key: str | None
    names: StoreNames
    endpoint: str | None = None

    def __str__(self) -> str:
        if not self.bucket:
            return "the store"
        return f"{self.names.scheme}://{self.bucket}/{self.key or ''}"


# --- what the store said ---------------------------------------------------------------

# AWS's, TOS's and the common S3-compatible servers' names for "try again later".
# (Not RequestTimeTooSkewed: a clock that is off stays off; neither SDK retries it.)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "OperationAborted",
        "ExceedAccountQPSLimit",
        "ExceedBucketQPSLimit",
    }
)
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "InvalidSecurityToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "AccountProblem",
        "AccountDisable",
    }
)


@dataclass(frozen=True, slots=True)
class Answer:
    """One row of :data:`ANSWERS`: the codes and statuses it covers, and what they mean.

    ``message`` is a :meth:`str.format` template over ``where``, ``bucket``, ``code``,
    ``message`` (the store's own, cut short), ``skew`` (how far the store's clock is
    from this machine's, when its ``Date`` says), and ``credentials`` and ``region``
    from :class:`StoreNames`.
    """

    cls: type[StoreError]
    message: str
    codes: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()


ANSWERS: tuple[Answer, ...] = (
    Answer(BucketNotFoundError, "bucket {bucket!r} does not exist", frozenset({"NoSuchBucket"})),
    Answer(
        ObjectNotFoundError,
        "no object at {where}",
        frozenset({"NoSuchKey", "NotFound", "404"}),
        frozenset({404}),
    ),
    # Before the 403 row: the credentials are fine, the clock is not.
    Answer(
        AccessDeniedError,
        "{where}: the store refused the request's time ({skew}): this machine's clock is "
        "off; synchronise it (NTP) and run again",
        frozenset({"RequestTimeTooSkewed"}),
    ),
    Answer(
        AccessDeniedError,
        "access denied to {where}: check the credentials ({credentials}) "
        "and that they may read this bucket",
        DENIED_CODES,
        frozenset({403}),
    ),
    Answer(
        ObjectChangedError,
        "{where} changed during the pull (ETag mismatch)",
        frozenset({"PreconditionFailed", "412"}),
        frozenset({412}),
    ),
    Answer(
        ObjectChangedError,
        "{where} is shorter than listed: it changed",
        frozenset({"InvalidRange"}),
        frozenset({416}),
    ),
    Answer(
        TransientStoreError,
        "{where}: {code} {message}",
        TRANSIENT_CODES,
        frozenset({429, *range(500, 600)}),
    ),
    Answer(
        StoreError,
        "{where}: the bucket is in another region; set {region}",
        frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed"}),
        frozenset({301}),
    ),
)
_ANY_OTHER = Answer(StoreError, "{where}: {code} {message}")


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """A ``Retry-After`` in seconds; ``None`` when absent or an HTTP-date.

    Object stores send seconds; for a date, backoff alone still spaces the retries.
    """
    value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# How far a caller's clock may be from the store's before the store refuses its
# signatures (RequestTimeTooSkewed): 15 minutes on S3 and on TOS.
MAX_CLOCK_SKEW = 15 * 60


def clock_skew(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the store's clock (its answer's ``Date``) is ahead of this machine's
    (negative: behind); ``None`` without a readable ``Date``."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == "date"), None)
    try:
        sent = email.utils.parsedate_to_datetime(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    if sent is None or sent.tzinfo is None:
        return None
    return sent.timestamp() - time.time()


def store_error(
    *,
    status: int | None,
    code: str | None,
    message: str | None,
    request_id: str | None,
    headers: Mapping[str, str] | None,
    site: Site,
) -> StoreError:
    """The error for a store's answer, by :data:`ANSWERS`; never holds a credential.

    Against a server that answers in another dialect (TOS's SDK reading S3's XML, a
    HEAD with no body) there is no code: the status alone decides, except that a 403
    whose ``Date`` is over :data:`MAX_CLOCK_SKEW` from this machine's clock is told as
    the clock's fault (RequestTimeTooSkewed), not the credentials'.
    """
    skew = clock_skew(headers)
    skewed = skew is not None and abs(skew) > MAX_CLOCK_SKEW
    # A HEAD's 403 names no cause (botocore gives "403" as its code); its Date can.
    if code in (None, "", "403") and status == 403 and skewed:
        lookup = "RequestTimeTooSkewed"
    else:
        lookup = str(code or status or "Unknown")
    code = str(code or status or "Unknown")
    answer = next((a for a in ANSWERS if lookup in a.codes or status in a.statuses), _ANY_OTHER)
    text = answer.message.format(
        where=site,
        bucket=site.bucket,
        code=code,
        message=str(message or "").strip()[:200],
        credentials=site.names.credentials,
        region=site.names.region,
        skew=(
            f"the store's clock and this machine's differ by {abs(skew) / 60:.0f} min"
            if skewed and skew is not None
            else code
        ),
    )
    error = answer.cls(
        text.strip(),
        bucket=site.bucket,
        key=site.key,
        status=status,
        code=code,
        request_id=request_id or None,
        reason=code if code in TRANSIENT_CODES else str(status),
    )
    if isinstance(error, TransientStoreError):
        error.retry_after = retry_after(headers)
    return error


# --- what broke on the way ----------------------------------------------------------------

FaultKind = Literal[
    "tls", "plain_http", "connect_timeout", "connect", "timeout", "reset", "short_body", "network"
]


@dataclass(frozen=True, slots=True)
class Fault:
    """One row of :data:`FAULTS`: the class, and a message over ``where``, ``endpoint``,
    ``http_endpoint`` (the endpoint with ``http://``), ``endpoint_var`` (from
    :class:`StoreNames`), ``exc`` and ``kind`` (its class name).

    The error's ``reason`` (the retry counter's label) is the fault's own label unless
    ``reason`` says otherwise.
    """

    cls: type[StoreError]
    message: str
    reason: str | None = None


_CHECK_ENDPOINT = "check --endpoint-url / {endpoint_var} and the network"
FAULTS: Mapping[FaultKind, Fault] = {
    "tls": Fault(
        EndpointError, "TLS verification failed for {where}: use --ca-bundle with the store's CA"
    ),
    # "tls" as the reason: retrying cannot help, and only "tls" is spared retries.
    "plain_http": Fault(
        EndpointError,
        "TLS handshake failed for {where}: the endpoint speaks plain HTTP: use "
        "{http_endpoint} (--endpoint-url / {endpoint_var}; without a scheme, https:// is "
        "assumed)",
        reason="tls",
    ),
    "connect_timeout": Fault(EndpointError, "timed out connecting for {where}: " + _CHECK_ENDPOINT),
    "connect": Fault(
        EndpointError, "cannot reach the endpoint for {where}: {endpoint} - " + _CHECK_ENDPOINT
    ),
    "timeout": Fault(TransientStoreError, "{where}: read timed out"),
    "reset": Fault(TransientStoreError, "{where}: connection broken ({kind})"),
    "short_body": Fault(TransientStoreError, "{where}: body ended early"),
    "network": Fault(TransientStoreError, "{where}: {exc}"),
}


# An SDK's exception classes and the fault each is, first match wins.
FaultTable = tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], FaultKind], ...]


def fault_of(exc: BaseException, table: FaultTable) -> FaultKind | None:
    """The fault ``table`` gives ``exc``'s class; ``None`` when no row covers it."""
    return next((kind for types, kind in table if isinstance(exc, types)), None)


def fault_error(kind: FaultKind | None, exc: BaseException, site: Site) -> StoreError:
    """The error for a transport fault by :data:`FAULTS`; ``None``: nothing known.

    A failed TLS handshake whose OpenSSL reason shows a plain-HTTP answer is told as
    such: the usual cause is an endpoint given without a scheme (``https://`` assumed)
    in front of an ``http://`` server, which no CA bundle would fix.
    """
    if kind is None:
        return StoreError(
            f"{site}: unexpected {type(exc).__name__}: {exc}", bucket=site.bucket, key=site.key
        )
    if kind == "tls" and _plain_http(exc):
        kind = "plain_http"
    kind = _what_broke(kind, exc)
    fault = FAULTS[kind]
    endpoint = site.endpoint or "?"
    text = fault.message.format(
        where=site,
        endpoint=endpoint,
        http_endpoint=re.sub(r"^https://", "http://", site.endpoint or "http://HOST:PORT"),
        endpoint_var=site.names.endpoint,
        exc=exc,
        kind=_broken_by(exc),
    )
    return fault.cls(text, bucket=site.bucket, key=site.key, reason=fault.reason or kind)


def _what_broke(kind: FaultKind, exc: BaseException) -> FaultKind:
    """A broken body told by what broke it, however deep the SDK wrapped it.

    The TOS SDK's ``requests`` reports a short body and a read timeout in a body alike,
    as a ``ConnectionError`` or ``ChunkedEncodingError`` around urllib3's error; botocore
    reads the socket itself and sees each as what it is. Judged by the causes, both
    backends give the same reason (and retry label): ``short_body``, ``timeout``.
    """
    if kind not in ("reset", "network"):
        return kind
    found = list(causes(exc))
    if any(isinstance(e, http.client.IncompleteRead) for e in found):
        return "short_body"
    if any(isinstance(e, TimeoutError) for e in found):  # socket.timeout is TimeoutError
        return "timeout"
    return kind


def _broken_by(exc: BaseException) -> str:
    """The name that says how a connection broke: the OS's (``ConnectionResetError``)
    when an SDK wrapped it, else the exception's own."""
    return next(
        (type(e).__name__ for e in causes(exc) if isinstance(e, ConnectionError)),
        type(exc).__name__,
    )


# How OpenSSL (1.1 and 3.x) says that the other side answered a ClientHello in plain
# HTTP. Reason codes, not free text: the TOS SDK wraps every error in "http request ...".
_PLAIN_HTTP_SIGNS = (
    "wrong_version_number",
    "record_layer_failure",
    "http_request",
    "packet_length_too_long",
)


def _plain_http(exc: BaseException) -> bool:
    return any(sign in str(e).lower() for e in causes(exc) for sign in _PLAIN_HTTP_SIGNS)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: arguments, ``reason``, cause and context.

    SDKs wrap the error that says what happened (a refused connection, an OpenSSL
    reason) two or three levels down, in places that differ between versions.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", None)
        nested = (
            *current.args,
            getattr(current, "reason", None),
            *(kwargs.values() if isinstance(kwargs, dict) else ()),
            current.__cause__,
            current.__context__,
        )
        stack.extend(n for n in nested if isinstance(n, BaseException))


# --- one backend's context manager ---------------------------------------------------------


# A backend's translation of its SDK's exceptions; modelpull's own come back as they are.
Translate = Callable[[BaseException, Site], ModelPullError]


@dataclass(frozen=True, slots=True)
class ErrorMap:
    """``with errors(bucket, key):`` raises what ``translate`` makes of any exception.

    modelpull's own errors and ``BaseException`` (Ctrl-C) pass unchanged; the SDK's
    exception stays as the ``__cause__``.
    """

    translate: Translate
    names: StoreNames
    endpoint: str | None = None

    @contextmanager
    def __call__(self, bucket: str | None, key: str | None) -> Iterator[None]:
        try:
            yield
        except ModelPullError:
            raise
        except Exception as exc:
            raise self.translate(exc, Site(bucket, key, self.names, self.endpoint)) from exc
