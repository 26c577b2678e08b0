"""Paths under DEST, reached without following links: how modelpull touches its disk.

DEST itself may be a symlink (the user chose it); nothing *inside* DEST is trusted. Every
path modelpull creates, opens, renames or removes under DEST (its ``.modelpull`` state
folders, temp files, journals, records, locks, final files and their folders) goes
through this module:

- folders are walked from a descriptor of DEST one name at a time, each opened with
  ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent, and created (``mkdir`` relative to
  a parent already known to be inside DEST) only where asked;
- files are opened with ``O_NOFOLLOW`` relative to their folder, created with
  ``O_CREAT | O_EXCL``, and must be regular files with one link (a hard link planted at
  a temp path would let a write change a file outside DEST);
- renames and removals name both folders by descriptor.

A symlink, a hard-linked file or a special file found on the way is refused with
:class:`~modelpull.errors.UnsafePathError` naming the path; nothing outside DEST is
read, written, truncated or created first. Every other ``OSError`` becomes a
:class:`~modelpull.errors.DestinationError` (:class:`~modelpull.errors.DiskFullError`
for ENOSPC/EDQUOT) naming the path, through :func:`dest_error`.

Paths are given as ``(dest, path)``, ``path`` lexically under ``dest`` (``dest / ...``),
so callers keep their :class:`~pathlib.Path` names for messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from modelpull.errors import DestinationError, DiskFullError, UnsafePathError

__all__ = [
    "check_file",
    "dest_error",
    "free_space",
    "lstat",
    "makedirs",
    "open_file",
    "read_bytes",
    "replace",
    "unlink",
    "write_atomic",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the way must not hang the open (it is then refused).
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_LINK_HINT = "modelpull follows no link inside DEST; remove it and run the same command again"


def dest_error(exc: OSError, where: Path, *, key: str = "") -> DestinationError:
    """modelpull's error, naming ``where`` and what to do, for an OS error there."""
    if isinstance(exc, DestinationError):
        return exc
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"disk full while writing {where}: free some space, then run the same command "
            "again to resume",
            errno=code,
        )
    if code == errno.ELOOP:
        return _unsafe(where, "it is a symlink", key)
    hint = {
        errno.ENOENT: "it or a folder on its way vanished (was DEST/.modelpull removed during "
        "the pull?) - run the same command again",
        errno.EACCES: "check the owner and mode of DEST and what is in it",
        errno.EPERM: "check the owner and mode of DEST and what is in it",
        errno.EROFS: "choose another DEST",
        errno.ENAMETOOLONG: "the name is longer than DEST's file system allows",
    }.get(code or 0)
    reason = exc.strerror or str(exc)
    return DestinationError(
        f"cannot write {where}: {reason}" + (f" - {hint}" if hint else ""), errno=code
    )


def _unsafe(where: Path, what: str, key: str = "") -> UnsafePathError:
    return UnsafePathError(f"refusing to use {where}: {what} ({_LINK_HINT})", key=key)


def _parts(dest: Path, path: Path) -> tuple[str, ...]:
    parts = path.relative_to(dest).parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{path} is not a path inside {dest}")
    return parts


def _check_opened(fd: int, where: Path, key: str, *, writing: bool) -> None:
    """Refuse, closing ``fd``, anything but a regular file (with one link, for writing)."""
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "it is not a regular file"
    elif writing and st.st_nlink > 1:
        problem = f"it has {st.st_nlink} hard links, so writing it could change a file elsewhere"
    if problem is not None:
        os.close(fd)
        raise _unsafe(where, problem, key)


@contextlib.contextmanager
def _folder(
    dest: Path, names: Sequence[str], *, create: bool, key: str = ""
) -> Iterator[int | None]:
    """A descriptor of ``dest/names...``, every name opened without following a link.

    Missing folders (DEST too) are created when ``create``; otherwise ``None`` stands for
    "missing".
    """
    if create:
        dest.mkdir(parents=True, exist_ok=True)  # DEST and above are the user's to choose
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # DEST may be a link
    except FileNotFoundError:
        if create:
            raise
        fd = -1
    try:
        for i, name in enumerate(names):
            if fd < 0:
                break
            child = _child(fd, name, dest.joinpath(*names[: i + 1]), create=create, key=key)
            os.close(fd)
            fd = child
        yield fd if fd >= 0 else None
    finally:
        if fd >= 0:
            os.close(fd)


