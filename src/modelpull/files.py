"""Files on disk: how a file is split into parts, preallocated, and renamed into place;
the folders they go in."""

from __future__ import annotations

import errno
import os
from collections.abc import Container, Sequence
from pathlib import Path

from modelpull import safefs
from modelpull.errors import DestinationError
from modelpull.safefs import dest_error

__all__ = [
    "bytes_in",
    "dest_error",
    "make_folder",
    "place",
    "preallocate",
    "read_at",
    "split_parts",
]


def make_folder(path: Path, *, option: str | None = None) -> None:
    """Create ``path`` and its parents, or raise :class:`~modelpull.errors.DestinationError`
    naming it (and the ``option`` that gave it, such as ``--output``)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        named = f"{path} ({option})" if option else str(path)
        raise DestinationError(
            f"cannot create {named}: {exc.strerror or exc}", errno=exc.errno
        ) from exc


def split_parts(size: int, part_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges a file of ``size`` bytes is fetched in; one for size 0."""
    return [(start, min(size, start + part_size)) for start in range(0, size, part_size)] or [
        (0, 0)
    ]


def bytes_in(parts: Sequence[tuple[int, int]], indices: Container[int]) -> int:
    """Bytes covered by the parts at ``indices``."""
    return sum(end - start for i, (start, end) in enumerate(parts) if i in indices)


def read_at(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` of ``fd`` as far as the file goes; the bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes, so a full disk fails now rather than halfway through."""
    if not size:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        os.ftruncate(fd, size)  # filesystems without fallocate


def place(temp: Path, final: Path, dest: Path, *, key: str) -> os.stat_result:
    """Rename a complete temp file to its final name, inside DEST and nowhere else; what
    the final name is afterwards.

    The final file's folders are made one at a time from DEST, and a symlink among them
    is refused (:class:`~modelpull.errors.UnsafePathError`) before anything is made or
    moved: a folder inside DEST must not carry a file out of it. A link already at the
    final name is replaced, never followed.
    """
    return safefs.replace(dest, temp, final, key=key)
