"""A file's life on disk, in one object: from its lock to its final name.

:class:`PartFile` is the only code that creates, writes, verifies or renames a file of the
pull; the engine schedules parts and calls it, and so does the cluster exchange, which
writes parts it receives from peers instead of the store. The steps, in order:

1. :meth:`~PartFile.acquire` the file's lock (``DEST/.modelpull/locks/``), so one
   process at a time writes it; :meth:`~PartFile.is_complete` then tells whether another
   process finished it meanwhile (its record matches the store and the disk).
2. :meth:`~PartFile.open` the temp file (``DEST/.modelpull/incomplete/``): resumed when
   its journal describes exactly this version of the object (same ETag, size and part
   size), otherwise created empty and preallocated, so a full disk fails now. A resumed
   part is re-read and its CRC-32C checked against the journal's before it counts; a
   part that fails is fetched again (``parts_repaired``).
3. :meth:`~PartFile.write` bytes at their offsets from any worker (each piece also
   extends the in-order digests, hashed from the worker's buffer when it lands where
   hashing stands); a finished part is :meth:`~PartFile.written` and then
   :meth:`~PartFile.record`-ed in the journal with the CRC its bytes had.
4. Once every part is in, :meth:`~PartFile.verify` against the store's checksums (on a
   mismatch, :meth:`~PartFile.damaged` finds parts to :meth:`~PartFile.forget` and fetch
   again, where the store or the journal can tell which), then
   :meth:`~PartFile.place`: fsync if asked, rename into place, write the record, drop the
   journal. Or :meth:`~PartFile.leave_partial` (some parts only: temp file and journal
   stay for whoever completes it), or :meth:`~PartFile.restart` (the object changed or
   its bytes failed verification: start over, empty, for the new version).
5. :meth:`~PartFile.close` the descriptor and :meth:`~PartFile.release` the lock, always.

A final name never holds a partial or unverified file: the rename in step 4 is the only
way bytes reach it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from collections.abc import Mapping, Sequence

from filelock import FileLock, Timeout

from modelpull import safefs
from modelpull.config import PullConfig
from modelpull.errors import IntegrityError, ModelPullError
from modelpull.files import bytes_in, dest_error, place, preallocate
from modelpull.hashing import PartHasher, PartValues
from modelpull.integrity import JOURNAL_KIND, Verifier, whole_crc
from modelpull.journal import Journal
from modelpull.objects import Layout, ObjectInfo, RemoteFile
from modelpull.state import Record, StateDir

__all__ = ["PartFile"]

log = logging.getLogger("modelpull")


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
        self.verifier = Verifier(self.path, self.obj, "off")
        self.parts = self.verifier.split(config.part_size)
        self.fd: int | None = None
        self.journal: Journal | None = None
        # What each part's bytes hashed to, as written or as re-read on resume.
        self.values: dict[int, PartValues] = {}
        self.resumed_bytes = 0
        self.repaired: set[int] = set()  # parts a resumed journal listed that failed
        self._journal_on_disk = False  # a journal was loaded or saved: remove it at the end
        # Opened without a HEAD: the checksums come with the GET's answer (learn()).
        self.headless = False
        self.started = 0.0
        self._lock: FileLock | None = None

    # -- 1. the lock ------------------------------------------------------------------

    def acquire(self, timeout: float = -1) -> bool:
        """Take the file's lock; ``False`` when ``timeout`` (seconds) passed first."""
        lock = FileLock(self._state.checked_lock_path(self.path))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            return False
        except OSError as exc:  # ELOOP: a link planted after the check
            raise dest_error(exc, self._lock_path, key=self.obj.key) from exc
        self._lock = lock
        return True

    @property
    def locked(self) -> bool:
        """This pull holds the file's lock."""
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def is_complete(self) -> bool:
        """True when the final file is the recorded, unchanged download of :attr:`obj`."""
        return self._state.is_complete(self.path, self.final, self.obj)

    def set_object(self, obj: ObjectInfo) -> None:
        """What a fresh HEAD said of the object: its checksums, maybe a new version."""
        self.obj = obj
        self.verifier = Verifier(self.path, obj, "off")
        self.parts = self.verifier.split(self._config.part_size)

    # -- 2. the temp file -------------------------------------------------------------

    def open(self, layout: Layout | None = None, *, create: bool = True) -> bool:
        """Open the temp file, resuming the parts its journal lists for this object.

        ``layout`` is the object's upload layout, for composite checks. Without a usable
        journal the file is started empty and preallocated, unless ``create`` is false:
        then nothing is opened and the result is ``False``.
        """
        self.verifier = Verifier(self.path, self.obj, self._config.verify, layout)
        self.parts = self.verifier.split(self._config.part_size)
        self.started = time.monotonic()
        journal = self._saved_journal()
        self._journal_on_disk = journal is not None
        if journal is None and not create:
            return False
        try:
            flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if journal is None else 0)
            self.fd = safefs.open_file(self._state.dest, self.temp, flags, key=self.obj.key)
            if journal is None:
                preallocate(self.fd, self.obj.size)
            self.journal = journal if journal is not None else self._new_journal()
            self._recheck()
        except OSError as exc:
            raise dest_error(exc, self.temp) from exc
        self.resumed_bytes = bytes_in(self.parts, self.done)
        return True

    def _new_journal(self) -> Journal:
        journal = Journal(
            self._journal_path,
            self.obj.etag,
            self.obj.size,
            self._config.part_size,
            dest=self._state.dest,
        )
        journal.remove()  # one left by another version of the object
        return journal

    def _recheck(self) -> None:
        """Trust no resumed part unchecked: re-read each and compare its CRC-32C."""
        assert self.journal is not None and self.fd is not None
        if not self.journal.done:
            return
        buffer = memoryview(bytearray(min(self._config.part_size, 4 << 20)))
        for index, recorded in sorted(self.journal.done.items()):
            values = self.verifier.values_from_disk(self.fd, index, buffer)
            if values.crcs[JOURNAL_KIND] == recorded:
                self.values[index] = values
            else:
                del self.journal.done[index]
                self.repaired.add(index)
        if self.repaired:
            self.journal.save()

    @property
    def done(self) -> frozenset[int]:
        """Indices of the parts recorded as written."""
        return frozenset(self.journal.done) if self.journal is not None else frozenset()

    def resumable(self) -> frozenset[int]:
        """Parts a journal holds for this object, read without locking or opening anything
        (they are re-checked when the file is opened)."""
        journal = self._saved_journal()
        return frozenset(journal.done) if journal is not None else frozenset()

    def _saved_journal(self) -> Journal | None:
        """The resume journal on disk if it describes exactly this download, else ``None``."""
        return Journal.load(
            self._journal_path,
            self.obj,
            self._config.part_size,
            len(self.parts),
            self.temp,
            dest=self._state.dest,
        )

    def all_done(self) -> bool:
        return self.journal is not None and len(self.journal.done) >= len(self.parts)

    # -- 3. writing parts -------------------------------------------------------------

    def hasher(self, index: int) -> PartHasher:
        """A fresh hasher for part ``index``: the journal's CRC and what verification needs."""
        return self.verifier.hasher(index)

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
        self.verifier.feed(offset, view)

    def truncate(self, size: int) -> None:
        """Cut the temp file to ``size`` bytes: a whole-object stream that broke off
        starts over (a store that ignores ``Range`` cannot resume it)."""
        assert self.fd is not None
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise dest_error(exc, self.temp) from exc
        self.verifier.reset_digests()

    def written(self, index: int) -> None:
        """Part ``index`` is all on disk: hash what the in-order digests can reach now."""
        assert self.fd is not None
        self.verifier.part_done(index, self.fd)

    def learn(
        self, checksums: Mapping[str, str], checksum_type: str | None, etag_md5: bool = True
    ) -> bool:
        """The checksums a GET of the whole object answered with (and whether its ETag is
        an MD5), for a file opened without a HEAD: from now on they are checked. ``True``
        when that changed the checks (the part's values must then be computed again,
        :meth:`reread`)."""
        if not self.headless or (not checksums and etag_md5):
            return False
        self.headless = False
        self.obj = dataclasses.replace(
            self.obj, checksums=dict(checksums), checksum_type=checksum_type, etag_md5=etag_md5
        )
        self.verifier = Verifier(self.path, self.obj, self._config.verify)
        self.verifier.split(self._config.part_size)
        return True

    def reread(self, index: int) -> PartValues:
        """Part ``index``'s values, from its bytes on disk."""
        assert self.fd is not None
        buffer = memoryview(bytearray(min(self._config.io_chunk_size, 4 << 20)))
        return self.verifier.values_from_disk(self.fd, index, buffer)

    def record(self, index: int, values: PartValues, *, save: bool = True) -> None:
        """Note part ``index`` as written, with its values; ``save`` the journal to disk."""
        assert self.journal is not None
        self.values[index] = values
        self.journal.done[index] = values.crcs[JOURNAL_KIND]
        if save:
            if self._config.fsync and self.fd is not None:
                try:
                    os.fdatasync(self.fd)
                except OSError as exc:
                    raise dest_error(exc, self.temp) from exc
            self.journal.save()
            self._journal_on_disk = True

    # -- 4. ending --------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Check the complete temp file; the kinds that matched, or :class:`IntegrityError`."""
        assert self.fd is not None
        return self.verifier.verify(self.fd, self.values)

    def damaged(self, layout: Layout | None) -> set[int]:
        """Parts whose bytes on disk are wrong, where that can be told: against the
        store's per-part values in ``layout``, and against the CRCs they were written
        with (which finds damage on disk, not in transit)."""
        assert self.fd is not None
        bad = self.verifier.damaged(self.fd, layout) if layout is not None else set()
        buffer = memoryview(bytearray(min(self._config.part_size, 4 << 20)))
        for index, values in self.values.items():
            again = self.verifier.values_from_disk(self.fd, index, buffer)
            if again.crcs[JOURNAL_KIND] != values.crcs[JOURNAL_KIND]:
                bad.add(index)
        return bad

    def forget(self, indices: set[int]) -> int:
        """Drop parts found damaged, to be fetched again; the bytes given up."""
        assert self.journal is not None
        for index in indices:
            self.journal.done.pop(index, None)
            self.values.pop(index, None)
        self.verifier.reset_digests()
        self.journal.save()
        return bytes_in(self.parts, indices)

    def place(self, verified: Sequence[str]) -> None:
        """Rename the temp file, which passed ``verified``, into place and record it;
        drop the journal."""
        fd = self.fd
        assert fd is not None and self.journal is not None
        try:
            if self._config.fsync:
                os.fsync(fd)
            os.close(fd)
            self.fd = None
            self._state.forget(self.path)
            placed = place(self.temp, self.final, self._state.dest, key=self.obj.key)
            self._record(verified, whole_crc(self.parts, self.values), placed.st_mtime_ns)
        except OSError as exc:
            raise dest_error(exc, self.final) from exc
        if self._journal_on_disk:
            self.journal.remove()

    def _record(self, verified: Sequence[str], crc32c: int, mtime_ns: int) -> None:
        obj = self.obj
        self._state.write_record(
            Record(
                path=self.path,
                key=obj.key,
                etag=obj.etag,
                size=obj.size,
                mtime_ns=mtime_ns,
                checksums=dict(obj.checksums),
                verified=list(verified),
                crc32c=crc32c,
            )
        )

    # -- a file already in DEST -------------------------------------------------------

    def intact(self) -> bool:
        """Re-read the recorded final file: ``True`` when its CRC-32C is still the one
        its record kept (``False`` too for a record too old to keep one)."""
        record = self._state.read_record(self.path)
        if record is None or record.crc32c is None:
            return False
        verifier = Verifier(self.path, self.obj, "off")
        verifier.split(self._config.part_size)
        try:
            fd = self._open_final()
        except ModelPullError:
            return False  # gone, or replaced by a link: fetched again, or refused there
        try:
            return verifier.check_file(fd)[1] == record.crc32c
        finally:
            os.close(fd)

    def _open_final(self) -> int:
        """The final file, for reading, reached without following a link."""
        try:
            return safefs.open_file(self._state.dest, self.final, os.O_RDONLY, key=self.obj.key)
        except OSError as exc:
            raise dest_error(exc, self.final) from exc

    def adoptable(self) -> bool:
        """A regular file of the object's size stands at the final name."""
        try:
            st = safefs.lstat(self._state.dest, self.final)
        except OSError:
            return False
        return st is not None and stat.S_ISREG(st.st_mode) and st.st_size == self.obj.size

    def check_final(
        self, layout: Layout | None, *, need_checksum: bool = False
    ) -> tuple[list[str], str | None] | None:
        """Check the file at the final name against the store's checksums and, when it
        passes, record it as complete: (the checks passed, what could not be checked).

        :class:`IntegrityError` when it fails; ``None`` with ``need_checksum`` when
        nothing but its size could be checked (nothing is recorded then).
        """
        verifier = Verifier(self.path, self.obj, self._config.verify, layout)
        verifier.split(self._config.part_size)
        fd = self._open_final()
        try:
            verified, crc32c = verifier.check_file(fd)
            mtime_ns = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
        if need_checksum and verified == ["size"]:
            return None
        try:
            self._record(verified, crc32c, mtime_ns)
        except OSError as exc:
            raise dest_error(exc, self.final) from exc
        return verified, verifier.unverifiable

    def adopt(self, layout: Layout | None) -> list[str] | None:
        """Keep a file another tool put at the final name, if the store's checksums say
        it is the object: the checks it passed, or ``None`` (then it is fetched)."""
        try:
            checked = self.check_final(layout, need_checksum=True)
        except IntegrityError as exc:
            log.info("%s is in DEST but not the store's: fetching it (%s)", self.path, exc)
            return None
        return None if checked is None else checked[0]

    def leave_partial(self) -> None:
        """Keep the temp file and its journal for whoever completes the file."""
        self.close()
        assert self.journal is not None
        self.journal.save()

    def discard(self) -> None:
        """The bytes are bad beyond refetching: nothing here is worth resuming."""
        if self.journal is not None:
            self.journal.remove()

    def restart(self, obj: ObjectInfo, layout: Layout | None = None) -> int:
        """Start over, empty, for ``obj`` (the latest version); the bytes given up."""
        undone = bytes_in(self.parts, self.done)
        self.obj = obj
        self.verifier = Verifier(self.path, obj, self._config.verify, layout)
        self.parts = self.verifier.split(self._config.part_size)
        self.values.clear()
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
