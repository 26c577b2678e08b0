"""Object URIs (``s3://bucket/key``, ``tos://bucket/prefix/``) and endpoint URLs.

Volcengine TOS serves two protocols on two host names per region: its native one
(``tos-<region>.volces.com``, ``tos-<region>.ivolces.com`` inside Volcengine's network),
which only its own SDKs speak, and S3 (``tos-s3-<region>.volces.com`` /
``tos-s3-<region>.ivolces.com``), which boto3 speaks. :func:`to_s3_endpoint` and
:func:`to_native_endpoint` map one onto the other, so that a deployment's one endpoint
setting serves either backend (:func:`modelpull.resolve.resolve` hands each backend
the form it speaks).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from modelpull.errors import InvalidURIError, UsageError

__all__ = [
    "SCHEMES",
    "ObjectURI",
    "endpoint_for_region",
    "normalize_endpoint",
    "parse_uri",
    "region_from_endpoint",
    "to_native_endpoint",
    "to_s3_endpoint",
]

SCHEMES = ("s3", "tos")
# Lenient on purpose: S3-compatible stores (and legacy AWS buckets) accept upper case and
# underscores; anything that could not be a host label or path segment is refused.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class ObjectURI:
    """A parsed URI: ``key`` is empty for a whole bucket and ends with ``/`` for a folder."""

    scheme: str
    bucket: str
    key: str

    @property
    def is_folder(self) -> bool:
        """True when the URI can only name a folder (empty key or trailing slash)."""
        return self.key == "" or self.key.endswith("/")

    @property
    def wildcard(self) -> tuple[str, str] | None:
        """``(folder, pattern)`` when the key's last segment is a glob, as s5cmd reads
        ``s3://bucket/prefix/*.json``: the files under ``folder`` whose path below it
        matches ``pattern`` (``*`` also crosses ``/``), i.e. ``s3://bucket/prefix/``
        with ``--include '*.json'``. ``None`` for any other URI. An object whose key is
        exactly the glob's text is still taken as that one object."""
        folder, slash, last = self.key.rpartition("/")
        if not any(c in last for c in _GLOB_CHARS):
            return None
        return folder + slash, last

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse_uri(text: str) -> ObjectURI:
    """Parse ``s3://bucket/key`` or ``tos://bucket/prefix/``; raise :class:`InvalidURIError`."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise InvalidURIError(
            f"invalid URI {text!r}: expected s3://BUCKET/KEY or s3://BUCKET/PREFIX/ "
            "(tos:// works the same way)"
        )
    bucket, _, key = rest.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise InvalidURIError(
            f"invalid bucket name {bucket!r} in {text!r}: bucket names are 2-255 characters "
            "of letters, digits, '.', '-' and '_'"
        )
    if "\x00" in key:
        raise InvalidURIError(f"invalid key in {text!r}: keys cannot contain NUL")
    return ObjectURI(scheme=scheme.lower(), bucket=bucket, key=key)


def normalize_endpoint(url: str) -> str:
    """An endpoint URL with a scheme: ``minio.local:9000`` becomes ``https://minio.local:9000``.

    botocore rejects a scheme-less endpoint with a bare "Invalid endpoint"; users copy
    host names from consoles, so the scheme is supplied instead (TLS by default).
    """
    text = url.strip()
    if not text:
        raise UsageError("empty endpoint URL")
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    # Checked first, and the URL never echoed: "user:password@" is no S3 credential
    # (requests are signed with the access key), and every error message, log line and
    # report that shows the endpoint would show the password.
    if "@" in parts.netloc:
        raise UsageError(
            "the endpoint URL holds a user name or password ('...@'): remove it; S3 "
            "requests are signed with the access key (AWS_ACCESS_KEY_ID), not by the URL"
        )
    text = text.rstrip("/")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"invalid endpoint URL {url!r}: use http(s)://HOST[:PORT], or HOST[:PORT] for https"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UsageError(f"invalid port in endpoint URL {url!r}") from None
    return text


# Region names are lower-case words and digits joined by dashes: cn-beijing,
# cn-beijing2, ap-southeast-1. "control" hosts are TOS's control plane, not data.
_REGION = r"[a-z0-9]+(?:-[a-z0-9]+)*"
_S3_HOST = re.compile(rf"^tos-s3-(?P<region>{_REGION})\.(?P<net>i?volces)\.com$")
_NATIVE_HOST = re.compile(rf"^tos-(?!s3-|control-)(?P<region>{_REGION})\.(?P<net>i?volces)\.com$")


def _swap_host(url: str, pattern: re.Pattern[str], host: Callable[[re.Match[str]], str]) -> str:
    """``url`` normalised, its host replaced by ``host(match)`` when ``pattern`` matches it."""
    text = normalize_endpoint(url)
    parts = urlsplit(text)
    match = pattern.match((parts.hostname or "").lower())
    if match is None:
        return text
    netloc = host(match) if parts.port is None else f"{host(match)}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def to_s3_endpoint(url: str) -> str:
    """``url`` with a native TOS host replaced by its S3 twin; any other URL as it is.

    ``tos-cn-beijing.volces.com`` becomes ``https://tos-s3-cn-beijing.volces.com`` and
    ``http://tos-cn-beijing.ivolces.com`` becomes ``http://tos-s3-cn-beijing.ivolces.com``.
    The result is normalised like any endpoint (``https://`` added when missing).
    """
    return _swap_host(url, _NATIVE_HOST, lambda m: f"tos-s3-{m['region']}.{m['net']}.com")


def to_native_endpoint(url: str) -> str:
    """The inverse of :func:`to_s3_endpoint`, for the TOS SDK (which refuses S3 hosts)."""
    return _swap_host(url, _S3_HOST, lambda m: f"tos-{m['region']}.{m['net']}.com")


def region_from_endpoint(url: str) -> str | None:
    """The region a TOS endpoint (native or S3) names, or ``None`` for any other host."""
    host = (urlsplit(normalize_endpoint(url)).hostname or "").lower()
    match = _S3_HOST.match(host) or _NATIVE_HOST.match(host)
    return match["region"] if match else None


def endpoint_for_region(region: str) -> str:
    """The public S3 endpoint of a TOS region, as the SDK derives its own from a region."""
    if not re.fullmatch(_REGION, region):
        raise UsageError(f"invalid TOS region {region!r}: expected a name such as cn-beijing")
    return f"https://tos-s3-{region}.volces.com"
