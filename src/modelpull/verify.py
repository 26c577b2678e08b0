"""``modelpull verify URI DEST``: re-read every file in DEST and check it against the store.

What ``rclone check`` is to rclone: each file the URI names (after the filters) must be
in DEST with the store's size and pass every checksum the store publishes for it — whole
object or composite, the multipart ETag where nothing else is offered (the same checks,
by ``--verify`` mode, as a pull's). A file that passes has its record refreshed, so the
next pull skips it; one that fails loses its record, so the next pull fetches it. Nothing
is downloaded but metadata: the cost is one read of the local bytes.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpull import safefs
from modelpull.api import list_objects
from modelpull.config import PullConfig
from modelpull.errors import DestinationError, IntegrityError, ModelPullError
from modelpull.events import Event
from modelpull.fetch import Fetcher
from modelpull.integrity import needs_layout
from modelpull.keywords import FilterKeywords, accept
from modelpull.objects import RemoteFile
from modelpull.partfile import PartFile
from modelpull.plan import select
from modelpull.resolve import Target, resolved
from modelpull.retry import RetryPolicy
from modelpull.state import StateDir
from modelpull.watch import Watchdog

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["FileCheck", "VerifyResult", "verify"]

# Disks read faster with a few readers in flight; more only compete for the same device.
MAX_READERS = 4


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict: ``good``, ``bad`` (``reason`` says why) or ``missing``."""

    path: str
    size: int
    status: str
    verified: tuple[str, ...] = ()
    reason: str | None = None
    unverifiable: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found: every file's verdict, and the time it took."""

    uri: str
    dest: str
    files: tuple[FileCheck, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.status == "good" for f in self.files)

    @property
    def bytes_checked(self) -> int:
        return sum(f.size for f in self.files if f.status != "missing")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        counts = {
            s: sum(1 for f in self.files if f.status == s) for s in ("good", "bad", "missing")
        }
        return {
            "ok": self.ok,
            "uri": self.uri,
            "dest": self.dest,
            "seconds": round(self.seconds, 3),
            "bytes_checked": self.bytes_checked,
            **{f"files_{status}": n for status, n in counts.items()},
            "files": [
                {k: v for k, v in vars(f).items() if v is not None and v != ()}
                | {"verified": list(f.verified)}
                for f in self.files
            ],
        }


def verify(
    uri: str | Target, dest: str | os.PathLike[str], **kwargs: Unpack[FilterKeywords]
) -> VerifyResult:
    """Check every file ``uri`` names (after the filters) in ``dest`` against the store.

    The keywords (``include``, ``exclude``, ``config``, ``credentials``, ``backend``) are
    :func:`modelpull.pull`'s. Raises :class:`~modelpull.errors.ModelPullError` for a
    failed listing or HEAD; a bad or missing file is a verdict in the result, not an
    error.
    """
    accept("verify", kwargs, FilterKeywords)
    started = time.monotonic()
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():  # else "cannot write" from the state folder
        raise DestinationError(f"DEST is not a folder: {folder}")
    with resolved(uri, kwargs) as target:
        cfg = target.config
        files = select(list_objects(target), kwargs.get("include"), kwargs.get("exclude"))
        policy = RetryPolicy.from_config(cfg)
        with Watchdog.for_config(cfg, started=policy.started) as watch:
            fetcher = Fetcher(target.backend, target.bucket, _ignore, policy, watch)
            check = _checker(StateDir(folder), cfg, fetcher)
            workers = max(1, min(MAX_READERS, cfg.start_concurrency, len(files)))
            with concurrent.futures.ThreadPoolExecutor(workers, "modelpull-verify") as pool:
                verdicts = list(pool.map(check, files))
    return VerifyResult(
        uri=str(target.uri),
        dest=str(folder),
        files=tuple(verdicts),
        seconds=time.monotonic() - started,
    )


def _checker(
    state: StateDir, config: PullConfig, fetcher: Fetcher
) -> Callable[[RemoteFile], FileCheck]:
    def check(remote: RemoteFile) -> FileCheck:
        path, size = remote.path, remote.obj.size
        local = PartFile(state, remote, config)
        st = safefs.lstat(state.dest, local.final)
        if st is None:
            state.forget(path)
            return FileCheck(path, size, "missing", reason="not in DEST")
        if st.st_size != size:
            state.forget(path)
            return FileCheck(path, size, "bad", reason=f"{st.st_size} bytes, the store has {size}")
        local.set_object(fresh := fetcher.head(remote.obj.key))
        layout = (
            fetcher.layout(fresh, checksums=False) if needs_layout(fresh, config.verify) else None
        )
        try:
            checked = local.check_final(layout)
            assert checked is not None
            verified, unverifiable = checked
        except IntegrityError as exc:
            state.forget(path)
            return FileCheck(path, size, "bad", reason=str(exc))
        except ModelPullError as exc:
            return FileCheck(path, size, "bad", reason=str(exc))
        return FileCheck(path, size, "good", tuple(verified), unverifiable=unverifiable)

    return check


def _ignore(event: Event) -> None:
    """Verification reports through its result, not through events."""
