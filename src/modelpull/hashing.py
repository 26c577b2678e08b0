"""Hashing bytes that arrive in parts, out of order, from many threads.

:class:`PartHasher` computes the values of one download part as its bytes stream through
a worker: CRCs over the whole part, and any kind per upload part inside it (the
*segments* a multipart upload's per-part checksums and ETag are made of).
:class:`CrcAccumulator` combines per-part CRCs into the whole object's, and
:class:`PrefixHasher` feeds digests, which cannot be combined, in file order.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpull.checksums import DIGEST_KINDS, CrcKind, DigestKind, crc_kind, get_kind
from modelpull.errors import UsageError

__all__ = ["CrcAccumulator", "PartHasher", "PartValues", "PrefixHasher", "ReadInto"]

# (offset, buffer) -> bytes read into the buffer's start; os.preadv(fd, [buf], offset)
# has this shape.
ReadInto = Callable[[int, memoryview], int]

_PREFIX_BUFFER = 4 << 20


class CrcAccumulator:
    """Per-part CRCs, added in any order from any thread, combined in offset order.

    ``add_part`` is cheap and thread-safe; ``finish`` sorts the parts, checks that they
    tile ``[0, size)`` exactly, and folds them with one ``combine`` per part and kind.
    Every part is kept until then: a few ints each, 10,000 parts is well under 1 MB.

    Example::

        acc = CrcAccumulator(["crc64ecma"])
        # in each worker, as its part completes:
        acc.add_part(offset, length, {"crc64ecma": crc})
        # once all are in:
        acc.finish(size)  # {"crc64ecma": value}
    """

    def __init__(self, kinds: Iterable[str]) -> None:
        self._kinds = tuple(crc_kind(name) for name in dict.fromkeys(kinds))
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

    Design: workers write parts into the temp file at their offsets and report each
    piece they write with :meth:`feed` (or a whole range with :meth:`mark_done`);
    whenever the written prefix of the file grows, one thread hashes the new bytes in
    order. A piece that lands exactly where hashing stands is hashed from the worker's
    buffer as it is reported (*inline*): the bytes of one part arrive in order, so the
    part at the front of the file is hashed as it streams, and so is every part of a
    file fetched in one part. Whatever landed ahead of that point is read back from the
    file (through the ``read_into`` it is given, e.g. ``os.preadv``) once the prefix
    reaches it. The alternative, an in-memory reorder buffer, must either hold every byte
    that arrives ahead of the hashing point — with many parallel parts and one slow part,
    up to nearly the whole file — or stall the workers that are ahead, which throttles the
    download to the slowest connection. Reading back costs one copy from the page cache
    (the bytes were just written, so they are still there; about 5% of MD5's cost);
    memory stays at one buffer; no worker ever waits; hashlib and ``os.preadv`` release
    the GIL on large buffers, so the hashing thread runs alongside the workers.

    Which path a byte takes depends on timing, what it hashes to does not: only the one
    thread holding the hashing lock moves the hashing point, and it takes a piece from a
    buffer only when the piece starts exactly there; every other byte is read back.
    :meth:`feed` never reads back (a worker calls it as it writes, with its request in
    flight): :meth:`hash_ready` does, called once a part is complete.
    Each byte must be reported once: a range reported twice (bytes written again, whose
    first value may already be hashed) raises :class:`ValueError`, and the caller starts
    over with a new hasher.

    :meth:`hash_ready` hashes whatever is ready; if another thread is already hashing,
    it returns at once (that thread picks up the new bytes), so any worker may call it,
    or a dedicated thread may. :meth:`finish` hashes the rest.
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
        # Written ranges past _ready, sorted, adjacent ones merged: about one per part
        # in flight, however small the pieces reported.
        self._pending: list[tuple[int, int]] = []
        self._hashed = 0  # [0, _hashed) is hashed; only the _hashing holder moves it
        self._buffer: memoryview | None = None  # only the _hashing holder uses it
        self.read_back = 0  # bytes hashed by reading them back (the rest came inline)

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
        """Record that bytes ``[offset, offset + length)`` are in the file; thread-safe.

        :class:`ValueError` when the range is outside the file or overlaps one recorded.
        """
        end = offset + length
        if offset < 0 or length < 1 or end > self._size:
            raise ValueError(f"bad part [{offset}, {end}) of a {self._size}-byte file")
        with self._lock:
            pending = self._pending
            i = bisect.bisect_left(pending, (offset, end))
            if (
                offset < self._ready
                or (i > 0 and pending[i - 1][1] > offset)
                or (i < len(pending) and pending[i][0] < end)
            ):
                raise ValueError(f"part [{offset}, {end}) overlaps one already done")
            if i < len(pending) and pending[i][0] == end:
                end = pending.pop(i)[1]
            if i > 0 and pending[i - 1][1] == offset:
                i -= 1
                offset = pending.pop(i)[0]
            if offset == self._ready:
                self._ready = end
            else:
                pending.insert(i, (offset, end))

    def mark_all_done(self) -> None:
        """Every byte of the file is written: the parts reported, and any others (resumed
        from an earlier run, or written before the hasher was started over)."""
        with self._lock:
            self._pending.clear()
            self._ready = self._size

    def feed(self, offset: int, view: memoryview) -> bool:
        """``view`` was just written at ``offset``: record it (as :meth:`mark_done`), and
        hash it from memory if hashing stands exactly at ``offset`` and no other thread
        is hashing; ``True`` when it was hashed.

        Never reads the file and never waits: a piece not hashed here is read back by a
        later :meth:`hash_ready`. ``view`` is used only during the call.
        """
        self.mark_done(offset, len(view))
        if self._hashed != offset or not self._hashing.acquire(blocking=False):
            return False
        try:
            if self._hashed != offset:  # another thread moved it meanwhile
                return False
            for hasher in self._hashers:
                hasher.update(view)
            self._hashed += len(view)
            return True
        finally:
            self._hashing.release()

    def hash_ready(self, read_into: ReadInto, *, wait: bool = False) -> int:
        """Hash the written prefix not yet hashed, reading it back through ``read_into``;
        returns the bytes hashed by this call.

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
                    self.read_back += got
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


