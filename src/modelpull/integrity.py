"""End-to-end verification of one file: what to check, and checking it.

What is checked, by ``--verify`` mode:

- ``off``: the size only (every part must deliver exactly its range).
- ``auto`` (default): the size, and every CRC and SHA the store publishes, whole-object
  (TOS ``crc64ecma``; S3 ``crc64nvme``, ``crc32c``, ``crc32``, ``sha256``, ``sha1``) or
  composite (``<value>-N``: the checksum of the N upload parts' checksums). The MD5 —
  a single-part ETag, or a multipart ETag ``<MD5 of the parts' MD5s>-N`` — is checked
  when the store offers nothing else: MD5 costs about 1.4 s of CPU per GB where a CRC
  costs under 0.1 s and catches the same transit errors.
- ``strict``: as ``auto``, plus the MD5 or multipart ETag whenever there is one; a file
  with no checksum at all, or whose composite checks cannot be computed because the
  upload's part sizes are unknown, fails instead of passing on its size.

Composite values and multipart ETags are computed per upload part. The part sizes come
from the store (a :class:`~modelpull.objects.Layout`) or, for a store that will not say,
from the standard part sizes uploaders use that fit the part count and the object size
(:data:`STANDARD_PART_SIZES`, in that order); a guessed layout that matches none of them
makes the check *unverifiable* (reported as such; ``strict`` fails), never a false
alarm. An upload part that lies within one download part (8 and 16 MiB upload parts in
32 MiB download parts, the common case) is hashed by its worker as the bytes pass; one
that straddles two download parts has its CRCs combined from the pieces and its
digests computed from disk (the page cache) once both pieces are in.

Every part also carries a CRC-32C (:data:`JOURNAL_KIND`) computed from its bytes as they
were written, whatever the mode: the resume journal keeps it, so a resumed part is
re-read and re-checked before it counts, and a failed file can be searched for the
parts that were damaged on disk.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelpull.checksums import (
    CRC_KINDS,
    DIGEST_KINDS,
    KINDS,
    CrcKind,
    DigestKind,
    split_composite,
    verify,
    verify_composite,
)
from modelpull.errors import IntegrityError
from modelpull.files import read_at, split_parts
from modelpull.hashing import (
    CrcAccumulator,
    PartHasher,
    PartValues,
    Piece,
    PrefixHasher,
    ReadInto,
)
from modelpull.objects import Layout, ObjectInfo, UploadPart

__all__ = [
    "JOURNAL_KIND",
    "STANDARD_PART_SIZES",
    "Verifier",
    "guess_layouts",
    "is_multipart_etag",
    "needs_layout",
    "whole_crc",
]

log = logging.getLogger("modelpull")

#: The CRC every part carries, whatever ``--verify`` says: awscrt's CRC-32C runs at
#: 20+ GB/s without the GIL, so it costs well under 0.1 s per GB.
JOURNAL_KIND = "crc32c"

MiB = 1 << 20
#: Part sizes of common uploaders, tried in this order when a store does not tell an
#: object's layout: the AWS CLI and boto3 (8 MiB), mc (16 MiB), rclone and the S3
#: minimum (5 MiB), s5cmd (50 MiB), then other round sizes seen in the field.
STANDARD_PART_SIZES = tuple(n * MiB for n in (8, 16, 5, 50, 64, 20, 10, 32, 100, 128, 256, 512))
# Each guess beyond the first costs one read of the file, on a mismatch only.
MAX_GUESSES = 4

_PLAIN_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-fA-F]{32})-([0-9]{1,5})$")
_READ_BUFFER = 4 << 20


def is_multipart_etag(etag: str) -> int | None:
    """The part count of a multipart ETag (``<hex>-N``), else ``None``."""
    match = _MULTIPART_ETAG.match(etag.strip('"'))
    return int(match[2]) if match and int(match[2]) >= 1 else None


def needs_layout(obj: ObjectInfo, mode: str) -> bool:
    """True when checking ``obj`` under ``mode`` needs its upload's part sizes."""
    if mode == "off":
        return False
    full, composites = _published(obj, "")
    cheap = full or [c for c in composites if c.kind != "md5"]
    multipart_md5 = (
        obj.etag_md5 and is_multipart_etag(obj.etag) is not None and (mode == "strict" or not cheap)
    )
    return bool(composites) or multipart_md5


