"""The fault matrix: every fault through the TOS SDK, boto3 and modelpull, side by side.

::

    python benchmarks/fault_matrix.py            # every cell, each tool's default timeouts
    python benchmarks/fault_matrix.py --quick    # short timeouts, for a look in ~3 minutes
    python benchmarks/fault_matrix.py --faults reset,500 --tools modelpull-boto3
    python benchmarks/fault_matrix.py --table docs/fault-matrix.json   # tables only

A full run of every fault and tool writes ``docs/fault-matrix.json`` and replaces the
generated section of ``docs/migration.md`` ("How failures differ"); any other run writes
``benchmarks/results/fault-matrix[-quick].json`` and ``.md`` and leaves the docs alone
(``--out`` and ``--doc`` choose otherwise). What a cell is and records:
``benchmarks/faultmatrix/cells.py``; the faults: ``benchmarks/faultmatrix/faults.py``.

Cells share no state (each has its own object and fault proxy): those that mostly wait
(stalls, trickles, Retry-After) all run at once, the others ``--jobs`` at a time beside
them. Each is killed at ``--cap`` seconds and reported as still running then.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# This checkout's modelpull, fault proxy and stand-in, whatever the environment holds.
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchmarks.faultmatrix.cells import Settings, all_cells, run_cells  # noqa: E402
from benchmarks.faultmatrix.faults import FAULTS, fault_named  # noqa: E402
from benchmarks.faultmatrix.report import dump, markdown, update_doc  # noqa: E402
from benchmarks.faultmatrix.tools import TOOLS, Timeouts, tool_named  # noqa: E402

import modelpull  # noqa: E402

DOC_JSON = REPO / "docs" / "fault-matrix.json"
DOC = REPO / "docs" / "migration.md"
RESULTS = REPO / "benchmarks" / "results"
QUICK = Timeouts(connect=5.0, read=5.0, stall=3.0)
FULL_CAP, QUICK_CAP = 360.0, 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"connect/read timeouts {QUICK.connect:g}/{QUICK.read:g} s for every tool, "
        f"modelpull's stall window {QUICK.stall:g} s, cap {QUICK_CAP:g} s",
    )
    parser.add_argument("--faults", help="comma-separated fault ids (default: all)")
    parser.add_argument("--tools", help="comma-separated tool ids (default: all)")
    parser.add_argument(
        "--jobs", type=int, default=4, help="cells at a time besides the waiting ones (default 4)"
    )
    parser.add_argument("--cap", type=float, help=f"seconds per cell (default {FULL_CAP:g})")
    parser.add_argument(
        "--out", type=Path, help="where the JSON goes (the tables beside it, without --doc)"
    )
    parser.add_argument("--doc", type=Path, help="a document whose generated section to replace")
    parser.add_argument("--tmp", type=Path, help="work folder parent (default: the system's)")
    parser.add_argument("--table", type=Path, help="only print the tables of this JSON")
    args = parser.parse_args(argv)
    try:
        args.fault_list = (
            [fault_named(f) for f in args.faults.split(",")] if args.faults else FAULTS
        )
        args.tool_list = [tool_named(t) for t in args.tools.split(",")] if args.tools else TOOLS
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    complete = not args.faults and not args.tools and not args.quick
    if args.out is None:
        name = "fault-matrix-quick.json" if args.quick else "fault-matrix.json"
        args.out = DOC_JSON if complete else RESULTS / name
    if args.doc is None and complete:
        args.doc = DOC
    if args.cap is None:
        args.cap = QUICK_CAP if args.quick else FULL_CAP
    return args


def _commit() -> str:
    """The commit measured; ``-dirty`` when ``src/`` differs from it (the docs this run
    rewrites do not count)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changed else "")


def versions() -> dict[str, str]:
    found = {name: metadata.version(name) for name in ("tos", "boto3", "botocore", "s3transfer")}
    return found | {
        "modelpull": modelpull.__version__,
        "commit": _commit(),
        "python": platform.python_version(),
    }


def progress(record: dict[str, Any]) -> None:
    error = (record.get("error") or {}).get("type", "")
    print(
        f"{record['fault']:>16} {record['variant']:<6} {record['tool']:<19} "
        f"{record['outcome']:<6} {record['final']:<7} {record['seconds']:>7.1f} s  {error}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        print(markdown(json.loads(args.table.read_text())), end="")
        return 0
    timeouts = QUICK if args.quick else Timeouts()
    cells = all_cells(args.fault_list, args.tool_list)
    print(f"{len(cells)} cells, {args.jobs} at a time, cap {args.cap:g} s", file=sys.stderr)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="fault-matrix-") as work:
        settings = Settings(timeouts, args.cap)
        records = run_cells(cells, Path(work), settings, jobs=args.jobs, progress=progress)
    wall = time.monotonic() - started
    modes = {
        r["settings"].get("retry_mode")
        for r in records
        if r["tool"] == "boto3-download-file" and r.get("settings")
    }
    run = {
        "meta": {
            "date": dt.date.today().isoformat(),
            "quick": args.quick,
            "timeouts": {
                "connect": timeouts.connect,
                "read": timeouts.read,
                "stall": timeouts.stall,
            },
            "cap": args.cap,
            "jobs": args.jobs,
            "cells": len(records),
            "wall_seconds": round(wall, 1),
            "versions": versions(),
            "boto3_default_mode": ",".join(sorted(m for m in modes if m)) or None,
        },
        "cells": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(run))
    section = markdown(run)
    if args.doc is not None:
        update_doc(args.doc, section)
        written = [args.out, args.doc]
    else:
        args.out.with_suffix(".md").write_text(section)
        written = [args.out, args.out.with_suffix(".md")]
    print(
        f"{len(records)} cells in {wall / 60:.1f} min; wrote {', '.join(map(str, written))}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
