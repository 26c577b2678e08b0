"""A file's life on disk, in one object: from its lock to its final name.

:class:`PartFile` is the only code that creates, writes, verifies or renames a file of the
pull; the engine schedules parts and calls it, and so does the cluster exchange, which
writes parts it receives from peers instead of the store. The steps, in order:

1. :meth:`~PartFile.acquire` the file's lock (``DEST/.modelpull/locks/``), so one
   process at a time writes it; :meth:`~PartFile.is_complete` then tells whether another
   process finished it meanwhile (its record matches the store and the disk).
2. :meth:`~PartFile.open` the temp file (``DEST/.modelpull/incomplete/``): resumed when
   its journal describes exactly this version of the object (same ETag, size and part
   size), otherwise created empty and preallocated, so a full disk fails now.
3. :meth:`~PartFile.write` bytes at their offsets from any worker; a finished part is
   :meth:`~PartFile.written` (it extends the in-order digests) and then
   :meth:`~PartFile.record`-ed in the journal with its CRCs.
4. Once every part is in, :meth:`~PartFile.verify` against the store's checksums, then
   :meth:`~PartFile.place`: fsync if asked, rename into place, write the record, drop the
   journal. Or :meth:`~PartFile.leave_partial` (some parts only: temp file and journal
   stay for whoever completes it), or :meth:`~PartFile.restart` (the object changed or
   its bytes failed verification: start over, empty, for the new version).
5. :meth:`~PartFile.close` the descriptor and :meth:`~PartFile.release` the lock, always.

A final name never holds a partial or unverified file: the rename in step 4 is the only
way bytes reach it.
"""

from __future__ import annotations

import os
import time

from filelock import FileLock, Timeout

from modelpull.config import PullConfig
from modelpull.files import bytes_in, dest_error, place, preallocate, split_parts
from modelpull.integrity import PartHasher, Verifier
from modelpull.journal import Journal
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.state import Record, StateDir

__all__ = ["PartFile"]