def guess_layouts(size: int, count: int) -> list[Layout]:
    """Uniform layouts of ``count`` parts for ``size`` bytes, from the standard sizes."""
    found: list[Layout] = []
    for part in STANDARD_PART_SIZES:
        if count >= 1 and (count - 1) * part < size <= count * part:
            last = size - (count - 1) * part
            sizes = [part] * (count - 1) + [last]
            found.append(Layout(tuple(UploadPart(s) for s in sizes), exact=False))
    return found


@dataclass(frozen=True, slots=True)
class _Composite:
    """One check over the upload parts: ``kind`` of each part, then of their concatenation."""

    label: str  # as reported: "crc32c-composite", "multipart-etag"
    kind: str
    published: str
    count: int


def _published(obj: ObjectInfo, path: str) -> tuple[dict[str, str], list[_Composite]]:
    """The store's whole-object values and composite values for ``obj``, well-formed only."""
    full: dict[str, str] = {}
    composites: list[_Composite] = []
    etag_parts = is_multipart_etag(obj.etag)
    for kind, text in obj.checksums.items():
        if kind not in KINDS:
            continue
        try:
            value, count = split_composite(text)
            KINDS[kind].decode(value)
        except ValueError:
            if path:
                log.warning(
                    "%s: ignoring malformed %s checksum %r from the store", path, kind, text
                )
            continue
        # A multipart upload's CRC32/CRC32C/SHA is composite unless the store says
        # FULL_OBJECT (CRC-64/NVME always is); some stores omit the "-N" and the type.
        multipart = etag_parts is not None and obj.checksum_type != "FULL_OBJECT"
        if count is None and multipart and kind != "crc64nvme":
            count = etag_parts
        if count is None:
            full[kind] = value
        else:
            composites.append(_Composite(f"{kind}-composite", kind, value, count))
    return full, composites


