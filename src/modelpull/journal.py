"""The resume journal kept beside a temp file: which parts are written, and their CRCs.

A journal is untrusted input (anything may have written or damaged it, or an older
modelpull): it is used only when it parses, is of this version, describes exactly this
download (the object's ETag and size, the part size, the temp file's size) and every
entry is in range. Anything else is discarded with one warning, and its parts are
fetched again. Even a journal that is used proves nothing about the bytes: each part
it lists carries the CRC-32C its bytes had when they were written, and is re-read and
checked against it before it counts (see :class:`~modelpull.partfile.PartFile`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpull import safefs
from modelpull.errors import UnsafePathError
from modelpull.integrity import JOURNAL_KIND
from modelpull.objects import ObjectInfo

__all__ = ["Journal"]

log = logging.getLogger("modelpull")

VERSION = 2
_CRC_LIMIT = 1 << 32  # JOURNAL_KIND is a 32-bit CRC


class _Unusable(ValueError):
    """Why a journal on disk cannot be used."""


@dataclass
class Journal:
    """Parts done for one version of one object: part index -> CRC-32C as written.

    ``path`` (and a load's ``temp``) lie under ``dest``, reached without following links
    (:mod:`modelpull.safefs`).
    """

    path: Path
    etag: str
    size: int
    part_size: int
    done: dict[int, int] = field(default_factory=dict)
    dest: Path = field(kw_only=True)

    @classmethod
    def load(
        cls, path: Path, obj: ObjectInfo, part_size: int, parts: int, temp: Path, *, dest: Path
    ) -> Journal | None:
        """The journal at ``path`` if it describes exactly this download, else ``None``.

        A missing journal is normal; one that exists and cannot be used is reported once.
        A link at ``path`` or ``temp`` is :class:`~modelpull.errors.UnsafePathError`.
        """
        try:
            data = safefs.read_bytes(dest, path)
            if data is None:
                return None
            text = data.decode("utf-8")
        except UnsafePathError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            _discard(path, f"it cannot be read ({exc})")
            return None
        try:
            done = _parse(text, obj, part_size, parts)
            if not obj.etag:
                raise _Unusable("the object has no ETag to tie it to")
            st = safefs.lstat(dest, temp)
            if st is None:
                raise _Unusable("its temp file is gone")
            temp_size = st.st_size
            if temp_size != obj.size:
                raise _Unusable(f"its temp file holds {temp_size} bytes, not {obj.size}")
        except _Unusable as exc:
            _discard(path, str(exc))
            return None
        return cls(
            path=path, etag=obj.etag, size=obj.size, part_size=part_size, done=done, dest=dest
        )

    def save(self) -> None:
        """Atomically replace the journal on disk; a failed write leaves no temp file.

        Its folder is made again if it was removed; an OS error is a
        :class:`~modelpull.errors.DestinationError` naming the journal."""
        data = {
            "version": VERSION,
            "etag": self.etag,
            "size": self.size,
            "part_size": self.part_size,
            "kind": JOURNAL_KIND,
            "done": {str(k): v for k, v in sorted(self.done.items())},
        }
        safefs.write_atomic(self.dest, self.path, json.dumps(data).encode())

    def remove(self) -> None:
        safefs.unlink(self.dest, self.path)


def _parse(text: str, obj: ObjectInfo, part_size: int, parts: int) -> dict[int, int]:
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested too deep
        raise _Unusable("it is not valid JSON") from None
    if not isinstance(data, dict):
        raise _Unusable("it is not a JSON object")
    if data.get("version") != VERSION or data.get("kind") != JOURNAL_KIND:
        raise _Unusable(f"it is from another version of modelpull ({data.get('version')!r})")
    if data.get("etag") != obj.etag or data.get("size") != obj.size:
        raise _Unusable("it describes another version of the object")
    if data.get("part_size") != part_size:
        raise _Unusable(f"it was written with another part size ({data.get('part_size')!r})")
    entries = data.get("done")
    if not isinstance(entries, dict):
        raise _Unusable("its list of parts is malformed")
    done: dict[int, int] = {}
    for key, value in entries.items():
        # At most 12 digits: int() refuses over 4,300, and no file has a trillion parts.
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 12):
            raise _Unusable(f"part {key[:20]!r} is not a part number")
        index = int(key)
        if index >= parts:
            raise _Unusable(f"part {index} is out of range (the file has {parts})")
        if type(value) is not int or not 0 <= value < _CRC_LIMIT:
            raise _Unusable(f"part {index} has no valid {JOURNAL_KIND} value")
        done[index] = value
    return done


def _discard(path: Path, why: str) -> None:
    log.warning("discarding the resume journal %s: %s; its parts are fetched again", path, why)
