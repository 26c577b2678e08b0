"""modelpull's hidden folder under DEST: completion records, temp files and locks.

``DEST/.modelpull/`` holds, per file (named by a hash of its relative path, so no key
can shape a path here):

- ``records/<h>.json``: written after a file is complete, verified and renamed; a later
  pull skips the file while the record's ETag and size match the store and the file on
  disk still has the recorded size and mtime;
- ``incomplete/<h>.part`` and ``incomplete/<h>.journal``: the file being written and
  its resume journal;
- ``locks/<h>.lock``: held while a process fetches the file.

Every path here is reached through :mod:`modelpull.safefs`: a link planted anywhere in
this folder (or the folder itself a link) is refused, never followed out of DEST.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelpull import safefs
from modelpull.errors import DiskFullError, UnsafePathError
from modelpull.objects import ObjectInfo

__all__ = ["STATE_DIR", "Record", "StateDir"]

STATE_DIR = ".modelpull"
# Headroom asked for beyond the bytes to fetch before a pull starts.
FREE_SPACE_MARGIN = 16 << 20


@dataclass(frozen=True, slots=True)
class Record:
    """What was fetched for one file, and what it looked like on disk afterwards."""

    path: str
    key: str
    etag: str
    size: int
    mtime_ns: int
    checksums: dict[str, str] = field(default_factory=dict)
    # The checks the file passed, and the CRC-32C of its bytes when it passed them: what
    # --check-existing compares the file on disk with, without asking the store.
    verified: list[str] = field(default_factory=list)
    crc32c: int | None = None

    def well_formed(self) -> bool:
        """A record is untrusted input: every field of the type it must have."""
        texts = (self.path, self.key, self.etag)
        return (
            all(isinstance(v, str) for v in texts)
            and all(type(v) is int for v in (self.size, self.mtime_ns))
            and isinstance(self.checksums, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.checksums.items())
            and isinstance(self.verified, list)
            and all(isinstance(v, str) for v in self.verified)
            and (self.crc32c is None or (type(self.crc32c) is int and 0 <= self.crc32c < 1 << 32))
        )


class StateDir:
    """Paths and records under ``DEST/.modelpull``."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.root = dest / STATE_DIR
        self.records = self.root / "records"
        self.incomplete = self.root / "incomplete"
        self.locks = self.root / "locks"

    def create(self) -> None:
        """Make the state folders that are missing; a link among them is refused."""
        for folder in (self.records, self.incomplete, self.locks):
            safefs.makedirs(self.dest, folder)

    def free_space(self) -> int:
        """Bytes free for temp files, on the file system of ``incomplete/``."""
        return safefs.free_space(self.dest, self.incomplete)

    def check_free_space(self, files: Sequence[tuple[str, int]]) -> None:
        """Raise :class:`DiskFullError` unless there is room for ``files`` (each a path and
        the size it will take), less what their resumable temp files already hold."""
        needed = sum(size for _, size in files)
        if not needed:
            return
        free = self.free_space()
        for path, size in files:
            needed -= min(self.temp_size(path) or 0, size)
        if free < needed + FREE_SPACE_MARGIN:
            raise DiskFullError(
                f"not enough free space in {self.dest}: {needed} bytes to fetch, "
                f"{free} free - free some space or choose another DEST",
                errno=errno.ENOSPC,
            )

    def checked_lock_path(self, path: str) -> Path:
        """:meth:`lock_path`, once its folder is known to be a real one inside DEST and
        the lock file, if there, a plain file (the lock library opens it by name)."""
        lock = self.lock_path(path)
        safefs.check_file(self.dest, lock, key=path)
        return lock

    def temp_size(self, path: str) -> int | None:
        """Bytes the temp file of ``path`` holds on disk, or ``None`` when there is none."""
        st = safefs.lstat(self.dest, self.temp_path(path))
        return st.st_blocks * 512 if st is not None else None

    @staticmethod
    def _name(path: str) -> str:
        return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def temp_path(self, path: str) -> Path:
        return self.incomplete / f"{self._name(path)}.part"

    def journal_path(self, path: str) -> Path:
        return self.incomplete / f"{self._name(path)}.journal"

    def lock_path(self, path: str) -> Path:
        return self.locks / f"{self._name(path)}.lock"

    def lock_holder(self, path: str) -> int | None:
        """The PID of the process holding ``path``'s lock, where the system tells (Linux's
        ``/proc/locks``); ``None`` when it does not, or nobody holds it."""
        try:
            st = self.lock_path(path).stat()
            table = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in table.splitlines():
            # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2148766 0 EOF"; a waiter's line has
            # "->" after the number, and is not the holder.
            fields = line.split()
            if len(fields) >= 6 and fields[1] != "->" and fields[5] == device:
                return int(fields[4]) if fields[4].isdigit() else None
        return None

    def record_path(self, path: str) -> Path:
        return self.records / f"{self._name(path)}.json"

    def read_record(self, path: str) -> Record | None:
        try:
            data = safefs.read_bytes(self.dest, self.record_path(path))
            record = Record(**json.loads(data)) if data is not None else None
        except UnsafePathError:
            raise
        except (OSError, ValueError, TypeError, RecursionError):
            # Damaged (RecursionError: JSON nested too deep): the file is fetched again.
            return None
        if record is None or not record.well_formed() or record.path != path:
            return None
        return record

    def write_record(self, record: Record) -> None:
        data = json.dumps(asdict(record), sort_keys=True).encode()
        safefs.write_atomic(self.dest, self.record_path(record.path), data)

    def forget(self, path: str) -> None:
        safefs.unlink(self.dest, self.record_path(path))

    def is_complete(self, path: str, final: Path, obj: ObjectInfo) -> bool:
        """True when ``final`` is the recorded, unchanged download of ``obj``."""
        record = self.read_record(path)
        if record is None or record.etag != obj.etag or record.size != obj.size:
            return False
        # lstat: a link at the final name is never the recorded file (a pull replaces it).
        st = safefs.lstat(self.dest, final)
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        return st.st_size == obj.size and st.st_mtime_ns == record.mtime_ns