class Verifier:
    """The checks ``mode`` asks for on one version of one object, and their state.

    :meth:`split` fixes the download parts, :meth:`hasher` gives each part's hasher,
    :meth:`feed` extends the in-order digests as bytes are written, :meth:`verify`
    checks the whole file.
    """

    def __init__(self, path: str, obj: ObjectInfo, mode: str, layout: Layout | None = None) -> None:
        self.path = path
        self.size = obj.size
        self._strict = mode == "strict"
        self.unverifiable: str | None = None
        full, composites = _published(obj, path) if mode != "off" else ({}, [])
        etag = obj.etag.strip('"')
        etag_parts = is_multipart_etag(etag)
        cheap = full or [c for c in composites if c.kind != "md5"]
        # An ETag the store says is no MD5 (SSE-KMS, SSE-C) checks nothing: taken for
        # one, it failed every pull of such an object as corrupt.
        if obj.etag_md5 and (mode == "strict" or (mode == "auto" and not cheap)):
            if _PLAIN_MD5.match(etag):
                full["md5"] = etag.lower()
            elif etag_parts is not None:
                composites.append(_Composite("multipart-etag", "md5", etag[:32], etag_parts))
        self._full_crcs = {k: v for k, v in full.items() if k in CRC_KINDS}
        self._full_digests = {k: v for k, v in full.items() if k in DIGEST_KINDS}
        self._composites = composites
        self._guesses: list[Layout] = []
        self.layout = self._choose_layout(layout, composites)
        if composites and self.layout is None:
            self._composites = []
            what = "multipart etag" if etag_parts else "composite checksum"
            self.unverifiable = f"{what}, part size unknown"
        if mode == "strict" and obj.size and (self.unverifiable or not self.kinds[1:]):
            reason = self.unverifiable or "no CRC, no SHA, and the ETag is not an MD5"
            raise IntegrityError(
                f"{path}: --verify strict, but it cannot be checked ({reason})",
                path=path,
                algorithm="none",
                expected="a checksum",
                actual="none",
            )
        kinds = dict.fromkeys([JOURNAL_KIND, *self._full_crcs])
        self._crc_kinds: tuple[CrcKind, ...] = tuple(CRC_KINDS[k] for k in kinds)
        segment = dict.fromkeys(c.kind for c in self._composites)
        self._segment_kinds: tuple[CrcKind | DigestKind, ...] = tuple(KINDS[k] for k in segment)
        self._prefix: PrefixHasher | None = None
        self.reset_digests()
        self.parts: list[tuple[int, int]] = [(0, obj.size)]
        self._pieces: list[list[Piece]] = [[]]

    def _choose_layout(self, given: Layout | None, composites: list[_Composite]) -> Layout | None:
        if not composites:
            return given
        count = composites[0].count
        if given is not None and len(given.parts) == count and sum(given.sizes) == self.size:
            return given
        guesses = guess_layouts(self.size, count)
        self._guesses = guesses[1:MAX_GUESSES]
        return guesses[0] if guesses else None

    @property
    def kinds(self) -> tuple[str, ...]:
        """What :meth:`verify` checks, as reported: ``size`` first."""
        labels = ["size", *self._full_crcs, *(c.label for c in self._composites)]
        return (*labels, *self._full_digests)

    @property
    def in_order(self) -> PrefixHasher | None:
        """The hasher of the whole-file digests (MD5, SHA), when there are any."""
        return self._prefix

    def reset_digests(self) -> None:
        """Start the in-order digests over: bytes already hashed are being written again
        (refetched parts, a stream started over). What is written from now on is fed as
        usual; :meth:`verify` reads back the rest."""
        digests = list(self._full_digests)
        self._prefix = PrefixHasher(digests, self.size) if digests and self.size else None

    # -- parts ------------------------------------------------------------------------

    def split(self, part_size: int) -> list[tuple[int, int]]:
        """The download parts (``part_size`` ranges), and how upload parts lie over them."""
        self.parts = split_parts(self.size, part_size)
        sizes = self.layout.sizes if self.layout is not None and self._composites else ()
        self._pieces = _pieces_of(self.parts, sizes)
        return self.parts

    @property
    def splittable(self) -> bool:
        """A part may be fetched in two pieces (a hedged tail): no check hashes its upload
        parts in order, so the pieces' CRCs combine into the part's."""
        return not self._segment_kinds

    def crc_hasher(self) -> PartHasher:
        """A hasher of the CRC kinds only, for a piece of a part."""
        return PartHasher(self._crc_kinds)

    def hasher(self, index: int) -> PartHasher:
        """A fresh hasher for part ``index`` (as split by :meth:`split`)."""
        return PartHasher(self._crc_kinds, self._segment_kinds, self._pieces[index])

    def feed(self, offset: int, view: memoryview) -> None:
        """``view`` was just written at ``offset`` (from a worker, its request in flight):
        extend the in-order digests with it when it lands where hashing stands; what it
        cannot reach now, :meth:`part_done` reads back."""
        prefix = self._prefix
        if prefix is None or not len(view):
            return
        try:
            prefix.feed(offset, view)
        except ValueError:
            # Bytes written a second time without a reset: the digests may hold their
            # first value. Start over; verify() reads back whatever is not fed again.
            log.debug("%s: bytes at %d written again: digests start over", self.path, offset)
            if self._prefix is prefix:
                self.reset_digests()

    def part_done(self, index: int, fd: int) -> None:
        """Part ``index`` is on disk (its pieces were fed as they were written): read back
        and hash whatever of the written prefix is not hashed yet."""
        if self._prefix is not None:
            self._prefix.hash_ready(_reader(fd))

    def values_from_disk(
        self, fd: int, index: int, buffer: memoryview, *, digests: bool = False
    ) -> PartValues:
        """Part ``index``'s values, computed by reading it back from ``fd``; with
        ``digests``, its bytes are fed to the in-order digests too (from the same reads)."""
        start, end = self.parts[index]
        hasher = self.hasher(index)
        prefix = self._prefix if digests else None
        offset = start
        while offset < end:
            got = read_at(fd, buffer[: min(len(buffer), end - offset)], offset)
            if got <= 0:
                break  # short: the size check reports it
            piece = buffer[:got]
            hasher.update(piece)
            if prefix is not None:
                prefix.feed(offset, piece)
            offset += got
        return hasher.values()

    # -- the whole file ---------------------------------------------------------------

    def check_file(self, fd: int) -> tuple[list[str], int]:
        """Check a complete file read from ``fd`` (already in place, or found in DEST):
        the checks that passed and its CRC-32C, or :class:`IntegrityError`."""
        buffer = memoryview(bytearray(_READ_BUFFER))
        values: dict[int, PartValues] = {}
        # One pass: read in file order, every piece is where the digests stand.
        for index in range(len(self.parts)):
            values[index] = self.values_from_disk(fd, index, buffer, digests=True)
        return self.verify(fd, values), whole_crc(self.parts, values)

    def verify(self, fd: int, values: Mapping[int, PartValues]) -> list[str]:
        """Check the complete file behind ``fd``; the checks that passed, or
        :class:`IntegrityError`. ``values`` are every part's, by index."""
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
        if self._full_crcs:
            acc = CrcAccumulator(self._full_crcs)
            for index, (start, end) in enumerate(self.parts):
                if end > start:
                    acc.add_part(start, end - start, values[index].crcs)
            for name, value in acc.finish(self.size).items():
                verify(name, self._full_crcs[name], value, path=self.path)
                verified.append(name)
        verified += self._verify_composites(fd, values)
        if self._prefix is not None:
            # Every byte is in: those not fed (resumed, or written before a reset) are
            # read back.
            self._prefix.mark_all_done()
            for name, digest in self._prefix.finish(_reader(fd)).items():
                verify(name, self._full_digests[name], digest, path=self.path)
                verified.append(name)
        return verified

    def _verify_composites(self, fd: int, values: Mapping[int, PartValues]) -> list[str]:
        if not self._composites:
            return []
        segments = self._segment_values(fd, [values[i] for i in range(len(self.parts))])
        try:
            self._check_composites(segments)
        except IntegrityError:
            assert self.layout is not None
            if self.layout.exact:
                raise
            # The guess may be wrong rather than the bytes: try the other standard sizes.
            for guess in self._guesses:
                if self._try_layout(fd, guess):
                    self.layout = guess
                    break
            else:
                label = self._composites[0].label
                self.unverifiable = f"{label}, part size unknown"
                if self._strict:
                    raise IntegrityError(
                        f"{self.path}: --verify strict, but its {label} cannot be checked: the "
                        "store does not tell the upload's part size, and no standard size fits",
                        path=self.path,
                        algorithm=label,
                        expected=self._composites[0].published,
                        actual="unknown",
                    ) from None
                log.warning("%s: could not check its %s", self.path, self.unverifiable)
                return []
        return [c.label for c in self._composites]

    def _check_composites(self, segments: Sequence[Mapping[str, int | bytes]]) -> None:
        for check in self._composites:
            parts = [seg[check.kind] for seg in segments]
            verify_composite(check.kind, check.published, parts, path=self.path)

    def _segment_values(
        self, fd: int, values: Sequence[PartValues]
    ) -> list[Mapping[str, int | bytes]]:
        """Each upload part's values: as hashed inline, combined from pieces, or read back."""
        assert self.layout is not None
        found: dict[int, dict[str, int | bytes]] = {}
        for part in values:
            for index, seg in part.segments.items():
                found[index] = dict(seg)
            for index, (length, crcs) in part.pieces.items():
                into = found.setdefault(index, {})
                for name, crc in crcs.items():
                    kind = CRC_KINDS[name]
                    before = into.get(name, 0)
                    assert isinstance(before, int)
                    into[name] = kind.combine(before, crc, length)
        digests = [k for k in self._segment_kinds if isinstance(k, DigestKind)]
        buffer = memoryview(bytearray(_READ_BUFFER))
        offset = 0
        for index, size in enumerate(self.layout.sizes):
            into = found.setdefault(index, {})
            missing = [k for k in digests if k.name not in into]
            if missing:
                hasher = PartHasher((), missing, [(index, size, True)])
                _feed(hasher, fd, offset, offset + size, buffer)
                into.update(hasher.values().segments.get(index, {}))
            offset += size
        return [found[i] for i in range(len(self.layout.sizes))]

    def _try_layout(self, fd: int, layout: Layout) -> bool:
        kinds = self._segment_kinds
        buffer = memoryview(bytearray(_READ_BUFFER))
        segments: list[Mapping[str, int | bytes]] = []
        offset = 0
        for index, size in enumerate(layout.sizes):
            hasher = PartHasher((), kinds, [(index, size, True)])
            _feed(hasher, fd, offset, offset + size, buffer)
            segments.append(hasher.values().segments.get(index, {}))
            offset += size
        try:
            self._check_composites(segments)
        except IntegrityError:
            return False
        return True

    # -- finding damaged parts --------------------------------------------------------

    def damaged(self, fd: int, layout: Layout) -> set[int]:
        """Download parts holding an upload part whose bytes on disk disagree with the
        value the store publishes for that part (``layout`` must carry them)."""
        bad: set[int] = set()
        buffer = memoryview(bytearray(_READ_BUFFER))
        offset = 0
        for index, part in enumerate(layout.parts):
            kinds = [KINDS[k] for k in part.checksums if k in KINDS]
            end = offset + part.size
            if kinds:
                hasher = PartHasher((), kinds, [(index, part.size, True)])
                _feed(hasher, fd, offset, end, buffer)
                got = hasher.values().segments.get(index)
                if got is None or not _agrees(got, part.checksums):
                    bad |= {i for i, (s, e) in enumerate(self.parts) if s < end and e > offset}
            offset = end
        return bad


