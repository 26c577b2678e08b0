"""What each subcommand does once its arguments are parsed: resolve, call the library, print.

Each store command resolves its URI once (:func:`modelpull.resolve.resolve`, with the
flags as overrides) and hands the :class:`~modelpull.resolve.Target` on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from modelpull import errors
from modelpull.api import list_objects, pull
from modelpull.cli.exits import code_of
from modelpull.cli.options import config_overrides
from modelpull.config import PullConfig
from modelpull.events import Observer
from modelpull.observe.logs import LogObserver
from modelpull.observe.progress import ProgressDisplay
from modelpull.preview import PullPreview, preview
from modelpull.resolve import Target, resolve
from modelpull.results import PullResult
from modelpull.text import shown
from modelpull.units import format_size, parse_duration

if TYPE_CHECKING:
    from modelpull.cluster.options import ClusterOptions

__all__ = ["COMMANDS"]

log = logging.getLogger("modelpull")


def _target(args: argparse.Namespace) -> Target:
    return resolve(args.uri, overrides=config_overrides(args))


def _warn_insecure(config: PullConfig) -> None:
    if not config.verify_ssl:
        log.warning("TLS certificate verification is OFF: anyone on the path can alter the model")
        # One warning from us instead of one per request from urllib3.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")


def plural(n: int, word: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_summary(result: PullResult) -> None:
    print(
        f"pulled {plural(result.files_fetched, 'file')} "
        f"({format_size(result.bytes_downloaded)}) "
        f"in {result.seconds:.1f}s, {result.mb_per_s:.1f} MB/s; "
        f"{result.files_skipped} already complete"
        + (
            f"; retries: {', '.join(f'{k}={v}' for k, v in sorted(result.retries.items()))}"
            if result.retries
            else ""
        )
    )


def _cluster_options(args: argparse.Namespace) -> ClusterOptions | None:
    """``--distributed``'s options, or ``None`` without it."""
    if not args.distributed:
        if args.dist_timeout is not None or args.no_dist_fallback:
            raise errors.UsageError("--dist-timeout and --no-dist-fallback need --distributed")
        return None
    from modelpull.cluster.options import ClusterOptions  # the cluster's modules on demand

    timeout = args.dist_timeout
    return ClusterOptions.from_env(
        timeout=parse_duration(timeout, what="--dist-timeout") if timeout is not None else None,
        fallback=False if args.no_dist_fallback else None,
    )


_Report = TypeVar("_Report", PullResult, PullPreview)


def _report(args: argparse.Namespace, report: _Report, text: Callable[[_Report], None]) -> int:
    """Print ``report``: one JSON object with ``--json``, else ``text``'s lines."""
    if args.json:
        print(json.dumps({"ok": True, **report.to_dict()}, sort_keys=True))
    else:
        text(report)
    return 0


_DOING = {"fetch": "would fetch", "skip": "would skip", "check": "would check"}


def _print_preview(plan: PullPreview) -> None:
    """One line per file, then the totals; sizes human, keys escaped."""
    for f in plan.files:
        note = ""
        if f.action == "skip":
            note = "  (complete)"
        elif f.action == "check":
            note = "  (already there at this size, no modelpull record)"
        elif f.resumable_bytes:
            note = f"  ({format_size(f.resumable_bytes)} already on disk, kept)"
        print(f"{_DOING[f.action]:<12} {format_size(f.size):>11}  {shown(f.path)}{note}")
    fetch, skip, check = plan.of("fetch"), plan.of("skip"), plan.of("check")
    print(
        f"dry run: would fetch {plural(len(fetch), 'file')} ({format_size(plan.size_of('fetch'))})"
        f", skip {plural(len(skip), 'file')} ({format_size(plan.size_of('skip'))}), "
        f"would check {plural(len(check), 'existing file')} "
        f"({format_size(plan.size_of('check'))}); nothing was written"
    )


def _cmd_dry_run(args: argparse.Namespace) -> int:
    if args.distributed:
        raise errors.UsageError("--dry-run does not work with --distributed")
    with _target(args) as target:
        _warn_insecure(target.config)
        plan = preview(
            target, args.dest, include=args.include, exclude=args.exclude, preset=args.preset
        )
    return _report(args, plan, _print_preview)


