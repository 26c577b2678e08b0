"""From a URI to the list of files to pull: listing, relative paths, filters, safety.

Object keys are untrusted input: a key that is absolute, has ``.``/``..`` or empty
segments, a backslash or a NUL, or that would write into modelpull's own state folder is
refused before anything is written; so is one whose name DEST's file system cannot hold,
or whose way under DEST passes a symlink (:func:`check_dest_paths`), before any byte of
the pull moves.

Filters (:func:`choose`): a wildcard URI's glob, a serving preset
(:mod:`modelpull.presets`), then ``include`` (an allow-list, as huggingface_hub's
``allow_patterns``: with none, every file) and ``exclude`` (always wins). They are not
the AWS CLI's ordered ``--exclude``/``--include`` pairs. Filters that keep nothing of a
non-empty listing fail (:class:`~modelpull.errors.NothingSelectedError`) unless empty
pulls are allowed.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from modelpull import safefs
from modelpull.backends.base import Backend
from modelpull.errors import (
    DestinationError,
    NothingSelectedError,
    ObjectNotFoundError,
    UnsafePathError,
)
from modelpull.globs import matches
from modelpull.objects import RemoteFile
from modelpull.presets import apply_preset, get_preset
from modelpull.state import STATE_DIR
from modelpull.text import shown
from modelpull.uri import ObjectURI

__all__ = [
    "check_dest_paths",
    "check_files",
    "choose",
    "is_exact",
    "list_remote",
    "matches",
    "safe_relpath",
    "select",
]

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
    elif segments[0].casefold() == STATE_DIR:  # .MODELPULL is it on a case-blind file system
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
    (keys ending in ``/``) are not files. A wildcard URI (``s3://b/m/*.json``, see
    :attr:`~modelpull.uri.ObjectURI.wildcard`) lists its folder, every file of it: the
    glob is applied by :func:`choose`.
    """
    if not uri.is_folder:
        try:
            obj = backend.head(uri.bucket, uri.key)
        except ObjectNotFoundError:
            pass
        else:
            name = uri.key.rsplit("/", 1)[-1]
            return [RemoteFile(obj=obj, path=safe_relpath(name, ""))]
    wildcard = uri.wildcard
    folder = uri.key if uri.is_folder else f"{uri.key}/"
    prefix = wildcard[0] if wildcard is not None else folder
    files = [
        RemoteFile(obj=obj, path=safe_relpath(obj.key, prefix))
        for obj in backend.list(uri.bucket, prefix)
        if not obj.key.endswith("/")
    ]
    if not files:
        raise ObjectNotFoundError(
            f"nothing at {shown(f'{uri.scheme}://{uri.bucket}/{prefix}')}: no such key and "
            "no objects under that prefix - check the path (keys are case-sensitive)",
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
    is longer than ``dest``'s file system allows (``PC_NAME_MAX``, ``PC_PATH_MAX``),
    whose folders under ``dest`` include a symlink, or whose final name is a folder: each
    would fail only once its bytes were in, so it is refused before any byte moves."""
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
        # Walks the folders that exist (a link among them is refused); a folder at the
        # final name would fail the rename only once every byte of the file was in.
        st = safefs.lstat(dest, dest / f.path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(
                f"refusing object key {f.obj.key!r}: {dest / f.path} is a folder, where the "
                "file must land - move it away or exclude the file (--exclude)",
                key=f.obj.key,
            )


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


def is_exact(uri: ObjectURI, files: Sequence[RemoteFile]) -> bool:
    """True when ``files`` (``uri``'s listing) is the one object the URI names exactly."""
    return not uri.is_folder and len(files) == 1 and files[0].obj.key == uri.key


def choose(
    files: Sequence[RemoteFile],
    uri: ObjectURI,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    preset: str | None = None,
    allow_empty: bool = False,
) -> list[RemoteFile]:
    """What to pull of ``files`` (``uri``'s listing): its wildcard, ``preset``, then
    :func:`select`. Filters that keep nothing raise
    :class:`~modelpull.errors.NothingSelectedError`, naming the URI and the filters, unless
    ``allow_empty``. An object the URI names exactly is never filtered away by a wildcard.
    """
    chosen = list(files)
    wildcard = None if is_exact(uri, files) else uri.wildcard
    if wildcard is not None:
        chosen = [f for f in chosen if matches(f.path, [wildcard[1]])]
    if preset is not None:
        chosen = apply_preset(get_preset(preset), chosen)
    chosen = select(chosen, include, exclude)
    if chosen or not files or allow_empty:
        return chosen
    raise NothingSelectedError(
        _nothing_selected(files, uri, include, exclude, preset, wildcard),
        bucket=uri.bucket,
        key=uri.key,
    )


def _nothing_selected(
    files: Sequence[RemoteFile],
    uri: ObjectURI,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    preset: str | None,
    wildcard: tuple[str, str] | None,
) -> str:
    filters = [f"the wildcard {shown(wildcard[1])}"] if wildcard is not None else []
    filters += [f"--preset {preset}"] if preset is not None else []
    filters += [f"--include {shown(p)}" for p in include or ()]
    filters += [f"--exclude {shown(p)}" for p in exclude or ()]
    sample = ", ".join(shown(f.path) for f in files[:3]) + (", ..." if len(files) > 3 else "")
    message = (
        f"nothing to pull: {shown(str(uri))} lists {len(files)} file(s) ({sample}) but "
        f"{' '.join(filters) or 'the filters'} kept none"
    )
    hints = []
    if include and exclude and any(matches(f.path, exclude) for f in files):
        hints.append(
            "--include is an allow-list (as huggingface_hub's allow_patterns) and every "
            "--exclude wins over it; filters are not applied in order as in the AWS CLI, so "
            "drop --exclude '*' and keep only the --include patterns"
        )
    keyed = [p for p in include or () if any(matches(f.obj.key, [p]) for f in files)]
    if keyed:
        folder = wildcard[0] if wildcard is not None else uri.key
        hints.append(
            f"patterns match paths relative to {shown(f'{uri.scheme}://{uri.bucket}/{folder}')}"
            f" (such as {shown(files[0].path)}), not whole keys: {shown(keyed[0])} matches "
            "only whole keys"
        )
    hints.append("pass --allow-empty to succeed without pulling anything")
    return f"{message}; " + "; ".join(hints)
