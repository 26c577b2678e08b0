"""The ``modelpull`` command: parse arguments, build a config, call the library, map errors.

Every error reaches the user through :data:`EXIT_CODES`: one line on stderr and a
documented exit status, never a traceback (``-v`` adds the traceback for bug reports).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from modelpull import errors
from modelpull._version import __version__
from modelpull.api import list_objects, pull
from modelpull.compat import tos as tos_compat
from modelpull.config import PullConfig
from modelpull.engine import StopSignal
from modelpull.events import Observer
from modelpull.observe.logs import LOG_FORMATS, LogObserver, setup_logging
from modelpull.observe.progress import ProgressDisplay
from modelpull.results import PullResult
from modelpull.units import format_size, parse_duration, parse_size
from modelpull.uri import parse_uri

__all__ = ["EXIT_CODES", "main"]

log = logging.getLogger("modelpull")

# Most specific first: the first matching class decides. Documented in the README.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.UsageError, 2),
    (errors.NotFoundError, 3),
    (errors.AccessDeniedError, 4),
    (errors.EndpointError, 5),
    (errors.DiskFullError, 6),
    (errors.UnsafePathError, 6),
    (errors.DestinationError, 6),
    (errors.IntegrityError, 7),
    (errors.ObjectChangedError, 8),
    (errors.BackendUnavailableError, 9),
    (errors.StoreError, 10),
    (errors.ClusterError, 11),
    (errors.ModelPullError, 1),
)
EXIT_INTERRUPTED = 128  # plus the signal number: 130 for Ctrl-C, 143 for SIGTERM


def exit_code(exc: BaseException) -> int:
    """The exit status for an exception, from :data:`EXIT_CODES`."""
    if isinstance(exc, errors.InterruptedPullError):
        return EXIT_INTERRUPTED + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED + getattr(exc, "signum", signal.SIGINT)
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"modelpull: error: {message}\n")


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("store connection")
    group.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (env AWS_ENDPOINT_URL)")
    group.add_argument("--region", help="signing region (env AWS_REGION)")
    group.add_argument("--profile", help="AWS profile name (env AWS_PROFILE)")
    group.add_argument(
        "--addressing-style",
        metavar="{auto,path,virtual}",
        help="bucket in host name or path (env MODELPULL_ADDRESSING_STYLE; default auto)",
    )
    group.add_argument("--ca-bundle", metavar="PEM", help="CA certificates to trust")
    group.add_argument(
        "--backend",
        metavar="{boto3,tos-sdk}",
        help="transfer backend (env MODELPULL_BACKEND; default boto3; tos-sdk needs "
        "modelpull[tos])",
    )
    group.add_argument(
        "--no-verify-ssl",
        action="store_true",
        help="do not verify TLS certificates (insecure; prints a warning)",
    )
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    group.add_argument("-q", "--quiet", action="store_true", help="errors only")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or one JSON object per line (default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="modelpull",
        description="Pull model folders from S3-compatible object stores, fast and verified.",
        epilog="Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 access denied or no "
        "credentials, 5 endpoint unreachable, 6 destination (not a folder, not writable, disk "
        "full, unsafe key), 7 integrity, 8 object changed during the pull, 9 optional backend "
        "missing (or torch, for --distributed), 10 other store error, 11 a cluster pull could "
        "not finish together (a lost peer with --no-dist-fallback), 130/143 interrupted "
        "(resume by running it again).",
    )
    parser.add_argument("--version", action="version", version=f"modelpull {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("pull", help="pull an object or a folder into DEST")
    p.add_argument("uri", metavar="URI", help="s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    p.add_argument("dest", metavar="DEST", help="local folder (created if missing)")
    p.add_argument("--include", action="append", metavar="GLOB", help="only paths matching")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="skip paths matching")
    p.add_argument("--concurrency", metavar="N", help="requests in flight (default 16)")
    p.add_argument("--part-size", metavar="SIZE", help="bytes per ranged GET (default 32MiB)")
    p.add_argument("--io-chunk-size", metavar="SIZE", help="read buffer per request (1MiB)")
    p.add_argument("--max-attempts", metavar="N", help="attempts per request (default 5)")
    p.add_argument(
        "--max-bandwidth",
        metavar="SIZE",
        help="cap on the pull's total rate per second, e.g. 200MiB (default: none)",
    )
    p.add_argument(
        "--deadline", metavar="SECONDS", help="stop retrying after this long (default: none)"
    )
    p.add_argument(
        "--verify",
        metavar="{auto,strict,off}",
        help="checksums: auto (all the store offers), strict (fail without one), off",
    )
    p.add_argument("--force", action="store_true", help="fetch files even if complete")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument(
        "--progress-interval",
        metavar="SECONDS",
        default="10",
        help="when stderr is not a terminal, print a status line this often (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument(
        "--metrics-port",
        metavar="[ADDR:]PORT",
        help="serve Prometheus /metrics while the pull runs, on all interfaces unless "
        "ADDR is given (needs the [metrics] extra)",
    )
    p.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write Prometheus metrics to PATH when the pull ends, failed or not "
        "(node_exporter textfile format, atomic; name it *.prom)",
    )
    dist = p.add_argument_group("cluster pull (one process per rank, e.g. under torchrun)")
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="fetch each byte once per cluster and share it between nodes over "
        "torch.distributed (needs modelpull[distributed]; see docs/cluster.md)",
    )
    dist.add_argument(
        "--dist-timeout",
        metavar="SECONDS",
        help="a peer silent this long is lost (env MODELPULL_DIST_TIMEOUT; default 300)",
    )
    dist.add_argument(
        "--no-dist-fallback",
        action="store_true",
        help="fail naming a lost peer instead of fetching its share from the store",
    )
    _connection_options(p)

    ls = commands.add_parser("ls", help="list the files a URI names")
    ls.add_argument("uri", metavar="URI")
    ls.add_argument("--json", action="store_true", help="one JSON object per file")
    _connection_options(ls)

    bench = commands.add_parser(
        "bench", help="download the same objects with each backend, side by side"
    )
    bench.add_argument("uri", metavar="URI")
    bench.add_argument("--backends", default="boto3,tos-sdk", help="default boto3,tos-sdk")
    bench.add_argument("--concurrency", default="16", help="comma-separated, default 16")
    bench.add_argument("--part-size", default="32MiB", help="comma-separated, default 32MiB")
    bench.add_argument("--rounds", default="3", help="interleaved rounds (default 3)")
    bench.add_argument(
        "--output", default="modelpull-bench", metavar="DIR", help="bench.json and bench.png"
    )
    bench.add_argument("--work-dir", metavar="DIR", help="where trials download (default /tmp)")
    _connection_options(bench)

    demo = commands.add_parser(
        "demo", help="pull a generated sample model from a local S3 server (rclone)"
    )
    demo.add_argument("--keep", metavar="DIR", help="pull into DIR and keep it")
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    return parser


def _int_flag(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.UsageError(f"{flag} must be a whole number, not {value!r}") from None


def config_from_args(args: argparse.Namespace) -> PullConfig:
    """Environment first, then flags on top, into the one config object."""
    overrides: dict[str, Any] = {
        "endpoint_url": args.endpoint_url,
        "region": args.region,
        "profile": args.profile,
        "addressing_style": args.addressing_style,
        "ca_bundle": args.ca_bundle,
        "backend": args.backend,
    }
    if args.no_verify_ssl:
        overrides["verify_ssl"] = False
    if args.command == "pull":
        overrides["concurrency"] = _int_flag(args.concurrency, "--concurrency")
        overrides["max_attempts"] = _int_flag(args.max_attempts, "--max-attempts")
        for name in ("part_size", "io_chunk_size", "max_bandwidth"):
            value = getattr(args, name)
            flag = "--" + name.replace("_", "-")
            overrides[name] = parse_size(value, what=flag) if value is not None else None
        if args.deadline is not None:
            overrides["deadline"] = parse_duration(args.deadline, what="--deadline")
        overrides["verify"] = args.verify
        if args.force:
            overrides["force"] = True
    if parse_uri(args.uri).scheme == "tos":
        # TOS_ENDPOINT / TOS_REGION rank above AWS_*; a native endpoint is mapped to S3.
        return tos_compat.config_for_tos(**overrides)
    return PullConfig.from_env(**overrides)


def _warn_insecure(config: PullConfig) -> None:
    if not config.verify_ssl:
        log.warning("TLS certificate verification is OFF: anyone on the path can alter the model")
        # One warning from us instead of one per request from urllib3.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")


def _print_summary(result: PullResult) -> None:
    print(
        f"pulled {result.files_fetched} files ({format_size(result.bytes_downloaded)}) "
        f"in {result.seconds:.1f}s, {result.mb_per_s:.1f} MB/s; "
        f"{result.files_skipped} already complete"
        + (
            f"; retries: {', '.join(f'{k}={v}' for k, v in sorted(result.retries.items()))}"
            if result.retries
            else ""
        )
    )


def _cmd_pull(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _warn_insecure(config)
    interval = parse_duration(args.progress_interval, what="--progress-interval")
    if not args.distributed and (args.dist_timeout is not None or args.no_dist_fallback):
        raise errors.UsageError("--dist-timeout and --no-dist-fallback need --distributed")
    dist_timeout = (
        parse_duration(args.dist_timeout, what="--dist-timeout")
        if args.dist_timeout is not None
        else None
    )
    with ExitStack() as stack:
        observers: list[Observer] = []
        # Event logs only when asked for: at the default level a failed file would
        # repeat the one error line that main() prints.
        if args.verbose or args.log_format == "json":
            observers.append(LogObserver())
        if args.metrics_port is not None or args.metrics_file is not None:
            from modelpull.observe.export import export_metrics  # the [metrics] extra

            metrics = export_metrics(
                backend=config.backend,
                bucket=parse_uri(args.uri).bucket,
                listen=args.metrics_port,
                textfile=args.metrics_file,
            )
            observers.append(stack.enter_context(metrics))
        # JSON logs are for machines: plain status lines would break them up.
        show = not args.no_progress and (args.log_format != "json" or sys.stderr.isatty())
        progress = stack.enter_context(ProgressDisplay(enabled=show, interval=interval))
        result: PullResult
        if args.distributed:
            from modelpull.cluster import pull_distributed

            result = pull_distributed(
                args.uri,
                args.dest,
                include=args.include,
                exclude=args.exclude,
                config=config,
                observers=[progress, *observers],
                timeout=dist_timeout,
                fallback=False if args.no_dist_fallback else None,
            )
        else:
            result = pull(
                args.uri,
                args.dest,
                include=args.include,
                exclude=args.exclude,
                config=config,
                observers=[progress, *observers],
            )
    if args.json:
        print(json.dumps({"ok": True, **result.to_dict()}, sort_keys=True))
    else:
        _print_summary(result)
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _warn_insecure(config)
    for item in list_objects(args.uri, config=config):
        if args.json:
            obj = item.obj
            print(
                json.dumps({"path": item.path, "key": obj.key, "size": obj.size, "etag": obj.etag})
            )
        else:
            print(f"{item.obj.size:>14}  {item.path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from modelpull.demo import run_demo

    status: int = run_demo(
        keep=Path(args.keep) if args.keep else None,
        progress=False if args.no_progress else None,
    )
    return status


def _cmd_bench(args: argparse.Namespace) -> int:
    from modelpull.bench import config_env, markdown, parse_list, parse_sizes, run_bench

    config = config_from_args(args)
    rows = run_bench(
        args.uri,
        backends=parse_list(args.backends, "--backends", str),
        concurrencies=parse_list(args.concurrency, "--concurrency", int),
        part_sizes=parse_sizes(args.part_size),
        rounds=_int_flag(args.rounds, "--rounds") or 0,
        out_dir=Path(args.output),
        work_dir=Path(args.work_dir) if args.work_dir else None,
        env=config_env(config),
    )
    print(markdown(rows), end="")
    return 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise StopSignal(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modelpull`` and ``python -m modelpull``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(
        getattr(args, "verbose", 0),
        getattr(args, "quiet", False),
        getattr(args, "log_format", "text"),
        sys.stderr,
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        commands = {"pull": _cmd_pull, "ls": _cmd_ls, "bench": _cmd_bench, "demo": _cmd_demo}
        handler = commands[args.command]
        return handler(args)
    except (errors.ModelPullError, KeyboardInterrupt) as exc:
        code = exit_code(exc)
        message = str(exc) if str(exc) else type(exc).__name__
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, errors.ModelPullError):
            message = "interrupted; run the same command again to resume"
        print(f"modelpull: error: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps(_error_json(exc), sort_keys=True))
        log.debug("details", exc_info=exc)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error_json(exc: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for name in ("bucket", "key", "status", "code", "request_id", "path"):
        value = getattr(exc, name, None)
        if value is not None:
            info[name] = value
    return {"ok": False, "exit_code": exit_code(exc), "error": info}
