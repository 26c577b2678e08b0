"""``--dry-run``: what a pull would fetch, skip and check, read without writing anything.

:func:`preview` lists and filters exactly as :func:`modelpull.pull` does, places the files
the same way (a file DEST included), then reads DEST without locking, creating or
changing anything, and sorts each file into one of:

- ``skip``: complete already (its record matches the store and the disk), as a pull
  would skip it;
- ``check``: a file of the right size is already at the final path, with no modelpull
  record (another tool pulled it). :func:`unrecorded_copy` is the hook for adopting such
  files after a checksum check; until a pull does that, it fetches them again;
- ``fetch``: everything else, with the bytes a resume journal already holds
  (``resumable_bytes``), which the pull keeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelpull.api import select_files
from modelpull.config import PullConfig
from modelpull.dest import check_dest, placement
from modelpull.files import bytes_in
from modelpull.keywords import SelectKeywords, accept
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.partfile import PartFile
from modelpull.plan import list_remote
from modelpull.resolve import Target, resolved
from modelpull.retry import RetryPolicy
from modelpull.state import StateDir

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Action", "PlannedFile", "PullPreview", "preview", "unrecorded_copy"]

Action = Literal["fetch", "skip", "check"]


@dataclass(frozen=True)
class PlannedFile:
    """One file and what a pull would do with it."""

    path: str
    key: str
    size: int
    action: Action
    resumable_bytes: int = 0


@dataclass(frozen=True)
class PullPreview:
    """What :func:`modelpull.pull` would do; ``dest`` as given, ``folder`` where it runs."""

    uri: str
    dest: str
    folder: str
    files: tuple[PlannedFile, ...]

    def of(self, action: Action) -> list[PlannedFile]:
        return [f for f in self.files if f.action == action]

    def size_of(self, action: Action) -> int:
        return sum(f.size for f in self.of(action))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (keys as they are: JSON escapes them)."""
        return {
            "dry_run": True,
            "uri": self.uri,
            "dest": self.dest,
            "files": [
                {
                    "path": f.path,
                    "key": f.key,
                    "size": f.size,
                    "action": f.action,
                    "resumable_bytes": f.resumable_bytes,
                }
                for f in self.files
            ],
            **{
                action: {"files": len(self.of(action)), "bytes": self.size_of(action)}
                for action in ("fetch", "skip", "check")
            },
        }


def unrecorded_copy(final: Path, obj: ObjectInfo, state: StateDir, path: str) -> bool:
    """True when ``final`` holds a file of ``obj``'s size that modelpull has no record of:
    the candidate for adoption (checked against the store's checksums, then kept)."""
    try:
        st = final.lstat()
    except OSError:
        return False
    if not final.is_file() or final.is_symlink() or st.st_size != obj.size:
        return False
    return state.read_record(path) is None


def _classify(state: StateDir, remote: RemoteFile, config: PullConfig) -> PlannedFile:
    local = PartFile(state, remote, config)
    action: Action = "fetch"
    resumable = 0
    if not config.force and local.is_complete():
        action = "skip"
    elif not config.force and unrecorded_copy(local.final, remote.obj, state, remote.path):
        action = "check"
    else:
        resumable = bytes_in(local.parts, local.resumable())
    return PlannedFile(remote.path, remote.obj.key, remote.obj.size, action, resumable)


def preview(
    uri: str | Target, dest: str | os.PathLike[str], **kwargs: Unpack[SelectKeywords]
) -> PullPreview:
    """What ``pull(uri, dest, ...)`` with the same arguments would do, without doing it.

    Lists the store (read-only requests) and reads DEST; writes nothing anywhere. The
    keywords (``include``, ``exclude``, ``preset``, ``config``, ``credentials``,
    ``backend``) are :func:`modelpull.pull`'s. Raises what :func:`modelpull.pull` raises
    before it fetches (not found, nothing selected, a DEST that cannot be written, ...).
    """
    accept("preview", kwargs, SelectKeywords)
    with resolved(uri, kwargs) as target:
        check_dest(Path(dest), file_ok=not target.uri.is_folder)
        policy = RetryPolicy.from_config(target.config)
        listed = policy.call(lambda: list_remote(target.backend, target.uri))
        chosen = select_files(listed, target, kwargs)
        folder, files = placement(target.uri, dest, chosen)
        state = StateDir(folder)
        planned = tuple(_classify(state, f, target.config) for f in files)
        return PullPreview(
            uri=str(target.uri), dest=str(Path(dest)), folder=str(folder), files=planned
        )
