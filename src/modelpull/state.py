"""modelpull's hidden folder under DEST: completion records, temp files and locks.

``DEST/.modelpull/`` holds, per file (named by a hash of its relative path, so no key
can shape a path here):

- ``records/<h>.json``: written after a file is complete, verified and renamed; a later
  pull skips the file while the record's ETag and size match the store and the file on
  disk still has the recorded size and mtime;
- ``incomplete/<h>.part`` and ``incomplete/<h>.journal``: the file being written and
  its resume journal;
- ``locks/<h>.lock``: held while a process fetches the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelpull.objects import ObjectInfo

__all__ = ["STATE_DIR", "Record", "StateDir"]

STATE_DIR = ".modelpull"


@dataclass(frozen=True, slots=True)
class Record:
    """What was fetched for one file, and what it looked like on disk afterwards."""

    path: str
    key: str
    etag: str
    size: int
    mtime_ns: int
    checksums: dict[str, str] = field(default_factory=dict)


class StateDir:
    """Paths and records under ``DEST/.modelpull``."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.dest_real = dest.resolve()
        self.root = dest / STATE_DIR
        self.records = self.root / "records"
        self.incomplete = self.root / "incomplete"
        self.locks = self.root / "locks"

    def create(self) -> None:
        for folder in (self.records, self.incomplete, self.locks):
            folder.mkdir(parents=True, exist_ok=True)

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
            data = json.loads(self.record_path(path).read_text(encoding="utf-8"))
            return Record(**data)
        except (OSError, ValueError, TypeError):
            return None  # missing or damaged: the file is simply fetched again

    def write_record(self, record: Record) -> None:
        target = self.record_path(record.path)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(record), sort_keys=True), encoding="utf-8")
        tmp.replace(target)

    def forget(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(path).unlink()

    def is_complete(self, path: str, final: Path, obj: ObjectInfo) -> bool:
        """True when ``final`` is the recorded, unchanged download of ``obj``."""
        record = self.read_record(path)
        if record is None or record.etag != obj.etag or record.size != obj.size:
            return False
        try:
            st = final.stat()
        except OSError:
            return False
        return st.st_size == obj.size and st.st_mtime_ns == record.mtime_ns
