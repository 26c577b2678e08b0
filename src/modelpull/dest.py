"""Where a pull writes: DEST is a folder, or for one object it may name the file itself.

As ``aws s3 cp s3://bucket/config.json /models/cfg.json`` does, a URI that names exactly
one object and a DEST that names a file (no trailing slash, not an existing folder)
write that file: the pull then runs in DEST's parent folder, its state under
``<parent>/.modelpull/``, so the skip record of a second pull still works. Any other
DEST is a folder, created when missing, each file landing at its path below it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from modelpull.errors import DestinationError
from modelpull.objects import RemoteFile
from modelpull.plan import is_exact, safe_relpath
from modelpull.text import shown
from modelpull.uri import ObjectURI

__all__ = ["check_dest", "names_file", "placement"]


def names_file(dest: str | os.PathLike[str]) -> bool:
    """True when ``dest`` may name a file: no trailing slash, and not an existing folder."""
    text = os.fspath(dest)
    return bool(text) and not text.endswith(("/", os.sep)) and not Path(text).is_dir()


def check_dest(dest: Path, *, file_ok: bool = False) -> None:
    """Fail before any network traffic when DEST cannot be written.

    ``file_ok``: DEST may turn out to name a file (a URI that is no folder), so an
    existing file there is fine and its folder must be writable.
    """
    probe = dest
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == dest and file_ok and probe.exists() and not probe.is_dir():
        probe = dest.parent
    if probe.exists() and not probe.is_dir():
        what = "DEST" if probe == dest else f"{probe} (in DEST's path)"
        raise DestinationError(f"{what} is not a folder: {dest}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DestinationError(
            f"cannot write to {probe}: not writable (permission denied or read-only file "
            "system) - choose another DEST"
        )


def placement(
    uri: ObjectURI, dest: str | os.PathLike[str], files: Sequence[RemoteFile]
) -> tuple[Path, list[RemoteFile]]:
    """The folder the pull runs in, and the files with their paths below it.

    One object named exactly by ``uri``, with a ``dest`` that :func:`names_file`, lands
    as ``dest`` itself; otherwise ``dest`` is the folder and the paths stay.
    """
    folder = Path(dest)
    if is_exact(uri, files) and names_file(dest):
        name = safe_relpath(folder.name, "")
        return folder.parent, [RemoteFile(obj=files[0].obj, path=name)]
    if folder.exists() and not folder.is_dir():
        raise DestinationError(
            f"DEST is not a folder: {dest} ({shown(str(uri))} names more than one object, "
            "or a folder)"
        )
    return folder, list(files)
