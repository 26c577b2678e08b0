"""The ``modelpull`` parser and entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelpull._version import __version__
from modelpull.cli.commands import COMMANDS
from modelpull.cli.exits import Parser, exit_codes_epilog, run_command
from modelpull.cli.options import add_config_options, add_log_options
from modelpull.observe.logs import setup_logging

__all__ = ["build_parser", "main"]


def _pull_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", metavar="URI", help="s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    p.add_argument("dest", metavar="DEST", help="local folder (created if missing)")
    p.add_argument("--include", action="append", metavar="GLOB", help="only paths matching")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="skip paths matching")
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


def _bench_parser(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("uri", metavar="URI")
    bench.add_argument("--backends", default="boto3,tos-sdk", help="default boto3,tos-sdk")
    bench.add_argument("--concurrency", default="16", help="comma-separated, default 16")
    bench.add_argument("--part-size", default="32MiB", help="comma-separated, default 32MiB")
    bench.add_argument("--rounds", default="3", help="interleaved rounds (default 3)")
    bench.add_argument(
        "--output", default="modelpull-bench", metavar="DIR", help="bench.json and bench.png"
    )
    bench.add_argument("--work-dir", metavar="DIR", help="where trials download (default /tmp)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``modelpull`` and its subcommands."""
    parser = Parser(
        prog="modelpull",
        description="Pull model folders from S3-compatible object stores, fast and verified.",
        epilog=exit_codes_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"modelpull {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    p = commands.add_parser("pull", help="pull an object or a folder into DEST")
    _pull_parser(p)
    ls = commands.add_parser("ls", help="list the files a URI names")
    ls.add_argument("uri", metavar="URI")
    ls.add_argument("--json", action="store_true", help="one JSON object per file")
    bench = commands.add_parser(
        "bench", help="download the same objects with each backend, side by side"
    )
    _bench_parser(bench)
    check = commands.add_parser(
        "verify",
        help="re-read the files in DEST and check them against the store's checksums",
        description="Check each file URI names (after the filters) in DEST against the "
        "store: missing, wrong size, or failing a checksum the store publishes is bad. "
        "Prints one line per bad or missing file and a summary; exit 7 when any is bad. "
        "Records of good files are refreshed, those of bad files dropped (the next pull "
        "fetches them). Reads every local byte; downloads none.",
    )
    check.add_argument("uri", metavar="URI", help="s3://BUCKET/PREFIX/ (or tos://)")
    check.add_argument("dest", metavar="DEST", help="the folder a pull of URI filled")
    check.add_argument("--include", action="append", metavar="GLOB", help="only paths matching")
    check.add_argument("--exclude", action="append", metavar="GLOB", help="skip paths matching")
    check.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    for name, sub in (("pull", p), ("ls", ls), ("bench", bench), ("verify", check)):
        add_config_options(sub, name)
        add_log_options(sub)

    demo = commands.add_parser(
        "demo", help="pull a generated sample model from a local S3 server (rclone)"
    )
    demo.add_argument("--keep", metavar="DIR", help="pull into DIR and keep it")
    demo.add_argument("--no-progress", action="store_true", help="no progress display")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modelpull`` and ``python -m modelpull``; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(
        getattr(args, "verbose", 0),
        getattr(args, "quiet", False),
        getattr(args, "log_format", "text"),
        sys.stderr,
    )
    return run_command(
        "modelpull",
        lambda: COMMANDS[args.command](args),
        json_errors=getattr(args, "json", False),
    )
