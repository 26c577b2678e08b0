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

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """Parts done for one version of one object: part index -> CRC-32C as written."""

    path: Path
    etag: str
    size: int
    part_size: int
    done: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(
        cls, path: Path, obj: ObjectInfo, part_size: int, parts: int, temp: Path
    ) -> Journal | None:
        """The journal at ``path`` if it describes exactly this download, else ``None``.

        A missing journal is normal; one that exists and cannot be used is reported once.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            _discard(path, f"it cannot be read ({exc})")
            return None
        try:
            done = _parse(text, obj, part_size, parts)
            if not obj.etag:
                raise _Unusable("the object has no ETag to tie it to")
            try:
                temp_size = temp.stat().st_size
            except OSError:
                raise _Unusable("its temp file is gone") from None
            if temp_size != obj.size:
                raise _Unusable(f"its temp file holds {temp_size} bytes, not {obj.size}")
        except _Unusable as exc:
            _discard(path, str(exc))
            return None
        return cls(path=path, etag=obj.etag, size=obj.size, part_size=part_size, done=done)

    def save(self) -> None:
        """Atomically replace the journal on disk; a failed write leaves no temp file."""
        data = {
            "version": VERSION,
            "etag": self.etag,
            "size": self.size,
            "part_size": self.part_size,
            "kind": JOURNAL_KIND,
            "done": {str(k): v for k, v in sorted(self.done.items())},
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _parse(text: str, obj: ObjectInfo, part_size: int, parts: int) -> dict[int, int]:
    try:
        data: Any = json.loads(text)
    except ValueError:
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
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise _Unusable(f"part {key!r} is not a part number")
        index = int(key)
        if index >= parts:
            raise _Unusable(f"part {index} is out of range (the file has {parts})")
        if type(value) is not int or not 0 <= value < _CRC_LIMIT:
            raise _Unusable(f"part {index} has no valid {JOURNAL_KIND} value")
        done[index] = value
    return done


def _discard(path: Path, why: str) -> None:
    log.warning("discarding the resume journal %s: %s; its parts are fetched again", path, why)
