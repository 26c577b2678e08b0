"""What the store holds and where it lands: the domain types every layer shares.

Neutral ground: backends produce :class:`ObjectInfo`, the planner turns it into
:class:`RemoteFile`, the engine and the reports consume both; this module imports
nothing of modelpull's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Layout", "ObjectInfo", "RemoteFile", "UploadPart"]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object as the store lists or heads it.

    ``etag`` is without quotes. ``checksums`` maps a kind (``crc64ecma``, ``crc64nvme``,
    ``crc32c``, ``crc32``, ``sha256``) to the value as the store published it (base64
    for S3 additional checksums, decimal text for TOS's CRC-64); ``checksum_type`` is
    S3's ``FULL_OBJECT`` or ``COMPOSITE`` when known. ``etag_md5`` is false when the
    store says the ETag is no MD5 of the bytes, though it may look like one (S3's
    SSE-KMS and SSE-C objects); a listing cannot tell.
    """

    key: str
    size: int
    etag: str
    checksums: Mapping[str, str] = field(default_factory=dict)
    checksum_type: str | None = None
    etag_md5: bool = True


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One object to pull and the POSIX path, relative to DEST, it lands at."""

    obj: ObjectInfo
    path: str


@dataclass(frozen=True, slots=True)
class UploadPart:
    """One part of a multipart upload: its size, and what the store publishes for it.

    ``checksums`` maps a kind to the part's own published value: ``md5`` from a part's
    plain ETag, ``crc32c``/``sha256``/... from its additional checksum headers.
    """

    size: int
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Layout:
    """How an object was uploaded in parts: what composite checks are computed over.

    ``exact`` is true when the store said so (``partNumber`` requests, object
    attributes); false when the sizes are a standard part size consistent with the part
    count and the object size, the best that can be done for a store that will not say.
    """

    parts: tuple[UploadPart, ...]
    exact: bool = True

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(part.size for part in self.parts)
