"""The backend protocol: the few store operations the engine needs, and nothing else.

A backend translates its SDK's errors into :mod:`modelpull.errors` in one place, so the
engine never sees botocore or TOS SDK exceptions and never asks which backend it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from modelpull.objects import ObjectInfo

__all__ = [
    "Backend",
    "ChunkSink",
    "RangeResult",
]

# Receives each piece of a range in order; the view is only valid during the call.
ChunkSink = Callable[[memoryview], None]


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What a GET told beyond its bytes: HTTP status, time to headers, checksum headers."""

    status: int
    first_byte_seconds: float | None = None
    checksums: Mapping[str, str] = field(default_factory=dict)
    checksum_type: str | None = None


class Backend(Protocol):
    """Store operations; every method may raise only :class:`~modelpull.errors.ModelPullError`."""

    name: str

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and published checksums of one object."""
        ...

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, all pages."""
        ...

    def read_range(
        self,
        obj: ObjectInfo,
        bucket: str,
        start: int,
        end: int,
        buffer: memoryview,
        sink: ChunkSink,
    ) -> RangeResult:
        """GET bytes ``[start, end)`` of ``obj`` into ``buffer``, each piece passed to ``sink``.

        The request carries ``If-Match`` with the object's ETag and the response's ETag
        is checked too, so a replaced object raises
        :class:`~modelpull.errors.ObjectChangedError` instead of being stitched together.
        A body that ends early raises :class:`~modelpull.errors.TransientStoreError`.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...