def _cmd_pull(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _cmd_dry_run(args)
    with ExitStack() as stack:
        target = stack.enter_context(_target(args))
        _warn_insecure(target.config)
        interval = parse_duration(args.progress_interval, what="--progress-interval")
        cluster = _cluster_options(args)
        observers: list[Observer] = []
        # Event logs only when asked for: at the default level a failed file would
        # repeat the one error line that main() prints.
        if args.verbose or args.log_format == "json":
            observers.append(LogObserver())
        if args.metrics_port is not None or args.metrics_file is not None:
            from modelpull.observe.export import export_metrics  # the [metrics] extra

            metrics = export_metrics(
                backend=target.backend_name,
                bucket=target.bucket,
                listen=args.metrics_port,
                textfile=args.metrics_file,
            )
            observers.append(stack.enter_context(metrics))
        # JSON logs are for machines: plain status lines would break them up.
        show = not args.no_progress and (args.log_format != "json" or sys.stderr.isatty())
        progress = stack.enter_context(ProgressDisplay(enabled=show, interval=interval))
        result = pull(
            target,
            args.dest,
            include=args.include,
            exclude=args.exclude,
            preset=args.preset,
            observers=[progress, *observers],
            distributed=cluster or False,
        )
    return _report(args, result, _print_summary)


def _cmd_ls(args: argparse.Namespace) -> int:
    with _target(args) as target:
        _warn_insecure(target.config)
        items = list_objects(target)
    size = str if args.bytes else format_size
    for item in items:
        obj = item.obj
        if args.json:
            print(
                json.dumps({"path": item.path, "key": obj.key, "size": obj.size, "etag": obj.etag})
            )
        else:
            print(f"{size(obj.size):>14}  {shown(item.path)}")
    if not args.json:
        total = sum(item.obj.size for item in items)
        print(f"{size(total):>14}  total, {plural(len(items), 'file')}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from modelpull.demo import run_demo

    status: int = run_demo(
        keep=Path(args.keep) if args.keep else None,
        progress=False if args.no_progress else None,
    )
    return status


def _whole_number(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise errors.UsageError(f"{flag} must be a whole number, not {value!r}") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    from modelpull.bench import (
        DEFAULT_ARMS,
        available_arms,
        check_dirs,
        config_env,
        markdown,
        parse_list,
        parse_sizes,
        run_bench,
    )

    # Each trial is a pull of its own, in a child process: only the settings travel.
    with _target(args) as target:
        env = config_env(target.config)
    rounds = _whole_number(args.rounds, "--rounds")
    if rounds < 1:
        raise errors.UsageError("--rounds must be at least 1")
    concurrencies = parse_list(args.concurrency, "--concurrency", int)
    part_sizes = parse_sizes(args.part_size)
    output = Path(args.output)
    work_dir = Path(args.work_dir) if args.work_dir else None
    check_dirs(output, work_dir)
    named = args.backends is not None
    arms = parse_list(args.backends, "--backends", str) if named else list(DEFAULT_ARMS)
    backends = available_arms(
        args.uri, arms, config_overrides(args), optional=() if named else arms[1:]
    )
    rows = run_bench(
        args.uri,
        backends=backends,
        concurrencies=concurrencies,
        part_sizes=part_sizes,
        rounds=rounds,
        out_dir=output,
        work_dir=work_dir,
        env=env,
    )
    print(markdown(rows), end="")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from modelpull.verify import verify

    with _target(args) as target:
        _warn_insecure(target.config)
        result = verify(target, args.dest, include=args.include, exclude=args.exclude)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        for f in result.files:
            if f.status != "good":
                print(f"{f.status}: {f.path}" + (f" ({f.reason})" if f.reason else ""))
        report = result.to_dict()
        print(
            f"verified {len(result.files)} files ({format_size(result.bytes_checked)}) in "
            f"{result.seconds:.1f}s: {report['files_good']} good, {report['files_bad']} bad, "
            f"{report['files_missing']} missing"
        )
    if not result.ok:
        # The same exit status as a pull whose bytes failed their checksums.
        return code_of(errors.IntegrityError)
    return 0


COMMANDS = {
    "pull": _cmd_pull,
    "ls": _cmd_ls,
    "bench": _cmd_bench,
    "demo": _cmd_demo,
    "verify": _cmd_verify,
}