def whole_crc(parts: Sequence[tuple[int, int]], values: Mapping[int, PartValues]) -> int:
    """The file's :data:`JOURNAL_KIND` CRC, combined from its parts'."""
    kind = CRC_KINDS[JOURNAL_KIND]
    total = 0
    for index, (start, end) in enumerate(parts):
        total = kind.combine(total, values[index].crcs[JOURNAL_KIND], end - start)
    return total


def _agrees(values: Mapping[str, int | bytes], published: Mapping[str, str]) -> bool:
    for kind, text in published.items():
        if kind not in values:
            continue
        try:
            if KINDS[kind].decode(split_composite(text)[0]) != values[kind]:
                return False
        except ValueError:
            continue  # a value the store garbled proves nothing
    return True


def _pieces_of(parts: Sequence[tuple[int, int]], sizes: Sequence[int]) -> list[list[Piece]]:
    """For each download part, the upload parts (or pieces of them) it holds, in order."""
    result: list[list[Piece]] = [[] for _ in parts]
    if not sizes:
        return result
    start = 0
    for index, size in enumerate(sizes):
        end = start + size
        for i, (a, b) in enumerate(parts):
            if a < end and b > start:
                lo, hi = max(a, start), min(b, end)
                result[i].append((index, hi - lo, lo == start and hi == end))
        start = end
    return result


def _feed(hasher: PartHasher, fd: int, start: int, end: int, buffer: memoryview) -> None:
    offset = start
    while offset < end:
        got = read_at(fd, buffer[: min(len(buffer), end - offset)], offset)
        if got <= 0:
            return
        hasher.update(buffer[:got])
        offset += got


def _reader(fd: int) -> ReadInto:
    def read_into(offset: int, view: memoryview) -> int:
        return os.preadv(fd, [view], offset)

    return read_into