@dataclass(frozen=True, slots=True)
class PartValues:
    """What one download part's bytes hashed to.

    ``crcs``: each CRC kind over the whole part. ``segments``: for each upload part
    wholly inside it, by upload part index, the value of every segment kind (an ``int``
    for a CRC, ``bytes`` for a digest). ``pieces``: for an upload part the part holds
    only a piece of, its length and CRCs, to be combined with the other pieces; digests
    of such an upload part are computed from disk once all its pieces are in.
    """

    crcs: Mapping[str, int]
    segments: Mapping[int, Mapping[str, int | bytes]] = field(default_factory=dict)
    pieces: Mapping[int, tuple[int, Mapping[str, int]]] = field(default_factory=dict)


# (upload part index, length of the piece in this download part, whole upload part?)
Piece = tuple[int, int, bool]


class PartHasher:
    """The values of one part, updated chunk by chunk as its bytes pass through a worker.

    ``crc_kinds`` run over the whole part; ``segment_kinds`` restart at every upload
    part boundary inside it (``pieces`` lay the upload parts over the download part, in
    order). Digests release the GIL on large chunks, so workers hash their parts in
    parallel and nothing is read twice.
    """

    __slots__ = ("_crc_kinds", "_crcs", "_index", "_left", "_pieces", "_seg_kinds", "_state")

    def __init__(
        self,
        crc_kinds: Sequence[CrcKind],
        segment_kinds: Sequence[CrcKind | DigestKind] = (),
        pieces: Sequence[Piece] = (),
    ) -> None:
        self._crc_kinds = tuple(crc_kinds)
        self._crcs = [0] * len(self._crc_kinds)
        self._seg_kinds = tuple(segment_kinds)
        self._pieces = list(pieces) if self._seg_kinds else []
        self._state: list[list[Any]] = []
        self._index = 0
        self._left = self._pieces[0][1] if self._pieces else 0
        for _, _, whole in self._pieces:
            kinds = self._seg_kinds if whole else self._crcs_only()
            self._state.append([k.new() if isinstance(k, DigestKind) else 0 for k in kinds])

    def _crcs_only(self) -> tuple[CrcKind, ...]:
        return tuple(k for k in self._seg_kinds if isinstance(k, CrcKind))

    def update(self, data: memoryview) -> None:
        for i, kind in enumerate(self._crc_kinds):
            self._crcs[i] = kind.update(self._crcs[i], data)
        while len(data) and self._index < len(self._pieces):
            piece, data = data[: self._left], data[self._left :]
            whole = self._pieces[self._index][2]
            state = self._state[self._index]
            kinds: Sequence[CrcKind | DigestKind] = self._seg_kinds if whole else self._crcs_only()
            for i, seg_kind in enumerate(kinds):
                if isinstance(seg_kind, DigestKind):
                    state[i].update(piece)
                else:
                    state[i] = seg_kind.update(state[i], piece)
            self._left -= len(piece)
            if self._left == 0:
                self._index += 1
                self._left = self._pieces[self._index][1] if self._index < len(self._pieces) else 0

    def values(self) -> PartValues:
        """The part's values (call once every byte of the part has passed)."""
        crcs = {kind.name: value for kind, value in zip(self._crc_kinds, self._crcs, strict=True)}
        segments: dict[int, dict[str, int | bytes]] = {}
        pieces: dict[int, tuple[int, dict[str, int]]] = {}
        for (index, length, whole), state in zip(self._pieces, self._state, strict=True):
            if whole:
                segments[index] = {
                    k.name: s.digest() if isinstance(k, DigestKind) else s
                    for k, s in zip(self._seg_kinds, state, strict=True)
                }
            else:
                kinds = self._crcs_only()
                pieces[index] = (length, {k.name: s for k, s in zip(kinds, state, strict=True)})
        return PartValues(crcs=crcs, segments=segments, pieces=pieces)
