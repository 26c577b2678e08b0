"""``python -m modelpull.aibrix``: a drop-in for AIBrix's ``python -m aibrix.downloader``.

It takes the same arguments (``--model-uri``, ``--local-dir``, ``--model-name``,
``--download-extra-config``, ``--enable-progress-bar``) and the same ``DOWNLOADER_*``,
``TOS_*`` and ``AWS_*`` variables, and leaves the same files (see
:mod:`modelpull.compat.aibrix`), so a deployment switches by changing the module name in
one command, and switches back the same way: files either tool completed are skipped by
the other. Only ``s3://`` and ``tos://`` URIs are handled; keep AIBrix's downloader for
Hugging Face models.

What differs from AIBrix, on purpose: files are written to a temp file and renamed only
once verified; every part of every file shares one pool of ``DOWNLOADER_NUM_THREADS``
requests (AIBrix fetches one file at a time); an interrupted pull resumes; errors end
the process with modelpull's exit codes instead of a traceback.

In-process, :func:`download_model` is AIBrix's ``aibrix.downloader.download_model``
(same arguments, returns the model's folder as a :class:`~pathlib.Path`);
:func:`download_with_report` returns what the pull did as well. As a program
(``python -m modelpull.aibrix`` or the ``modelpull_aibrix_download`` script, AIBrix's
``aibrix_download``), its only stdout line is the model's folder, as AIBrix's is; the
summary goes to stderr. AIBrix's ``.metadata`` file of each file is written as that file
completes and its lock released, so a pull that is interrupted leaves AIBrix-readable
state for every file it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from filelock import FileLock

from modelpull import errors
from modelpull.api import list_objects, pull_files
from modelpull.cli.exits import Parser, run_command
from modelpull.compat import CompatWarning
from modelpull.compat.aibrix import (
    AibrixCache,
    infer_model_name,
    model_dir,
    settings_from_env,
    suffix_globs,
    to_pull,
)
from modelpull.events import Event, FileDone, FileSkipped, Observer
from modelpull.files import dest_error
from modelpull.observe.logs import TextFormatter
from modelpull.observe.progress import ProgressDisplay
from modelpull.plan import select
from modelpull.results import PullResult
from modelpull.state import StateDir
from modelpull.units import format_size
from modelpull.uri import parse_uri

__all__ = ["DownloadReport", "build_parser", "download_model", "download_with_report", "main"]

log = logging.getLogger("modelpull")


class _Parser(Parser):
    tool = "modelpull.aibrix"


def _json_object(text: str) -> dict[str, Any]:
    # The text is never echoed: it holds the secret key ("sk") when it holds one.
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise argparse.ArgumentTypeError("invalid JSON (nested too deep)") from None
    except ValueError:  # an integer of over 4,300 digits
        raise argparse.ArgumentTypeError("invalid JSON (a number too long)") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise argparse.ArgumentTypeError(f"expected a JSON object, not a {kind}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """AIBrix's downloader arguments, with the same names, defaults and meanings."""
    parser = _Parser(
        prog="python -m modelpull.aibrix",
        description="Download a model from S3 or TOS as AIBrix's downloader does, with "
        "modelpull's engine.",
    )
    parser.add_argument(
        "--model-uri", required=True, help="s3://BUCKET/PREFIX or tos://BUCKET/PREFIX"
    )
    parser.add_argument(
        "--local-dir",
        default=None,
        help="base folder (default: DOWNLOADER_LOCAL_DIR, else /tmp/aibrix/models/)",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="sub-folder of the base folder (default: the URI's last segment)",
    )
    parser.add_argument(
        "--enable-progress-bar", action="store_true", default=False, help="show progress"
    )
    parser.add_argument(
        "--download-extra-config",
        type=_json_object,
        default=None,
        help="JSON: ak, sk, endpoint, region, num_threads, part_chunksize, ...",
    )
    return parser


@dataclass(frozen=True)
class DownloadReport:
    """Where the model landed, what the pull did, and how many files AIBrix had completed."""

    path: Path
    result: PullResult
    already_present: int


