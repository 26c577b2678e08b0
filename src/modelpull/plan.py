"""From a URI to the list of files to pull: listing, relative paths, filters, safety.

Object keys are untrusted input: a key that is absolute, has ``.``/``..`` or empty
segments, a backslash or a NUL, or that would write into modelpull's own state folder is
refused before anything is written; so is one whose name DEST's file system cannot hold,
or whose way under DEST passes a symlink (:func:`check_dest_paths`), before any byte of
the pull moves.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from modelpull import safefs
from modelpull.backends.base import Backend
from modelpull.errors import DestinationError, ObjectNotFoundError, UnsafePathError
from modelpull.objects import RemoteFile
from modelpull.state import STATE_DIR
from modelpull.uri import ObjectURI

__all__ = ["check_dest_paths", "check_files", "list_remote", "matches", "safe_relpath", "select"]

# POSIX's usual limits, for file systems that do not say (pathconf fails or says -1).
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


def safe_relpath(key: str, prefix: str) -> str:
    """The path of ``key`` under DEST, relative and normalised, or :class:`UnsafePathError`."""
    rel = key[len(prefix) :]
    segments = rel.split("/")
    problem = None
    if not rel:
        problem = "it is empty"
    elif key.startswith("/") or rel.startswith("/"):
        problem = "it is absolute"
    elif "\x00" in rel or "\\" in rel:
        problem = "it contains a NUL or a backslash"
    elif any(seg in ("", ".", "..") for seg in segments):
        problem = "it has an empty, '.' or '..' segment"
    elif segments[0] == STATE_DIR:
        problem = f"it would write into modelpull's {STATE_DIR}/ folder"
    if problem is not None:
        raise UnsafePathError(
            f"refusing object key {key!r}: {problem}, so it could land outside DEST "
            "(object keys are untrusted input)",
            key=key,
        )
    return posixpath.normpath(rel)


def list_remote(backend: Backend, uri: ObjectURI) -> list[RemoteFile]:
    """The files a URI names, sorted by path.

    An exact key is one file named after its last segment; otherwise the URI is a folder
    (``s3://b/model`` means ``s3://b/model/``, as AIBrix reads it). Folder markers
    (keys ending in ``/``) are not files.
    """
    if not uri.is_folder:
        try:
            obj = backend.head(uri.bucket, uri.key)
        except ObjectNotFoundError:
            pass
        else:
            name = uri.key.rsplit("/", 1)[-1]
            return [RemoteFile(obj=obj, path=safe_relpath(name, ""))]
    prefix = uri.key if uri.is_folder else f"{uri.key}/"
    files = [
        RemoteFile(obj=obj, path=safe_relpath(obj.key, prefix))
        for obj in backend.list(uri.bucket, prefix)
        if not obj.key.endswith("/")
    ]
    if not files:
        raise ObjectNotFoundError(
            f"nothing at {uri.scheme}://{uri.bucket}/{prefix}: no such key and no objects "
            "under that prefix - check the path (keys are case-sensitive)",
            bucket=uri.bucket,
            key=prefix,
        )
    _check_conflicts(f.path for f in files)
    return sorted(files, key=lambda f: f.path)


def check_files(files: Sequence[RemoteFile]) -> list[RemoteFile]:
    """``files`` as they are, once every path is known safe: relative, normalised, each
    once, and none another's folder. For files a caller made rather than listed."""
    for f in files:
        if safe_relpath(f.path, "") != f.path:
            raise UnsafePathError(
                f"refusing path {f.path!r} of object {f.obj.key!r}: not normalised "
                "(use the paths list_objects gives)",
                key=f.obj.key,
            )
    counts = Counter(f.path for f in files)
    twice = sorted(path for path, n in counts.items() if n > 1)
    if twice:
        raise DestinationError(f"more than one object would land at {', '.join(twice)}")
    _check_conflicts(counts)
    return list(files)


def _limit(dest: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(dest, name)
    except (OSError, ValueError):
        return default
    return value if value > 0 else default


def check_dest_paths(files: Sequence[RemoteFile], dest: Path) -> None:
    """Refuse (:class:`UnsafePathError`) a file whose name, or whole path under ``dest``,
    is longer than ``dest``'s file system allows (``PC_NAME_MAX``, ``PC_PATH_MAX``), or
    whose folders under ``dest`` include a symlink: either would fail only once its
    bytes were in, so it is refused before any byte moves."""
    name_max = _limit(dest, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    path_max = _limit(dest, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    base = len(os.fsencode(dest.absolute())) + 1
    for f in files:
        problem = None
        longest = max(f.path.split("/"), key=lambda seg: len(os.fsencode(seg)))
        if len(os.fsencode(longest)) > name_max:
            problem = (
                f"the name {longest[:24]}... is {len(os.fsencode(longest))} bytes long, and "
                f"DEST's file system allows {name_max}"
            )
        elif base + len(os.fsencode(f.path)) >= path_max:  # PATH_MAX counts the NUL
            problem = (
                f"its path under {dest} is {base + len(os.fsencode(f.path))} bytes long, and "
                f"DEST's file system allows {path_max - 1}"
            )
        if problem is not None:
            raise UnsafePathError(
                f"refusing object key {f.obj.key!r}: {problem} - exclude it (--exclude) or "
                "choose a DEST with a shorter path",
                key=f.obj.key,
            )
        safefs.lstat(dest, dest / f.path)  # walks the folders that exist; a link is refused


def _check_conflicts(paths: Iterable[str]) -> None:
    seen = set(paths)
    for path in seen:
        parent = posixpath.dirname(path)
        while parent:
            if parent in seen:
                raise DestinationError(
                    f"objects {parent!r} and {path!r} cannot both be files: one would be the "
                    "other's folder"
                )
            parent = posixpath.dirname(parent)


def _expand(pattern: str) -> str:
    # "tokenizer/" means the whole folder, as in huggingface_hub's allow_patterns.
    return f"{pattern}*" if pattern.endswith("/") else pattern


def matches(path: str, patterns: Sequence[str]) -> bool:
    """True when ``path`` matches one of the globs (``*`` also crosses ``/``)."""
    return any(fnmatch.fnmatchcase(path, _expand(p)) for p in patterns)


def select(
    files: Sequence[RemoteFile],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[RemoteFile]:
    """Keep the files matching an ``include`` glob (all when none) and no ``exclude`` glob."""
    return [
        f
        for f in files
        if (not include or matches(f.path, include)) and not (exclude and matches(f.path, exclude))
    ]
