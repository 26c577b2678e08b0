"""The ``modelpull`` parser and entry point.

Options may come before the subcommand as well as after it, as the AWS CLI and s5cmd
take their global options (``modelpull --endpoint-url URL ls s3://bucket/``):
:func:`hoist_options` moves them after it before argparse reads the line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelpull._version import __version__
from modelpull.cli.commands import COMMANDS
from modelpull.cli.exits import Parser, exit_codes_epilog, run_command
from modelpull.cli.options import add_config_options, add_log_options
from modelpull.observe.logs import setup_logging
from modelpull.presets import PRESETS

__all__ = ["build_parser", "hoist_options", "main"]


def _pull_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "uri",
        metavar="URI",
        help="s3://BUCKET/PREFIX/ (a folder), s3://BUCKET/KEY (one object), or "
        "s3://BUCKET/PREFIX/*.json (a glob in the last segment: --include '*.json'); "
        "tos:// alike",
    )
    p.add_argument(
        "dest",
        metavar="DEST",
        help="local folder (created if missing); for a URI naming one object, a DEST "
        "with no trailing slash that is not an existing folder is the file to write, as "
        "with aws s3 cp",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only paths (relative to the URI's folder) matching GLOB; an allow-list, "
        "repeatable ('*' crosses '/')",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="skip paths matching GLOB; wins over --include (filters are not ordered as "
        "in the AWS CLI)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="only what the serving engine reads: weights, *.json, tokenizer files, chat "
        "templates, *.py; not original/ nor *.bin/*.pth beside safetensors",
    )
    p.add_argument(
        "--dry-run",
        "--dryrun",
        action="store_true",
        help="print what would be fetched, skipped and checked, with sizes, and exit 0 "
        "without writing anything",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument(
        "--progress-interval",
        metavar="SECONDS",
        default="10",
        help="when stderr is not a terminal, print a status line this often (default 10)",
    )
    p.add_argument(
        "--json", action="store_true", help="print a JSON summary (or dry-run plan) on stdout"
    )
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


def _ls_parser(ls: argparse.ArgumentParser) -> None:
    ls.add_argument(
        "uri",
        metavar="URI",
        help="s3://BUCKET/PREFIX/, s3://BUCKET/KEY or s3://BUCKET/PREFIX/*.json (tos:// alike)",
    )
    ls.add_argument("--bytes", action="store_true", help="sizes in bytes instead of KiB, MiB, GiB")
    ls.add_argument(
        "--json", action="store_true", help="one JSON object per file (path, key, size, etag)"
    )


def _bench_parser(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("uri", metavar="URI")
    bench.add_argument(
        "--backends",
        default=None,
        help="comma-separated: boto3, tos-sdk, tos-sdk-download-file (default boto3,tos-sdk; "
        "tos-sdk is left out with a note when it cannot reach the store)",
    )
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
        description="Pull model folders from S3-compatible object stores, fast and verified. "
        "Options may come before or after the command "
        "(modelpull --endpoint-url URL ls s3://BUCKET/).",
        epilog=exit_codes_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"modelpull {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    p = commands.add_parser("pull", help="pull an object or a folder into DEST")
    _pull_parser(p)
    ls = commands.add_parser(
        "ls",
        help="list the files a URI names, with sizes and a total",
        description="List the files a pull of URI would consider: size and path "
        "(relative to the URI's folder), then a total line.",
    )
    _ls_parser(ls)
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


def _lookup(token: str, takes_value: dict[str, bool]) -> tuple[str, bool] | None:
    """The option ``token`` is, and whether it takes a value that follows it."""
    name, eq, _ = token.partition("=")
    if name in takes_value:
        return name, takes_value[name] and not eq
    if not token.startswith("--") and token[:2] in takes_value:  # -vv, -qv: flags joined
        return token[:2], False
    # argparse also takes a unique prefix of a long option.
    found = [
        option for option in takes_value if option.startswith("--") and option.startswith(name)
    ]
    if len(found) == 1:
        return found[0], takes_value[found[0]] and not eq
    return None


def hoist_options(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with the subcommands' options that come before the subcommand moved just
    after it; the program's own (``--help``, ``--version``) stay. Anything it cannot read
    is left as it is, for argparse to report."""
    argv = list(argv)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands: dict[str, argparse.ArgumentParser] = subparsers[0].choices if subparsers else {}
    takes_value = {
        option: action.nargs != 0
        for sub in commands.values()
        for option, action in sub._option_string_actions.items()
    }
    own = parser._option_string_actions
    kept: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in commands:
            return [*kept, word, *moved, *argv[i + 1 :]]
        if word.partition("=")[0] in own:
            kept.append(word)
            i += 1
            continue
        is_option = word.startswith("-") and word != "--"
        found = _lookup(word, takes_value) if is_option else None
        if found is None:
            return argv
        step = 2 if found[1] else 1
        moved += argv[i : i + step]
        i += step
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modelpull`` and ``python -m modelpull``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(hoist_options(sys.argv[1:] if argv is None else argv, parser))
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
