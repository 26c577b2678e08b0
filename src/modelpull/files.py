"""Files on disk: how a file is split into parts, preallocated, and renamed into place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Container, Sequence
from pathlib import Path

from modelpull.errors import DestinationError, DiskFullError, UnsafePathError

__all__ = [
    "bytes_in",
    "check_free_space",
    "dest_error",
    "place",
    "preallocate",
    "read_at",
    "split_parts",
]


def split_parts(size: int, part_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges a file of ``size`` bytes is fetched in; one for size 0."""
    return [(start, min(size, start + part_size)) for start in range(0, size, part_size)] or [
        (0, 0)
    ]


def bytes_in(parts: Sequence[tuple[int, int]], indices: Container[int]) -> int:
    """Bytes covered by the parts at ``indices``."""
    return sum(end - start for i, (start, end) in enumerate(parts) if i in indices)


# Headroom asked for beyond the bytes to fetch before a pull starts.
FREE_SPACE_MARGIN = 16 << 20


def check_free_space(dest: Path, folder: Path, files: Sequence[tuple[int, Path]]) -> None:
    """Raise :class:`DiskFullError` unless ``folder`` (in ``dest``) has room for ``files``,
    each a size and the temp file it is written to."""
    needed = sum(size for size, _ in files)
    if not needed:
        return
    free = shutil.disk_usage(folder).free
    # Temp files kept from an interrupted pull already hold their space.
    for size, temp in files:
        with contextlib.suppress(OSError):
            needed -= min(temp.stat().st_blocks * 512, size)
    if free < needed + FREE_SPACE_MARGIN:
        raise DiskFullError(
            f"not enough free space in {dest}: {needed} bytes to fetch, "
            f"{free} free - free some space or choose another DEST",
            errno=errno.ENOSPC,
        )


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


def place(temp: Path, final: Path, dest_real: Path, *, key: str) -> None:
    """Rename a complete temp file to its final name, inside DEST and nowhere else."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    # A symlinked folder inside DEST must not carry a file out of it.
    if not parent.resolve().is_relative_to(dest_real):
        raise UnsafePathError(
            f"refusing to write {final}: {parent} leads outside DEST through a symlink",
            key=key,
        )
    if final.is_dir() and not final.is_symlink():
        raise DestinationError(f"cannot write {final}: a folder is in the way")
    temp.replace(final)


def dest_error(exc: OSError, where: Path) -> DestinationError:
    """modelpull's error for an OS error while writing ``where``."""
    if isinstance(exc, DestinationError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"disk full while writing {where}: free some space, then run the same command "
            "again to resume",
            errno=exc.errno,
        )
    return DestinationError(f"cannot write {where}: {exc.strerror or exc}", errno=exc.errno)
