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

    def record_path(self, path: str) -> Path:
        return self.records / f"{self._name(path)}.json"

    def read_record(self, path: str) -> Record | None:
        try:
            data = json.loads(self.record_path(path).read_text(encoding="utf-8"))
            record = Record(**data)
        except (OSError, ValueError, TypeError):
            return None  # missing or damaged: the file is simply fetched again
        return record if record.well_formed() and record.path == path else None

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
