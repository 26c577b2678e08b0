"""Checksums stores publish, and how to compute them from parts fetched in parallel.

Pure logic: this module does no I/O of its own (:class:`PrefixHasher` reads through a
callable it is given).

Kinds, by the name :class:`~modelpull.backends.base.ObjectInfo` uses:

============  ===================================  ========================  ==========
kind          published as                         format                    combinable
============  ===================================  ========================  ==========
crc64ecma     TOS ``x-tos-hash-crc64ecma``         unsigned decimal          yes
crc64nvme     S3 ``x-amz-checksum-crc64nvme``      base64, big-endian        yes
crc32c        S3 ``x-amz-checksum-crc32c``         base64, big-endian        yes
crc32         S3 ``x-amz-checksum-crc32``          base64, big-endian        yes
sha256        S3 ``x-amz-checksum-sha256``         base64                    no
sha1          S3 ``x-amz-checksum-sha1``           base64                    no
md5           a single-part ETag                   hex                       no
============  ===================================  ========================  ==========

An ETag is an MD5 only where the store says so: on S3 not with SSE-KMS or SSE-C, and
never for a multipart upload (``<hex>-<N>``, see composite values below).

``crc64ecma`` is CRC-64/XZ (the ECMA-182 polynomial, reflected, init and xorout all
ones), not the unreflected CRC-64/ECMA-182 its name suggests.

**Full-object CRCs** (the main path). Each worker computes the CRC of its part with
:meth:`CrcKind.update` as the bytes stream past; parts finish out of order;
:class:`CrcAccumulator` combines them in offset order into the whole-object value, at
the cost of one :meth:`CrcKind.combine` per part and no second pass over the data. TOS
publishes a whole-object CRC-64 even for multipart uploads; S3 does for ``crc64nvme``
always and for the others when the upload asked for ``FULL_OBJECT``.

**Composite values** (S3 multipart uploads with ``ChecksumType=COMPOSITE``) look like
``<base64>-<N>``: the checksum of the concatenated big-endian checksums of the N upload
parts. To verify one, the engine needs the upload's part sizes — from
``GetObjectAttributes(ObjectAttributes=["ObjectParts"])`` (paged, up to 1,000 parts a
page, which also gives each part's own checksum) or from ``HEAD ?partNumber=n`` for
n = 1..N (each ``Content-Length``; ``x-amz-mp-parts-count`` gives N) — and must split
its ranges at those boundaries so that every upload part is a whole number of its
parts; :meth:`CrcAccumulator.finish_parts` then gives each upload part's CRC and
:func:`verify_composite` compares. A multipart ETag (``<hex md5>-<N>``) has the same
shape with MD5, but needs each upload part hashed on its own. moto 5.2 publishes
composite values without ``-N`` and without a checksum type, and its CRC32C composite
is computed with CRC32 (a moto bug): functional tests should not rely on those.

**Digests** (sha256, sha1, md5) cannot be combined, so the file must be hashed in
order; see :class:`PrefixHasher` for how that is done without holding parts in memory.

Native code, measured on one core of an AMD EPYC: CRC-32C and CRC-64/NVME use
``awscrt`` (22-26 GB/s; it releases the GIL for buffers over 5 KiB); CRC-64/XZ and
CRC-32 use ``anycrc`` (about 14 GB/s; it holds the GIL for the whole call, about 70 ms
per GB, so callers should pass chunks of a few MiB at most). For CRC-32, ``zlib.crc32``
(4 GB/s, releases the GIL) and awscrt's (2.6-3 GB/s) cost three times the CPU. All
read ``bytes``, ``bytearray`` and ``memoryview`` in place.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import anycrc
from awscrt import checksums as crt

from modelpull.errors import IntegrityError, UsageError

__all__ = [
    "CRC_KINDS",
    "DIGEST_KINDS",
    "KINDS",
    "PREFERENCE",
    "BytesLike",
    "CrcAccumulator",
    "CrcKind",
    "DigestKind",
    "Hasher",
    "PrefixHasher",
    "ReadInto",
    "composite",
    "get_kind",
    "split_composite",
    "verify",
    "verify_composite",
]

BytesLike = bytes | bytearray | memoryview

# (offset, buffer) -> bytes read into the buffer's start; os.preadv(fd, [buf], offset)
# has this shape.
ReadInto = Callable[[int, memoryview], int]

#: Kinds from cheapest to dearest to verify: GIL-free CRCs, GIL-holding CRCs, digests.
PREFERENCE: tuple[str, ...] = (
    "crc64nvme",
    "crc32c",
    "crc64ecma",
    "crc32",
    "sha256",
    "sha1",
    "md5",
)

_PREFIX_BUFFER = 4 << 20


def _bytes_view(data: BytesLike) -> BytesLike:
    # anycrc only takes unsigned-byte buffers; a memoryview of another format (an
    # array of floats, say) is recast, which copies nothing.
    if isinstance(data, memoryview) and data.format != "B":
        return data.cast("B")
    return data


@dataclass(frozen=True, slots=True)
class CrcKind:
    """A CRC a store publishes: compute, combine, and read or write its published text.

    ``update`` and ``combine`` work on the CRC *value* (the register after the final
    XOR), so the CRC of nothing is 0 and ``update(update(0, a), b) == update(0, a + b)``.
    """

    name: str
    width: int
    encoding: Literal["decimal", "base64"]
    implementation: str
    releases_gil: bool
    _update: Callable[[BytesLike, int], int]
    _combine: Callable[[int, int, int], int]

    def update(self, crc: int, data: BytesLike) -> int:
        """The CRC of the bytes behind ``crc`` followed by ``data``."""
        return self._update(_bytes_view(data), crc)

    def compute(self, data: BytesLike) -> int:
        """The CRC of ``data`` alone."""
        return self._update(_bytes_view(data), 0)

    def combine(self, crc_a: int, crc_b: int, len_b: int) -> int:
        """The CRC of A followed by B, from the CRCs of A and B and B's length in bytes."""
        if len_b < 0:
            raise ValueError(f"negative length {len_b}")
        return self._combine(crc_a, crc_b, len_b)

    def encode(self, value: int) -> str:
        """``value`` as the store publishes it."""
        if not 0 <= value < 1 << self.width:
            raise ValueError(f"{value} is not a {self.width}-bit {self.name}")
        if self.encoding == "decimal":
            return str(value)
        return base64.b64encode(value.to_bytes(self.width // 8, "big")).decode("ascii")

    def decode(self, text: str) -> int:
        """The value of a published checksum; :class:`ValueError` if it is malformed."""
        text = text.strip()
        if self.encoding == "decimal":
            if not text.isascii() or not text.isdigit():
                raise ValueError(f"{self.name} should be decimal digits, not {text!r}")
            value = int(text)
            if value >= 1 << self.width:
                raise ValueError(f"{self.name} {text} does not fit in {self.width} bits")
            return value
        raw = _b64decode(self.name, text)
        if len(raw) != self.width // 8:
            raise ValueError(f"{self.name} should be {self.width // 8} bytes, not {len(raw)}")
        return int.from_bytes(raw, "big")


class Hasher(Protocol):
    """The part of a :mod:`hashlib` object used here."""

    def update(self, data: BytesLike, /) -> None: ...

    def digest(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DigestKind:
    """A cryptographic digest a store publishes; it cannot be combined from parts."""

    name: str
    hashlib_name: str
    size: int
    encoding: Literal["hex", "base64"]

    def new(self) -> Hasher:
        """A fresh hashlib object (allowed on FIPS builds: this is integrity, not security)."""
        return hashlib.new(self.hashlib_name, usedforsecurity=False)

    def compute(self, data: BytesLike) -> bytes:
        """The digest of ``data``."""
        hasher = self.new()
        hasher.update(data)
        return hasher.digest()

    def encode(self, digest: bytes) -> str:
        """``digest`` as the store publishes it."""
        if len(digest) != self.size:
            raise ValueError(f"a {self.name} digest is {self.size} bytes, not {len(digest)}")
        if self.encoding == "hex":
            return digest.hex()
        return base64.b64encode(digest).decode("ascii")

    def decode(self, text: str) -> bytes:
        """The digest in a published value; :class:`ValueError` if it is malformed."""
        text = text.strip().strip('"')  # an ETag arrives quoted
        if self.encoding == "hex":
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raise ValueError(f"{self.name} should be hex, not {text!r}") from None
        else:
            raw = _b64decode(self.name, text)
        if len(raw) != self.size:
            raise ValueError(f"{self.name} should be {self.size} bytes, not {len(raw)}")
        return raw


def _b64decode(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{name} should be base64, not {text!r}") from None


_XZ = anycrc.Model("CRC64-XZ")
_CRC32 = anycrc.Model("CRC32-ISO-HDLC")

CRC_KINDS: Mapping[str, CrcKind] = {
    kind.name: kind
    for kind in (
        CrcKind(
            name="crc64ecma",
            width=64,
            encoding="decimal",
            implementation="anycrc",
            releases_gil=False,
            _update=_XZ.calc,
            _combine=_XZ.combine,
        ),
        CrcKind(
            name="crc64nvme",
            width=64,
            encoding="base64",
            implementation="awscrt",
            releases_gil=True,
            _update=crt.crc64nvme,
            _combine=crt.combine_crc64nvme,
        ),
        CrcKind(
            name="crc32c",
            width=32,
            encoding="base64",
            implementation="awscrt",
            releases_gil=True,
            _update=crt.crc32c,
            _combine=crt.combine_crc32c,
        ),
        CrcKind(
            name="crc32",
            width=32,
            encoding="base64",
            implementation="anycrc",
            releases_gil=False,
            _update=_CRC32.calc,
            _combine=_CRC32.combine,
        ),
    )
}
DIGEST_KINDS: Mapping[str, DigestKind] = {
    kind.name: kind
    for kind in (
        DigestKind("sha256", "sha256", 32, "base64"),
        DigestKind("sha1", "sha1", 20, "base64"),
        DigestKind("md5", "md5", 16, "hex"),
    )
}
KINDS: Mapping[str, CrcKind | DigestKind] = {**CRC_KINDS, **DIGEST_KINDS}


def get_kind(name: str) -> CrcKind | DigestKind:
    """The kind called ``name``; :class:`~modelpull.errors.UsageError` if there is none."""
    try:
        return KINDS[name]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise UsageError(f"unknown checksum kind {name!r}; known: {known}") from None


def _crc_kind(name: str) -> CrcKind:
    kind = get_kind(name)
    if not isinstance(kind, CrcKind):
        raise UsageError(f"{name} is not a CRC and cannot be combined from parts")
    return kind


# --- composite values ------------------------------------------------------------------


def split_composite(text: str) -> tuple[str, int | None]:
    """``("<value>", N)`` for ``"<value>-N"``, or ``(text, None)`` for a full-object value."""
    text = text.strip().strip('"')
    value, sep, count = text.rpartition("-")
    if not sep:
        return text, None
    if not value or not count.isascii() or not count.isdigit() or int(count) < 1:
        raise ValueError(f"malformed composite checksum {text!r}")
    return value, int(count)


def composite(name: str, part_values: Sequence[int | bytes]) -> str:
    """The ``<value>-N`` S3 publishes for a multipart upload with these part checksums.

    It is the checksum of the parts' checksums laid end to end as big-endian bytes;
    ``part_values`` are ``int`` for a CRC kind, ``bytes`` for a digest kind.
    """
    if not part_values:
        raise ValueError("a composite checksum needs at least one part")
    kind = get_kind(name)
    if isinstance(kind, CrcKind):
        raw = b"".join(_int(kind, v).to_bytes(kind.width // 8, "big") for v in part_values)
        return f"{kind.encode(kind.compute(raw))}-{len(part_values)}"
    raw = b"".join(_digest(kind, v) for v in part_values)
    return f"{kind.encode(kind.compute(raw))}-{len(part_values)}"


def _int(kind: CrcKind, value: int | bytes) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{kind.name} values are int, not {type(value).__name__}")
    return value


def _digest(kind: DigestKind, value: int | bytes) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{kind.name} values are bytes, not {type(value).__name__}")
    return bytes(value)


# --- verification ----------------------------------------------------------------------


def verify(name: str, published: str, actual: int | bytes, *, path: str) -> None:
    """Raise :class:`~modelpull.errors.IntegrityError` unless ``actual`` is ``published``.

    ``actual`` is the whole object's value, ``int`` for a CRC and ``bytes`` for a
    digest. Values are compared decoded, so padding, case and quotes do not matter.
    A composite ``published`` value raises :class:`ValueError` (use
    :func:`verify_composite`), and so does a malformed one: check published values with
    ``decode`` when they arrive, and skip any a store garbled.
    """
    kind = get_kind(name)
    value, count = split_composite(published)
    if count is not None:
        raise ValueError(f"{name} {published!r} is composite: verify it with its parts")
    if isinstance(kind, CrcKind):
        matches = kind.decode(value) == _int(kind, actual)
        shown = kind.encode(_int(kind, actual))
    else:
        matches = kind.decode(value) == _digest(kind, actual)
        shown = kind.encode(_digest(kind, actual))
    if not matches:
        _mismatch(name, path, value, shown)


def verify_composite(
    name: str, published: str, part_values: Sequence[int | bytes], *, path: str
) -> None:
    """Like :func:`verify` for a composite value, from the upload parts' checksums.

    ``published`` may lack its ``-N``: S3 says ``COMPOSITE`` in ``x-amz-checksum-type``
    and appends it, but moto 5.2 does neither, so the caller decides from the checksum
    type (or a multipart ETag) which of the two functions applies.
    """
    kind = get_kind(name)
    value, count = split_composite(published)
    if count is not None and count != len(part_values):
        raise ValueError(f"{name} {published!r} has {count} parts, not {len(part_values)}")
    actual = composite(name, part_values)
    if kind.decode(value) != kind.decode(split_composite(actual)[0]):
        _mismatch(name, path, published, actual)


def _mismatch(name: str, path: str, expected: str, actual: str) -> None:
    raise IntegrityError(
        f"{path}: {name} of the downloaded bytes is {actual}, the store published {expected}",
        path=path,
        algorithm=name,
        expected=expected,
        actual=actual,
    )


# --- parallel parts --------------------------------------------------------------------


class CrcAccumulator:
    """Per-part CRCs, added in any order from any thread, combined in offset order.

    ``add_part`` is cheap and thread-safe; ``finish`` sorts the parts, checks that they
    tile ``[0, size)`` exactly, and folds them with one ``combine`` per part and kind.
    Every part is kept until then (a few ints each: 10,000 parts is well under 1 MB), so
    ``finish_parts`` can regroup them along an upload's part boundaries.

    Example::

        acc = CrcAccumulator(["crc64ecma"])
        # in each worker, as its part completes:
        acc.add_part(offset, length, {"crc64ecma": crc})
        # once all are in:
        acc.finish(size)  # {"crc64ecma": value}
    """

    def __init__(self, kinds: Iterable[str]) -> None:
        self._kinds = tuple(_crc_kind(name) for name in dict.fromkeys(kinds))
        self._parts: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._lock = threading.Lock()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The CRC kinds accumulated, in the order given."""
        return tuple(kind.name for kind in self._kinds)

    def add_part(self, offset: int, length: int, crcs: Mapping[str, int]) -> None:
        """Record the CRCs of bytes ``[offset, offset + length)``; one call per part."""
        if offset < 0 or length < 1:
            raise ValueError(f"bad part: offset {offset}, length {length}")
        try:
            values = tuple(crcs[kind.name] for kind in self._kinds)
        except KeyError as exc:
            raise ValueError(f"part at {offset} lacks its {exc.args[0]} value") from None
        with self._lock:
            if offset in self._parts:
                raise ValueError(f"a part at offset {offset} was added twice")
            self._parts[offset] = (length, values)

    def finish(self, size: int) -> dict[str, int]:
        """The whole object's CRCs; :class:`ValueError` unless the parts tile ``[0, size)``."""
        totals = [0] * len(self._kinds)  # the CRC of no bytes is 0
        for _, length, values in self._tiled(size):
            for i, kind in enumerate(self._kinds):
                totals[i] = kind.combine(totals[i], values[i], length)
        return {kind.name: total for kind, total in zip(self._kinds, totals, strict=True)}

    def finish_parts(self, part_sizes: Sequence[int]) -> dict[str, list[int]]:
        """The CRC of each upload part, for :func:`composite`.

        The upload's parts must each be a whole number of the parts added: a part that
        straddles an upload part boundary raises :class:`ValueError`.
        """
        if any(size < 1 for size in part_sizes):
            raise ValueError("upload part sizes must be positive")
        parts = self._tiled(sum(part_sizes))
        result: dict[str, list[int]] = {kind.name: [] for kind in self._kinds}
        index = 0
        start = 0
        for size in part_sizes:
            end = start + size
            totals = [0] * len(self._kinds)
            while index < len(parts) and parts[index][0] < end:
                offset, length, values = parts[index]
                if offset + length > end:
                    raise ValueError(
                        f"part [{offset}, {offset + length}) straddles the upload part "
                        f"boundary at {end}: split ranges at upload part boundaries"
                    )
                for i, kind in enumerate(self._kinds):
                    totals[i] = kind.combine(totals[i], values[i], length)
                index += 1
            for kind, total in zip(self._kinds, totals, strict=True):
                result[kind.name].append(total)
            start = end
        return result

    def _tiled(self, size: int) -> list[tuple[int, int, tuple[int, ...]]]:
        with self._lock:
            parts = sorted((off, length, values) for off, (length, values) in self._parts.items())
        expected = 0
        for offset, length, _ in parts:
            if offset != expected:
                what = "a gap" if offset > expected else "an overlap"
                raise ValueError(f"parts do not tile the object: {what} at offset {expected}")
            expected = offset + length
        if expected != size:
            raise ValueError(f"parts cover [0, {expected}), not the object's [0, {size})")
        return parts


class PrefixHasher:
    """Digests (sha256, sha1, md5) of a file whose parts are written out of order.

    Design: workers write parts into the temp file at their offsets and report them
    with :meth:`mark_done`; whenever the completed prefix of the file grows, one thread
    reads the new bytes back (through the ``read_into`` it is given, e.g. ``os.preadv``)
    and feeds them to hashlib in order. The alternative, an in-memory reorder buffer fed
    with chunks as they arrive, must either hold every byte that arrives ahead of the
    hashing point — with many parallel parts and one slow part, up to nearly the whole
    file — or stall the workers that are ahead, which throttles the download to the
    slowest connection. Reading back costs one copy from the page cache (the bytes were
    just written, so they are still there), several times cheaper than SHA-256 itself;
    memory stays at one buffer; no worker ever waits; and it verifies the bytes *on disk*,
    which also catches a mistake in writing them. hashlib and ``os.preadv`` release the
    GIL on large buffers, so the hashing thread runs alongside the workers.

    :meth:`hash_ready` hashes whatever is ready; if another thread is already hashing,
    it returns at once (that thread picks up the new bytes), so any worker may call it
    after ``mark_done``, or a dedicated thread may. :meth:`finish` hashes the rest.
    """

    def __init__(self, kinds: Iterable[str], size: int, *, buffer_size: int = _PREFIX_BUFFER):
        if size < 0 or buffer_size < 1:
            raise ValueError("size must be >= 0 and buffer_size >= 1")
        names = list(dict.fromkeys(kinds))
        self._kinds: tuple[DigestKind, ...] = tuple(
            kind for kind in map(get_kind, names) if isinstance(kind, DigestKind)
        )
        if len(self._kinds) != len(names):
            raise UsageError(f"PrefixHasher takes digest kinds ({', '.join(DIGEST_KINDS)})")
        self._hashers = [kind.new() for kind in self._kinds]
        self._size = size
        self._buffer_size = buffer_size
        self._lock = threading.Lock()  # guards _ready and _pending
        self._hashing = threading.Lock()  # held by the one thread reading and hashing
        self._ready = 0  # [0, _ready) is written
        self._pending: list[tuple[int, int]] = []  # written ranges past _ready, sorted
        self._hashed = 0  # [0, _hashed) is hashed; only the _hashing holder moves it
        self._buffer: memoryview | None = None  # only the _hashing holder uses it

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self._size

    @property
    def ready(self) -> int:
        """Length of the written prefix."""
        with self._lock:
            return self._ready

    @property
    def hashed(self) -> int:
        """Length of the hashed prefix."""
        return self._hashed

    def mark_done(self, offset: int, length: int) -> None:
        """Record that bytes ``[offset, offset + length)`` are in the file; thread-safe."""
        end = offset + length
        if offset < 0 or length < 1 or end > self._size:
            raise ValueError(f"bad part [{offset}, {end}) of a {self._size}-byte file")
        with self._lock:
            i = bisect.bisect_left(self._pending, (offset, end))
            if (
                offset < self._ready
                or (i > 0 and self._pending[i - 1][1] > offset)
                or (i < len(self._pending) and self._pending[i][0] < end)
            ):
                raise ValueError(f"part [{offset}, {end}) overlaps one already done")
            self._pending.insert(i, (offset, end))
            while self._pending and self._pending[0][0] == self._ready:
                self._ready = self._pending.pop(0)[1]

    def hash_ready(self, read_into: ReadInto, *, wait: bool = False) -> int:
        """Hash the written prefix not yet hashed; returns the bytes hashed by this call.

        Returns 0 at once if another thread is hashing, unless ``wait``.
        """
        total = 0
        while True:
            if not self._hashing.acquire(blocking=wait):
                return total
            try:
                if self._buffer is None:
                    self._buffer = memoryview(bytearray(min(self._buffer_size, self._size or 1)))
                buffer = self._buffer
                while True:
                    with self._lock:
                        todo = self._ready - self._hashed
                    if todo <= 0:
                        break
                    view = buffer[: min(todo, len(buffer))]
                    got = read_into(self._hashed, view)
                    if got <= 0:
                        raise OSError(f"short read at offset {self._hashed} while hashing")
                    for hasher in self._hashers:
                        hasher.update(view[:got])
                    self._hashed += got
                    total += got
            finally:
                self._hashing.release()
            # A part may have landed between the last look and the release, while its
            # worker found the lock taken; look once more so those bytes are not left.
            with self._lock:
                if self._ready <= self._hashed:
                    return total

    def finish(self, read_into: ReadInto) -> dict[str, bytes]:
        """Hash the rest and return each kind's digest; :class:`ValueError` on a gap."""
        with self._lock:
            if self._ready != self._size:
                raise ValueError(
                    f"parts do not cover the file: [0, {self._ready}) is done of {self._size}"
                )
        self.hash_ready(read_into, wait=True)
        with self._hashing:
            self._buffer = None
            return {k.name: h.digest() for k, h in zip(self._kinds, self._hashers, strict=True)}