def _child(parent: int, name: str, here: Path, *, create: bool, key: str) -> int:
    """The folder ``name`` in ``parent``, opened without following a link; -1 if missing."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            return -1
    except OSError as exc:
        # O_NOFOLLOW | O_DIRECTORY on a symlink fails with ENOTDIR, as on a file.
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
            raise _unsafe(here, "it is a symlink", key) from None
        raise DestinationError(f"cannot use {here}: it is not a folder") from None
    # Made only now that its parent is known to be a real folder inside DEST.
    with contextlib.suppress(FileExistsError):  # another process made it meanwhile
        os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


def makedirs(dest: Path, path: Path) -> None:
    """Make the folder ``path`` under ``dest`` (and those on its way) unless it exists."""
    try:
        with _folder(dest, _parts(dest, path), create=True):
            pass
    except OSError as exc:
        raise dest_error(exc, path) from exc


def open_file(dest: Path, path: Path, flags: int, mode: int = 0o644, *, key: str = "") -> int:
    """``os.open`` of ``path`` under ``dest``, never through a link; its folder is created
    when ``flags`` has ``O_CREAT``. A file opened for writing must have one link, and
    ``O_TRUNC`` truncates only once that is known (so a planted hard link's other name
    keeps its bytes)."""
    *folder, name = _parts(dest, path)
    try:
        with _folder(dest, folder, create=bool(flags & os.O_CREAT), key=key) as dir_fd:
            if dir_fd is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            fd = os.open(name, (flags & ~os.O_TRUNC) | _FILE_FLAGS, mode, dir_fd=dir_fd)
        _check_opened(fd, path, key, writing=flags & (os.O_WRONLY | os.O_RDWR) != 0)
        if flags & os.O_TRUNC:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                os.close(fd)
                raise
        return fd
    except OSError as exc:
        raise dest_error(exc, path, key=key) from exc


def read_bytes(dest: Path, path: Path) -> bytes | None:
    """The bytes of ``path`` under ``dest``; ``None`` when it (or its folder) is missing.

    For modelpull's own files (records, journals), which it always writes with one link:
    one with another name may be a file outside DEST, and is refused unread."""
    try:
        fd = open_file(dest, path, os.O_RDONLY)
    except DestinationError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        with os.fdopen(fd, "rb") as f:
            links = os.fstat(f.fileno()).st_nlink
            if links > 1:
                raise _unsafe(path, f"it has {links} hard links")
            return f.read()
    except OSError as exc:
        raise dest_error(exc, path) from exc


def check_file(dest: Path, path: Path, *, key: str = "") -> None:
    """Make ``path``'s folder if missing, and refuse ``path`` if it is there as anything
    but a regular file with one link: for files opened by others (the lock)."""
    *folder, name = _parts(dest, path)
    try:
        with _folder(dest, folder, create=True, key=key) as dir_fd:
            assert dir_fd is not None
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return
    except OSError as exc:
        raise dest_error(exc, path, key=key) from exc
    if stat.S_ISLNK(st.st_mode):
        raise _unsafe(path, "it is a symlink", key)
    if not stat.S_ISREG(st.st_mode):
        raise _unsafe(path, "it is not a regular file", key)
    if st.st_nlink > 1:
        raise _unsafe(path, f"it has {st.st_nlink} hard links", key)


def lstat(dest: Path, path: Path) -> os.stat_result | None:
    """``lstat`` of ``path`` under ``dest`` (a link there is described, not followed);
    ``None`` when it or a folder on its way is missing."""
    *folder, name = _parts(dest, path)
    try:
        with _folder(dest, folder, create=False) as dir_fd:
            if dir_fd is None:
                return None
            try:
                return os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
    except OSError as exc:
        raise dest_error(exc, path) from exc


def write_atomic(dest: Path, path: Path, data: bytes) -> None:
    """Replace ``path`` under ``dest`` with ``data`` at once; its folder is created when
    missing (it may have been removed under a running pull). A failed write leaves no
    temp file."""
    *folder, name = _parts(dest, path)
    tmp = f"{name}.{os.getpid()}.tmp"
    try:
        with _folder(dest, folder, create=True) as dir_fd:
            assert dir_fd is not None
            # One left by a process that died with our PID; whatever it is, only its name goes.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o644, dir_fd=dir_fd
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
    except OSError as exc:
        raise dest_error(exc, path) from exc


def unlink(dest: Path, path: Path) -> None:
    """Remove the name ``path`` under ``dest`` (a link itself, never its target), if there."""
    *folder, name = _parts(dest, path)
    try:
        with _folder(dest, folder, create=False) as dir_fd:
            if dir_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        raise dest_error(exc, path) from exc


def replace(dest: Path, src: Path, dst: Path, *, key: str = "") -> os.stat_result:
    """Rename ``src`` to ``dst``, both under ``dest``; ``dst``'s folders are made when
    missing. A link at ``dst`` is replaced, not followed; a folder there is an error.
    Returns what ``dst`` is afterwards."""
    *src_folder, src_name = _parts(dest, src)
    *dst_folder, dst_name = _parts(dest, dst)
    try:
        with (
            _folder(dest, src_folder, create=False) as src_fd,
            _folder(dest, dst_folder, create=True, key=key) as dst_fd,
        ):
            assert dst_fd is not None
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(dst_name, dir_fd=dst_fd).st_mode):
                    raise DestinationError(f"cannot write {dst}: a folder is in the way")
            try:
                if src_fd is None:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory")
                os.replace(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except FileNotFoundError as exc:
                raise DestinationError(
                    f"cannot move {src} to {dst}: it vanished during the pull (was "
                    "DEST/.modelpull removed?) - run the same command again",
                    errno=exc.errno,
                ) from exc
            return os.lstat(dst_name, dir_fd=dst_fd)
    except OSError as exc:
        raise dest_error(exc, dst, key=key) from exc


def free_space(dest: Path, path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of folder ``path``."""
    try:
        with _folder(dest, _parts(dest, path), create=True) as fd:
            assert fd is not None
            st = os.fstatvfs(fd)
    except OSError as exc:
        raise dest_error(exc, path) from exc
    return st.f_bavail * st.f_frsize
