"""What the store holds and where it lands: the domain types every layer shares.

Neutral ground: backends produce :class:`ObjectInfo`, the planner turns it into
:class:`RemoteFile`, the engine and the reports consume both; this module imports
nothing of modelpull's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ObjectInfo", "RemoteFile"]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object as the store lists or heads it.

    ``etag`` is without quotes. ``checksums`` maps a kind (``crc64ecma``, ``crc64nvme``,
    ``crc32c``, ``crc32``, ``sha256``) to the value as the store published it (base64
    for S3 additional checksums, decimal text for TOS's CRC-64); ``checksum_type`` is
    S3's ``FULL_OBJECT`` or ``COMPOSITE`` when known.
    """

    key: str
    size: int
    etag: str
    checksums: Mapping[str, str] = field(default_factory=dict)
    checksum_type: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One object to pull and the POSIX path, relative to DEST, it lands at."""

    obj: ObjectInfo
    path: str
