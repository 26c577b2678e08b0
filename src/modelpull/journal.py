"""The resume journal kept beside a temp file: which parts are written, and their CRCs.

It is trusted only when the object's ETag and size, the part size and the temp file's
size all still match, the equivalent of the TOS SDK's ``enable_checkpoint`` file. Part
CRCs are kept so the whole-file CRC can still be combined after a resume; the final
end-to-end verification catches a journal that lies.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from modelpull.objects import ObjectInfo

__all__ = ["Journal"]

VERSION = 1


@dataclass
class Journal:
    """Parts done for one version of one object, keyed by part index."""

    path: Path
    etag: str
    size: int
    part_size: int
    done: dict[int, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, obj: ObjectInfo, part_size: int, temp: Path) -> Journal | None:
        """The journal at ``path`` if it describes exactly this download, else ``None``."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if (
                data["version"] != VERSION
                or data["etag"] != obj.etag
                or data["size"] != obj.size
                or data["part_size"] != part_size
                or temp.stat().st_size != obj.size
                or not obj.etag
            ):
                return None
            done = {int(k): {str(a): int(b) for a, b in v.items()} for k, v in data["done"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(path=path, etag=obj.etag, size=obj.size, part_size=part_size, done=done)

    def save(self) -> None:
        """Atomically replace the journal on disk."""
        data = {
            "version": VERSION,
            "etag": self.etag,
            "size": self.size,
            "part_size": self.part_size,
            "done": {str(k): v for k, v in sorted(self.done.items())},
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
