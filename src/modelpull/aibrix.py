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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
from modelpull.events import Observer
from modelpull.files import dest_error
from modelpull.observe.progress import ProgressDisplay
from modelpull.plan import select
from modelpull.results import PullResult
from modelpull.units import format_size
from modelpull.uri import parse_uri

__all__ = ["DownloadReport", "build_parser", "download_model", "main"]

log = logging.getLogger("modelpull")


class _Parser(Parser):
    tool = "modelpull.aibrix"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, not {text!r}")
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


@contextlib.contextmanager
def _aibrix_locks(cache: AibrixCache, paths: Sequence[str]) -> Iterator[None]:
    """AIBrix's per-file locks, held while the files are pulled, as AIBrix holds them.

    AIBrix reports a model as "downloading" while one of these is held by someone.
    """
    with contextlib.ExitStack() as stack:
        for path in paths:
            lock = FileLock(cache.checked_lock_path(path))
            try:
                stack.enter_context(lock)
            except OSError as exc:  # ELOOP: a link planted after the check
                raise dest_error(exc, cache.lock_path(path), key=path) from exc
        yield


def download_model(
    model_uri: str,
    local_dir: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    download_extra_config: Mapping[str, Any] | None = None,
    enable_progress_bar: bool = False,
    *,
    environ: Mapping[str, str] | None = None,
    observers: Sequence[Observer] = (),
) -> DownloadReport:
    """AIBrix's ``download_model``, on modelpull's engine; returns the model's folder and result.

    ``environ`` defaults to :data:`os.environ`, read now. Raises
    :class:`~modelpull.errors.ModelPullError` subclasses only.
    """
    env = os.environ if environ is None else environ
    settings = settings_from_env(env, download_extra_config)
    try:
        uri = parse_uri(model_uri)
    except errors.InvalidURIError as exc:
        raise errors.InvalidURIError(
            f"{exc}; modelpull.aibrix handles s3:// and tos:// URIs - keep aibrix.downloader "
            "for Hugging Face models"
        ) from None
    dest = model_dir(local_dir or settings.local_dir, model_name or infer_model_name(model_uri))
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
        with (
            _aibrix_locks(cache, [f.path for f in todo]),
            ProgressDisplay(enabled=enable_progress_bar) as progress,
        ):
            result = pull_files(target, todo, dest, observers=[*observers, progress])
            # Written while the locks are held, as AIBrix does: "downloaded" is then final.
            quoted = cache.etag_quoted(settings.tos_version)
            etags = {f.path: f.obj.etag for f in todo}
            for outcome in result.files:
                if outcome.status in ("fetched", "skipped") and outcome.path in etags:
                    cache.mark_complete(outcome.path, etags[outcome.path], quoted=quoted)
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
    handler.setFormatter(logging.Formatter("modelpull.aibrix: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING)
    log.propagate = False


def _download(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with warnings.catch_warnings():
        # Each setting modelpull cannot honour is said once, as a log line.
        warnings.simplefilter("default", CompatWarning)
        warnings.showwarning = _show_warning
        report = download_model(
            args.model_uri,
            args.local_dir,
            args.model_name,
            args.download_extra_config,
            args.enable_progress_bar,
        )
    result = report.result
    print(
        f"downloaded {result.uri} to {report.path}: {result.files_fetched} files fetched "
        f"({format_size(result.bytes_downloaded)}), "
        f"{result.files_skipped + report.already_present} already present, "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m modelpull.aibrix``; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    return run_command(_Parser.tool, lambda: _download(args))


if __name__ == "__main__":
    sys.exit(main())