class PartFile:
    """One file of a pull under DEST: lock, temp file, journal, verification, placement.

    Not thread-safe by itself: the caller serialises :meth:`open`, :meth:`record`,
    :meth:`place`, :meth:`leave_partial` and :meth:`restart` (the engine holds the file's
    mutex); :meth:`write`, :meth:`read` and :meth:`written` may run from many workers.
    """

    def __init__(self, state: StateDir, remote: RemoteFile, config: PullConfig) -> None:
        self.path = remote.path
        self.obj = remote.obj
        self.final = state.dest / remote.path
        self.temp = state.temp_path(remote.path)
        self._journal_path = state.journal_path(remote.path)
        self._lock_path = state.lock_path(remote.path)
        self._state = state
        self._config = config
        self.parts = split_parts(self.obj.size, config.part_size)
        self.fd: int | None = None
        self.journal: Journal | None = None
        self.verifier = Verifier.for_object(self.obj, "off", path=self.path)
        self.resumed_bytes = 0
        self.started = 0.0
        self._lock: FileLock | None = None

    # -- 1. the lock ------------------------------------------------------------------

    def acquire(self, timeout: float = -1) -> bool:
        """Take the file's lock; ``False`` when ``timeout`` (seconds) passed first."""
        lock = FileLock(self._lock_path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            return False
        self._lock = lock
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def is_complete(self) -> bool:
        """True when the final file is the recorded, unchanged download of :attr:`obj`."""
        return self._state.is_complete(self.path, self.final, self.obj)

    def set_object(self, obj: ObjectInfo) -> None:
        """What a fresh HEAD said of the object: its checksums, maybe a new version."""
        if obj.etag != self.obj.etag or obj.size != self.obj.size:
            self.parts = split_parts(obj.size, self._config.part_size)
        self.obj = obj

    # -- 2. the temp file -------------------------------------------------------------

    def open(self, *, create: bool = True) -> bool:
        """Open the temp file, resuming the parts its journal lists for this object.

        Without a usable journal the file is started empty and preallocated, unless
        ``create`` is false: then nothing is opened and the result is ``False``.
        """
        self.verifier = Verifier.for_object(self.obj, self._config.verify, path=self.path)
        self.started = time.monotonic()
        journal = Journal.load(self._journal_path, self.obj, self._config.part_size, self.temp)
        if journal is None and not create:
            return False
        try:
            flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if journal is None else 0)
            self.fd = os.open(self.temp, flags, 0o644)
            if journal is None:
                preallocate(self.fd, self.obj.size)
        except OSError as exc:
            raise dest_error(exc, self.temp) from exc
        if journal is None:
            journal = self._new_journal()
        self.journal = journal
        self.resumed_bytes = bytes_in(self.parts, journal.done)
        return True

    def _new_journal(self) -> Journal:
        journal = Journal(self._journal_path, self.obj.etag, self.obj.size, self._config.part_size)
        journal.remove()  # one left by another version of the object
        return journal

    @property
    def done(self) -> frozenset[int]:
        """Indices of the parts recorded as written."""
        return frozenset(self.journal.done) if self.journal is not None else frozenset()

    def resumable(self) -> frozenset[int]:
        """Parts a journal holds for this object, read without locking or opening anything."""
        journal = Journal.load(self._journal_path, self.obj, self._config.part_size, self.temp)
        if journal is None:
            return frozenset()
        return frozenset(i for i in journal.done if 0 <= i < len(self.parts))

    def all_done(self) -> bool:
        return self.journal is not None and len(self.journal.done) >= len(self.parts)

    # -- 3. writing parts -------------------------------------------------------------

    def hasher(self) -> PartHasher:
        """A fresh CRC state for one part, of the kinds verification and the journal use."""
        return self.verifier.part_hasher()

    def write(self, view: memoryview, offset: int) -> None:
        """Write all of ``view`` at ``offset``; :class:`DestinationError` on failure."""
        fd = self.fd
        assert fd is not None
        written, n = 0, len(view)
        while written < n:
            try:
                written += os.pwrite(fd, view[written:], offset + written)
            except OSError as exc:
                raise dest_error(exc, self.temp) from exc

    def written(self, index: int) -> None:
        """Part ``index`` is all on disk: extend the in-order digests over it."""
        start, end = self.parts[index]
        assert self.fd is not None
        self.verifier.part_done(index, start, end, self.fd)

    def record(self, index: int, crcs: dict[str, int], *, save: bool = True) -> None:
        """Note part ``index`` as written, with its CRCs; ``save`` the journal to disk."""
        assert self.journal is not None
        self.journal.done[index] = crcs
        if save:
            if self._config.fsync and self.fd is not None:
                os.fdatasync(self.fd)
            self.journal.save()

    # -- 4. ending --------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Check the complete temp file; the kinds that matched, or :class:`IntegrityError`."""
        assert self.fd is not None and self.journal is not None
        return self.verifier.verify(self.fd, self.parts, self.journal.done)

    def place(self) -> None:
        """Rename the verified temp file into place and record it; drop the journal."""
        fd = self.fd
        assert fd is not None and self.journal is not None
        try:
            if self._config.fsync:
                os.fsync(fd)
            os.close(fd)
            self.fd = None
            self._state.forget(self.path)
            place(self.temp, self.final, self._state.dest_real, key=self.obj.key)
            obj = self.obj
            self._state.write_record(
                Record(
                    path=self.path,
                    key=obj.key,
                    etag=obj.etag,
                    size=obj.size,
                    mtime_ns=self.final.stat().st_mtime_ns,
                    checksums=dict(obj.checksums),
                )
            )
        except OSError as exc:
            raise dest_error(exc, self.final) from exc
        self.journal.remove()

    def leave_partial(self) -> None:
        """Keep the temp file and its journal for whoever completes the file."""
        self.close()
        assert self.journal is not None
        self.journal.save()

    def discard(self) -> None:
        """The bytes are bad beyond refetching: nothing here is worth resuming."""
        if self.journal is not None:
            self.journal.remove()

    def restart(self, obj: ObjectInfo) -> int:
        """Start over, empty, for ``obj`` (the latest version); the bytes given up."""
        undone = bytes_in(self.parts, self.done)
        self.obj = obj
        self.parts = split_parts(obj.size, self._config.part_size)
        self.verifier = Verifier.for_object(obj, self._config.verify, path=self.path)
        self.resumed_bytes = 0
        if self.journal is not None:
            self.journal.remove()
        self.journal = self._new_journal()
        assert self.fd is not None
        try:
            os.ftruncate(self.fd, 0)
            preallocate(self.fd, obj.size)
        except OSError as exc:
            raise dest_error(exc, self.temp) from exc
        return undone

    def close(self) -> None:
        """Close the temp file's descriptor, if open."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