class _AibrixState:
    """AIBrix's per-file locks and ``.metadata`` files, kept as the pull goes.

    Every file to fetch is locked before the pull starts (AIBrix reports a model as
    "downloading" while one of its locks is held); as each file completes, an observer
    writes its metadata (the ETag modelpull recorded for the bytes it placed) and
    releases its lock, so an interrupted pull leaves AIBrix-readable state for every file
    it finished.
    """

    def __init__(self, cache: AibrixCache, dest: Path, *, quoted: bool) -> None:
        self._cache = cache
        self._state = StateDir(dest)
        self._quoted = quoted
        self._locks: dict[str, FileLock] = {}
        self._marked: set[str] = set()
        self._mutex = threading.Lock()

    def lock(self, paths: Sequence[str]) -> None:
        for path in paths:
            # Not thread-local: a worker thread releases the lock the main thread took.
            lock = FileLock(self._cache.checked_lock_path(path), thread_local=False)
            try:
                lock.acquire()
            except OSError as exc:  # ELOOP: a link planted after the check
                raise dest_error(exc, self._cache.lock_path(path), key=path) from exc
            self._locks[path] = lock

    def release_all(self) -> None:
        with self._mutex:
            locks, self._locks = list(self._locks.values()), {}
        for lock in locks:
            lock.release()

    def mark(self, path: str, etag: str | None = None) -> None:
        """Write ``path``'s metadata (``etag``, else the one modelpull recorded), once."""
        with self._mutex:
            if path in self._marked:
                return
            lock = self._locks.pop(path, None)
        if etag is None:
            record = self._state.read_record(path)
            etag = record.etag if record is not None else None
        if etag:
            self._cache.mark_complete(path, etag, quoted=self._quoted)
            with self._mutex:
                self._marked.add(path)
        if lock is not None:
            lock.release()

    def __call__(self, event: Event) -> None:
        if isinstance(event, FileDone | FileSkipped):
            self.mark(event.path)


def download_model(
    model_uri: str,
    local_path: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    download_extra_config: Mapping[str, Any] | None = None,
    enable_progress_bar: bool = False,
    *,
    environ: Mapping[str, str] | None = None,
    observers: Sequence[Observer] = (),
) -> Path:
    """AIBrix's ``aibrix.downloader.download_model``, on modelpull's engine.

    Same arguments, same result: the model's folder, ``<local_path>/<model_name>``.
    :func:`download_with_report` returns what the pull did as well. ``environ`` defaults
    to :data:`os.environ`, read now. Raises :class:`~modelpull.errors.ModelPullError`
    subclasses only.
    """
    return download_with_report(
        model_uri,
        local_path,
        model_name,
        download_extra_config,
        enable_progress_bar,
        environ=environ,
        observers=observers,
    ).path


def download_with_report(
    model_uri: str,
    local_path: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    download_extra_config: Mapping[str, Any] | None = None,
    enable_progress_bar: bool = False,
    *,
    environ: Mapping[str, str] | None = None,
    observers: Sequence[Observer] = (),
) -> DownloadReport:
    """:func:`download_model`, returning the model's folder with the pull's result."""
    env = os.environ if environ is None else environ
    settings = settings_from_env(env, download_extra_config)
    try:
        uri = parse_uri(model_uri)
    except errors.InvalidURIError as exc:
        raise errors.InvalidURIError(
            f"{exc}; modelpull.aibrix handles s3:// and tos:// URIs - keep aibrix.downloader "
            "for Hugging Face models"
        ) from None
    dest = model_dir(local_path or settings.local_dir, model_name or infer_model_name(model_uri))
    plan = to_pull(settings, uri, env)
    with plan.target as target:
        files = list_objects(target)
        # AIBrix filters by suffix only when the URI is a folder; a file URI is pulled as is.
        single = not uri.is_folder and len(files) == 1 and files[0].obj.key == uri.key
        include = (
            suffix_globs(settings.allow_file_suffix)
            if settings.allow_file_suffix is not None and not single
            else None
        )
        selected = select(files, include)
        cache = AibrixCache(dest, uri.scheme)
        done = (
            set()
            if plan.force
            else {f.path for f in selected if cache.is_complete(f.path, f.obj.size, f.obj.etag)}
        )
        todo = [f for f in selected if f.path not in done]
        aibrix = _AibrixState(cache, dest, quoted=cache.etag_quoted(settings.tos_version))
        try:
            aibrix.lock([f.path for f in todo])
            with ProgressDisplay(enabled=enable_progress_bar) as progress:
                result = pull_files(target, todo, dest, observers=[*observers, progress, aibrix])
            # Each file was marked as it completed; this catches any an observer missed.
            etags = {f.path: f.obj.etag for f in todo}
            for outcome in result.files:
                if outcome.status in ("fetched", "skipped") and outcome.path in etags:
                    aibrix.mark(outcome.path)
        finally:
            aibrix.release_all()
    return DownloadReport(path=dest, result=result, already_present=len(done))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    log.warning("%s", message)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter("modelpull.aibrix: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING)
    log.propagate = False


def _download(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with warnings.catch_warnings():
        # Each setting modelpull cannot honour is said once, as a log line.
        warnings.simplefilter("default", CompatWarning)
        warnings.showwarning = _show_warning
        report = download_with_report(
            args.model_uri,
            args.local_dir,
            args.model_name,
            args.download_extra_config,
            args.enable_progress_bar,
        )
    result = report.result
    print(
        f"modelpull.aibrix: downloaded {result.uri} to {report.path}: "
        f"{result.files_fetched} files fetched ({format_size(result.bytes_downloaded)}), "
        f"{result.files_skipped + report.already_present} already present, "
        f"in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    # The only stdout line, as AIBrix prints it: scripts read the model's folder here.
    print(report.path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m modelpull.aibrix`` and ``modelpull_aibrix_download``;
    returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    return run_command(_Parser.tool, lambda: _download(args))


if __name__ == "__main__":
    sys.exit(main())
