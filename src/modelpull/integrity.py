"""End-to-end verification of one file, on top of :mod:`modelpull.checksums`.

What is checked, by ``--verify`` mode:

- ``off``: the size only (every part must deliver exactly its range).
- ``auto`` (default): the size, and every CRC (TOS ``crc64ecma``, S3 ``crc64nvme``,
  ``crc32c``, ``crc32``) and SHA the store publishes for the whole object. The MD5 in
  a single-part ETag is checked when the store offers nothing else, because hashing in
  order costs about 1.4 s of CPU per GB while a CRC costs under 0.1 s and catches the
  same transit errors.
- ``strict``: as ``auto``, plus the MD5 ETag whenever there is one, and a file with
  no checksum at all fails instead of passing on its size.

CRCs are computed per part by the worker holding the bytes and combined; digests are
computed over the completed prefix of the file read back from the page cache.
Composite values (``<value>-N``, S3 multipart uploads) are not checked yet: ``auto``
passes over them, ``strict`` counts them as no checksum.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

from modelpull.checksums import (
    CRC_KINDS,
    DIGEST_KINDS,
    CrcAccumulator,
    CrcKind,
    PrefixHasher,
    ReadInto,
    split_composite,
    verify,
)
from modelpull.errors import IntegrityError
from modelpull.objects import ObjectInfo

__all__ = ["PartHasher", "Verifier"]

log = logging.getLogger("modelpull")

_PLAIN_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class PartHasher:
    """CRCs of one part, updated chunk by chunk as the bytes pass through a worker."""

    __slots__ = ("_kinds", "_values")

    def __init__(self, kinds: Sequence[CrcKind]) -> None:
        self._kinds = kinds
        self._values = [0] * len(kinds)

    def update(self, data: memoryview) -> None:
        for i, kind in enumerate(self._kinds):
            self._values[i] = kind.update(self._values[i], data)

    def values(self) -> dict[str, int]:
        return {kind.name: value for kind, value in zip(self._kinds, self._values, strict=True)}


class Verifier:
    """The checks for one version of one object, fed as its parts complete."""

    def __init__(self, path: str, size: int, expected: Mapping[str, str]) -> None:
        self.path = path
        self.size = size
        self.expected = dict(expected)
        self._crcs = [CRC_KINDS[k] for k in self.expected if k in CRC_KINDS]
        digests = [k for k in self.expected if k in DIGEST_KINDS]
        self._prefix = PrefixHasher(digests, size) if digests and size else None
        self._marked: set[int] = set()

    @classmethod
    def for_object(cls, obj: ObjectInfo, mode: str, *, path: str) -> Verifier:
        """Pick the checks ``mode`` asks for among what the store published for ``obj``."""
        if mode == "off":
            return cls(path, obj.size, {})
        expected: dict[str, str] = {}
        for kind, value in obj.checksums.items():
            if kind not in CRC_KINDS and kind not in DIGEST_KINDS:
                continue
            try:
                text, parts = split_composite(value)
                if parts is not None:
                    log.debug("%s: composite %s %s not checked", path, kind, value)
                    continue
                (CRC_KINDS.get(kind) or DIGEST_KINDS[kind]).decode(text)
            except ValueError:
                log.warning(
                    "%s: ignoring malformed %s checksum %r from the store", path, kind, value
                )
                continue
            expected[kind] = text
        if _PLAIN_MD5.match(obj.etag) and (mode == "strict" or not expected):
            expected["md5"] = obj.etag.lower()
        if mode == "strict" and not expected and obj.size:
            raise IntegrityError(
                f"{path}: --verify strict, but the store published no checksum for it "
                "(no CRC, no SHA, and the ETag is not a plain MD5)",
                path=path,
                algorithm="none",
                expected="a checksum",
                actual="none",
            )
        return cls(path, obj.size, expected)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.expected)

    def part_hasher(self) -> PartHasher:
        return PartHasher(self._crcs)

    def part_done(self, index: int, start: int, end: int, fd: int) -> None:
        """A part is on disk: extend the in-order digest over whatever prefix is complete."""
        if self._prefix is None or end <= start:
            return
        self._marked.add(index)
        self._prefix.mark_done(start, end - start)
        self._prefix.hash_ready(_reader(fd))

    def verify(
        self, fd: int, parts: Sequence[tuple[int, int]], done: Mapping[int, Mapping[str, int]]
    ) -> list[str]:
        """Check the complete temp file; the kinds that matched, or :class:`IntegrityError`."""
        actual_size = os.fstat(fd).st_size
        if actual_size != self.size:
            raise IntegrityError(
                f"{self.path}: {actual_size} bytes on disk, the store has {self.size}",
                path=self.path,
                algorithm="size",
                expected=str(self.size),
                actual=str(actual_size),
            )
        verified = ["size"]
        if self._crcs:
            acc = CrcAccumulator(kind.name for kind in self._crcs)
            for index, (start, end) in enumerate(parts):
                if end > start:
                    acc.add_part(start, end - start, done[index])
            for name, value in acc.finish(self.size).items():
                verify(name, self.expected[name], value, path=self.path)
                verified.append(name)
        if self._prefix is not None:
            for index, (start, end) in enumerate(parts):
                if index not in self._marked and end > start:  # resumed from the journal
                    self._marked.add(index)
                    self._prefix.mark_done(start, end - start)
            for name, digest in self._prefix.finish(_reader(fd)).items():
                verify(name, self.expected[name], digest, path=self.path)
                verified.append(name)
        return verified


def _reader(fd: int) -> ReadInto:
    def read_into(offset: int, view: memoryview) -> int:
        return os.preadv(fd, [view], offset)

    return read_into
