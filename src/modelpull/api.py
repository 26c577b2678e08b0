"""The Python API: :func:`pull`, :func:`pull_files` and :func:`list_objects`.

Each takes a URI (resolved here, see :mod:`modelpull.resolve`) or a
:class:`~modelpull.resolve.Target` resolved by the caller, and a ready backend when the
caller has one (``backend=``: used as it is, never closed here). ``progress=True`` draws
the CLI's progress display on stderr.

A pull runs under one :class:`~modelpull.watch.Watchdog` from its first request: the
listing's requests too are abandoned when they stall and bounded by the deadline, and
the listing runs beside the calling thread, which a signal can always reach.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modelpull.dest import check_dest, placement
from modelpull.errors import UsageError
from modelpull.events import Observer, PullFinished, PullStarted
from modelpull.files import make_folder
from modelpull.keywords import PullKeywords, ReportKeywords, SelectKeywords, SourceKeywords, accept
from modelpull.objects import RemoteFile
from modelpull.observe.progress import ProgressDisplay
from modelpull.plan import check_files, choose, list_remote
from modelpull.resolve import Target, resolved
from modelpull.results import FileOutcome, PullResult
from modelpull.retry import OnRetry, RetryPolicy, retry_events
from modelpull.tally import Tally, dispatcher, report
from modelpull.transfer import transfer
from modelpull.watch import Watchdog

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from typing_extensions import Unpack

    from modelpull.cluster.options import ClusterOptions

__all__ = ["list_objects", "pull", "pull_files", "select_files"]

# What a pull fetches and the folder it runs in, chosen once its retry policy, watchdog
# and reporting are in place.
_Choose = Callable[[RetryPolicy, OnRetry, Watchdog], tuple[Path, Sequence[RemoteFile]]]


def _with_metrics(
    observers: Sequence[Observer], registry: CollectorRegistry | None, target: Target
) -> list[Observer]:
    if registry is None:
        return list(observers)
    from modelpull.observe.metrics import MetricsObserver  # the [metrics] extra

    metrics = MetricsObserver(registry, backend=target.backend_name, bucket=target.bucket)
    return [*observers, metrics]


def _run(
    target: Target,
    dest: str | os.PathLike[str],
    reporting: ReportKeywords,
    plan: _Choose,
    *,
    progress: bool = False,
    file_ok: bool = False,
) -> PullResult:
    """One pull: choose the files, fetch them, report; ``PullFinished`` whatever happens."""
    check_dest(Path(dest), file_ok=file_ok)
    observers = reporting.get("observers", ())
    with contextlib.ExitStack() as stack:
        if progress:
            observers = [stack.enter_context(ProgressDisplay()), *observers]
        return _pull(target, Path(dest), observers, reporting.get("registry"), plan)


def _pull(
    target: Target,
    dest: Path,
    observers: Sequence[Observer],
    registry: CollectorRegistry | None,
    plan: _Choose,
) -> PullResult:
    started = time.monotonic()
    folder = dest
    tally = Tally()
    emit = dispatcher([tally, *_with_metrics(observers, registry, target)])
    policy = RetryPolicy.from_config(target.config)
    watch = Watchdog.for_config(target.config, started=policy.started).start()
    outcomes: list[FileOutcome] = []
    ok = False
    try:
        folder, files = watch.wait_for(
            lambda: plan(policy, retry_events(emit), watch), "modelpull-list"
        )
        make_folder(folder)
        emit(
            PullStarted(
                backend=target.backend.name,
                bucket=target.bucket,
                files=len(files),
                bytes=sum(f.obj.size for f in files),
            )
        )
        outcomes = transfer(target, files, folder, emit, retry=policy, watch=watch)
        ok = True
    finally:
        watch.close()
        seconds = time.monotonic() - started
        fetched = sum(1 for o in outcomes if o.status == "fetched")
        emit(PullFinished(files=fetched, bytes=tally.bytes, seconds=seconds, ok=ok))
    return PullResult(
        uri=str(target.uri),
        dest=str(dest),
        backend=target.backend_name,
        config=target.config.describe(),
        **report(tally, outcomes, seconds),
    )


def pull(
    uri: str | Target,
    dest: str | os.PathLike[str],
    *,
    distributed: bool | ClusterOptions = False,
    progress: bool = False,
    **kwargs: Unpack[PullKeywords],
) -> PullResult:
    """Pull the object or folder at ``uri`` into the folder ``dest``.

    ``uri`` is a URI or a :class:`~modelpull.resolve.Target` (then leave ``config``,
    ``credentials`` and ``backend`` out: the target holds them); a glob in its last
    segment (``s3://b/m/*.json``) selects files as ``include`` does.

    Keywords, all optional (this docstring is their reference; the other functions take
    some of them, see :mod:`modelpull.keywords`):

    - ``include``/``exclude`` (sequences of globs, default none) match the path relative
      to the URI's folder: ``include`` is an allow-list; ``exclude`` wins.
    - ``preset`` (``"vllm"``, see :mod:`modelpull.presets`; default none) keeps what a
      serving engine reads. Filters that keep none of the listed files raise
      :class:`~modelpull.errors.NothingSelectedError` unless ``config.allow_empty``.
    - ``config`` (a :class:`PullConfig`) defaults to :meth:`PullConfig.from_env` (read
      now); the fields a given config leaves out take the environment too.
    - ``credentials`` (default: for ``tos://``, ``TOS_ACCESS_KEY``/``TOS_SECRET_KEY``;
      else boto3's chain).
    - ``backend`` (default: one made from the config, closed at the end) is used as it
      is and left open.
    - ``observers`` receive :mod:`modelpull.events` from worker threads (default none).
    - ``registry`` (default: none) records the pull's Prometheus metrics there, adding
      to those of earlier pulls on it (needs the ``[metrics]`` extra; see
      ``docs/metrics.md``).

    A URI naming exactly one object and a ``dest`` naming a file (no trailing slash, not
    an existing folder) write that file, as ``aws s3 cp`` does; otherwise ``dest`` is a
    folder. Files already complete in ``dest`` (same ETag and size as recorded) are
    skipped unless ``config.force``. ``progress=True`` draws the CLI's progress display
    on stderr (bars on a terminal, a status line every 10 s elsewhere); default off.
    ``distributed=True`` runs this call as one rank of a job started by torchrun (or any
    launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``):
    each byte is fetched once per cluster and shared between nodes; see
    :func:`modelpull.cluster.pull_distributed` (the ``[distributed]`` extra). A
    :class:`~modelpull.cluster.ClusterOptions` there instead of ``True`` sets its
    timeout and fallback (default: read from the environment).
    Raises :class:`~modelpull.errors.ModelPullError` subclasses only.
    """
    accept("pull", kwargs, PullKeywords)
    with resolved(uri, kwargs) as target, contextlib.ExitStack() as stack:
        if distributed is not False:
            from modelpull.cluster import pull_distributed

            if kwargs.get("preset") is not None:
                raise UsageError(
                    "--preset is not supported with --distributed yet: use --include/--exclude"
                )
            observers = kwargs.get("observers", ())
            if progress:
                observers = [stack.enter_context(ProgressDisplay()), *observers]
            # DEST is checked there, once expanded ({rank}) and after joining, so that the
            # other ranks hear of a bad one at once instead of timing out.
            return pull_distributed(
                target,
                dest,
                include=kwargs.get("include"),
                exclude=kwargs.get("exclude"),
                observers=_with_metrics(observers, kwargs.get("registry"), target),
                options=None if distributed is True else distributed,
            )

        def listing(
            policy: RetryPolicy, on_retry: OnRetry, watch: Watchdog
        ) -> tuple[Path, list[RemoteFile]]:
            chosen = select_files(_list(target, policy, watch, on_retry), target, kwargs)
            # Filters match the store's paths; a file DEST renames what they kept.
            return placement(target.uri, dest, chosen)

        return _run(
            target, dest, kwargs, listing, progress=progress, file_ok=not target.uri.is_folder
        )


def pull_files(
    uri: str | Target,
    files: Sequence[RemoteFile],
    dest: str | os.PathLike[str],
    *,
    progress: bool = False,
    **kwargs: Unpack[ReportKeywords],
) -> PullResult:
    """Pull ``files``, already listed under ``uri``, into the folder ``dest``: :func:`pull`
    without its listing.

    ``files`` come from :func:`list_objects` (the same URI), kept or dropped as the
    caller likes; each lands at its ``path`` under ``dest``. Their paths are checked
    again (relative, normalised, no file inside another), since a caller may have made
    them. ``progress`` and the keywords (``config``, ``credentials``, ``backend``,
    ``observers``, ``registry``) are :func:`pull`'s. Files already complete are skipped
    unless ``config.force``, as in :func:`pull`.
    """
    accept("pull_files", kwargs, ReportKeywords)
    chosen = check_files(files)
    with resolved(uri, kwargs) as target:
        folder = Path(dest)
        return _run(
            target,
            dest,
            kwargs,
            lambda policy, on_retry, watch: (folder, chosen),
            progress=progress,
        )


def list_objects(uri: str | Target, **kwargs: Unpack[SourceKeywords]) -> list[RemoteFile]:
    """The files :func:`pull` would consider for ``uri``, sorted by relative path; for a
    wildcard URI, those its glob matches.

    Transient failures are retried, stalls abandoned and the deadline kept as a pull's
    listing's are. The keywords (``config``, ``credentials``, ``backend``) are
    :func:`pull`'s.
    """
    accept("list_objects", kwargs, SourceKeywords)
    with resolved(uri, kwargs) as target:
        policy = RetryPolicy.from_config(target.config)
        with Watchdog.for_config(target.config, started=policy.started) as watch:
            listed = watch.wait_for(lambda: _list(target, policy, watch), "modelpull-list")
        return select_files(listed, target, {})


def select_files(
    listed: Sequence[RemoteFile], target: Target, filters: SelectKeywords
) -> list[RemoteFile]:
    """What a pull of ``target`` keeps of its listing: :func:`modelpull.plan.choose` with
    the ``include``, ``exclude`` and ``preset`` of a call's keywords."""
    return choose(
        listed,
        target.uri,
        filters.get("include"),
        filters.get("exclude"),
        preset=filters.get("preset"),
        allow_empty=target.config.allow_empty,
    )


def _list(
    target: Target, policy: RetryPolicy, watch: Watchdog, on_retry: OnRetry | None = None
) -> list[RemoteFile]:
    """The listing of ``target``'s URI, each attempt a flight of ``watch``."""

    def attempt() -> list[RemoteFile]:
        with watch.request("", "LIST"):
            return list_remote(target.backend, target.uri)

    return policy.call(attempt, on_retry=on_retry, stop=watch.halted)
