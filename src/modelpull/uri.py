"""Object URIs (``s3://bucket/key``, ``tos://bucket/prefix/``) and endpoint URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from modelpull.errors import InvalidURIError, UsageError

__all__ = ["SCHEMES", "ObjectURI", "normalize_endpoint", "parse_uri"]

SCHEMES = ("s3", "tos")
# Lenient on purpose: S3-compatible stores (and legacy AWS buckets) accept upper case and
# underscores; anything that could not be a host label or path segment is refused.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


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
