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

import re
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
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
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
    ``message`` (the store's own, cut short), and ``credentials`` and ``region`` from
    :class:`StoreNames`.
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
    HEAD with no body) there is no code: the status alone decides.
    """
    code = str(code or status or "Unknown")
    answer = next((a for a in ANSWERS if code in a.codes or status in a.statuses), _ANY_OTHER)
    text = answer.message.format(
        where=site,
        bucket=site.bucket,
        code=code,
        message=str(message or "").strip()[:200],
        credentials=site.names.credentials,
        region=site.names.region,
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
    fault = FAULTS[kind]
    endpoint = site.endpoint or "?"
    text = fault.message.format(
        where=site,
        endpoint=endpoint,
        http_endpoint=re.sub(r"^https://", "http://", site.endpoint or "http://HOST:PORT"),
        endpoint_var=site.names.endpoint,
        exc=exc,
        kind=type(exc).__name__,
    )
    return fault.cls(text, bucket=site.bucket, key=site.key, reason=fault.reason or kind)


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
