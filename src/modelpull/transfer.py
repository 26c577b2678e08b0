"""The one way from already-listed files into the engine, for every kind of pull.

:func:`modelpull.pull`, :func:`modelpull.pull_files` and the cluster pull all end in
:func:`transfer`; what differs between them (listing, reports, rounds) stays with them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from modelpull.config import PullConfig
from modelpull.engine import Engine
from modelpull.events import Event
from modelpull.files import make_folder
from modelpull.objects import RemoteFile
from modelpull.plan import check_dest_paths
from modelpull.resolve import Target
from modelpull.results import FileOutcome
from modelpull.retry import RetryPolicy
from modelpull.watch import Watchdog

__all__ = ["transfer"]


def transfer(
    target: Target,
    files: Sequence[RemoteFile],
    dest: Path,
    emit: Callable[[Event], None],
    *,
    config: PullConfig | None = None,
    retry: RetryPolicy | None = None,
    only: Mapping[str, Collection[int]] | None = None,
    watch: Watchdog | None = None,
) -> list[FileOutcome]:
    """Fetch ``files`` of ``target``'s bucket into ``dest`` (created when missing); a
    path ``dest`` cannot hold, or that passes a link there, is refused before anything is
    fetched.

    ``config`` replaces the target's for this run (the cluster pull pins the part size,
    so part indices mean the same on every node); ``retry`` defaults to the config's
    policy; ``only`` is :meth:`modelpull.engine.Engine.run`'s. ``watch`` is the pull's
    running watchdog (default: one of the engine's own, for this run). Events go to
    ``emit`` alone: reports (``PullStarted``, ``PullFinished``, results) are the caller's.
    """
    make_folder(dest)
    check_dest_paths(files, dest)
    engine = Engine(
        target.backend,
        config if config is not None else target.config,
        emit,
        retry=retry,
        watch=watch,
    )
    return engine.run(target.bucket, files, dest, only=only)
