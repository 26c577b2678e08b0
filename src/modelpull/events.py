"""What the engine tells its observers; progress, metrics and logs subscribe to these.

An observer is any callable taking one event. The engine calls observers from its
worker threads, so an observer must be thread-safe and quick; one that raises is
reported once on the ``modelpull`` logger and then ignored, never failing the pull.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BytesTransferred",
    "ConcurrencyChanged",
    "Event",
    "FileDone",
    "FileFailed",
    "FileQueued",
    "FileResumed",
    "FileSkipped",
    "FileVerified",
    "Observer",
    "PartHedged",
    "PartRetried",
    "PartsRepaired",
    "PullFinished",
    "PullStarted",
    "RequestFinished",
    "RequestStarted",
]


@dataclass(frozen=True, slots=True)
class PullStarted:
    """The listing is done: ``files``/``bytes`` selected; those already complete follow
    as :class:`FileSkipped`, those to fetch as :class:`FileQueued`."""

    backend: str
    bucket: str
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class FileQueued:
    path: str
    size: int
    parts: int


@dataclass(frozen=True, slots=True)
class FileSkipped:
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class FileResumed:
    """``bytes`` of ``path`` were already written by an interrupted pull and are kept."""

    path: str
    bytes: int


@dataclass(frozen=True, slots=True)
class BytesTransferred:
    """Bytes written for ``path``; negative when a failed attempt's bytes are discarded."""

    path: str
    bytes: int


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request to the store is in flight (GET of a part, or HEAD)."""

    path: str
    method: str


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A request ended: ``status`` is the HTTP status, or the error's reason.

    ``first_byte_seconds`` is the time to the response headers; ``None`` when no
    response came.
    """

    path: str
    method: str
    status: str
    first_byte_seconds: float | None
    seconds: float
    bytes: int


@dataclass(frozen=True, slots=True)
class PartRetried:
    path: str
    reason: str
    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class PartsRepaired:
    """``parts`` parts of ``path`` (``bytes`` in all) failed a check and are fetched again.

    ``reason`` is ``resume`` (a resumed part no longer matched the CRC its journal
    recorded) or ``integrity`` (found damaged after the file failed verification).
    """

    path: str
    parts: int
    bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class PartHedged:
    """Part ``index`` of ``path`` was far slower than its peers: a fresh request fetches
    its last ``bytes`` (see :mod:`modelpull.hedge`)."""

    path: str
    index: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ConcurrencyChanged:
    """The number of requests allowed in flight is now ``limit`` (set at the start, then
    moved by adaptive concurrency)."""

    limit: int


@dataclass(frozen=True, slots=True)
class FileVerified:
    """A checksum of ``kind`` (crc64ecma, crc32c, md5, size, ...) matched."""

    path: str
    kind: str


@dataclass(frozen=True, slots=True)
class FileDone:
    path: str
    size: int
    seconds: float


@dataclass(frozen=True, slots=True)
class FileFailed:
    path: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class PullFinished:
    files: int
    bytes: int
    seconds: float
    ok: bool


Event = (
    PullStarted
    | FileQueued
    | FileSkipped
    | FileResumed
    | BytesTransferred
    | RequestStarted
    | RequestFinished
    | PartRetried
    | PartsRepaired
    | ConcurrencyChanged
    | PartHedged
    | FileVerified
    | FileDone
    | FileFailed
    | PullFinished
)
Observer = Callable[[Event], None]
