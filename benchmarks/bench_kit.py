"""The benchmark kit: every scenario of the speed issue's table in one run.

For each scenario (a model, a store on loopback, a set of arms) the arms run as separate
processes, one after another, for ``--rounds`` rounds, in an order rotated by one each
round so that drift on the machine hits them all alike. Each run is timed (wall clock of
the whole process), its CPU time and peak RSS read from ``wait4``, and what it wrote is
compared with the source (SHA-256 of every file) before it is deleted.

Run from the repository root (see benchmarks/README.md)::

    .venv/bin/python benchmarks/bench_kit.py                     # the table, 3 rounds
    .venv/bin/python benchmarks/bench_kit.py --quick             # small sizes, 1 round
    .venv/bin/python benchmarks/bench_kit.py --scenarios far,startup --rounds 5
    .venv/bin/python benchmarks/bench_kit.py --scenarios all     # and the integrity hooks

Results: a Markdown table on stdout, and ``benchmarks/results/kit.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _kitreport import ArmResult, Run, ScenarioResult, markdown
from _models import Model, get_model
from _runner import MB, RunFailed, clean_env, machine_info, measure, rotated
from _scenarios import (
    ARMS,
    DEFAULT_SCENARIOS,
    HOOK_SCENARIOS,
    SCENARIOS,
    Opened,
    Scenario,
    Settings,
    Target,
    open_store,
    verify_command_missing,
)
from _tree import compare, tree_hashes

HERE = Path(__file__).resolve().parent
DEFAULT_ROUNDS = 3
DEFAULT_TIMEOUT = 900.0
QUICK_TIMEOUT = 120.0


def _run_arm(
    scenario: Scenario,
    arm_name: str,
    round_index: int,
    model: Model,
    target: Target,
    opened: Opened,
    dest: Path,
    timeout: float,
) -> Run:
    """One timed run of one arm into ``dest``, checked against the model.

    Raises :class:`RunFailed` when the arm fails; wrong bytes give a run with
    ``verified`` false and ``problem`` saying what differs.
    """
    arm = ARMS[arm_name]
    store = target.store
    env = clean_env(store.endpoint, store.access_key, store.secret_key, arm.env(target))
    opened.probe.before()
    name = f"{scenario.name}-{arm_name}-r{round_index + 1}"
    usage = measure(name, arm.command(target, dest), env, target.settings.logs, timeout)
    extra = opened.probe.after(usage, model.total_bytes)
    problem = compare(tree_hashes(dest), model.hashes)
    return Run(
        round=round_index + 1,
        seconds=usage.seconds,
        mb_per_s=model.total_bytes / MB / usage.seconds,
        cpu_seconds=usage.cpu_seconds,
        cpu_s_per_gb=usage.cpu_seconds / (model.total_bytes / 1e9),
        peak_rss_mb=usage.peak_rss_mb,
        verified=problem is None,
        problem=problem,
        extra=extra,
    )


def _prepare_dest(target: Target, model: Model, dest: Path) -> None:
    """Pull the model once into ``dest`` (untimed) for the scenarios that read one."""
    arm = ARMS["modelpull"]
    store = target.store
    env = clean_env(store.endpoint, store.access_key, store.secret_key, arm.env(target))
    measure("prepare", arm.command(target, dest), env, target.settings.logs)
    problem = compare(tree_hashes(dest), model.hashes)
    if problem is not None:
        raise RunFailed(f"preparing the destination: {problem}")


def run_scenario(
    scenario: Scenario, arms: Sequence[str], settings: Settings, data: Path, args: Any
) -> ScenarioResult:
    model = get_model(data, scenario.model, args.quick)
    title = scenario.title.format(rtt=f"{settings.far_rtt_ms:g}", rate=settings.far_rate_text)
    result = ScenarioResult(
        scenario.name,
        title,
        store="",
        files=model.files,
        total_bytes=model.total_bytes,
        startup=scenario.startup,
    )
    if scenario.name == "verify":
        result.skipped = verify_command_missing()
        if result.skipped:
            print(f"{scenario.name}: {result.skipped}", file=sys.stderr)
            return result
    print(
        f"== {scenario.name}: {title} ({model.files} files, "
        f"{model.total_bytes / MB:.1f} MB); arms: {', '.join(arms)}",
        file=sys.stderr,
    )
    with open_store(scenario.store, model.folder, model.prefix, settings) as opened:
        target = Target(opened.store, model.prefix, settings)
        result.store = opened.store.describe
        result.notes += opened.notes
        for name in arms:
            command = shlex.join(ARMS[name].command(target, Path("DEST")))
            result.arms[name] = ArmResult(name, ARMS[name].label, command)
        prepared = settings.work / f"prepared-{scenario.name}"
        if scenario.prepared_dest:
            _prepare_dest(target, model, prepared)
        stopped: set[str] = set()  # arms that failed to run: not run again
        for round_index in range(args.rounds):
            for name in rotated(list(arms), round_index):
                arm = result.arms[name]
                if name in stopped:
                    continue
                dest = prepared if scenario.prepared_dest else settings.work / "dest"
                dest.mkdir(exist_ok=True)
                try:
                    run = _run_arm(
                        scenario, name, round_index, model, target, opened, dest, args.timeout
                    )
                except RunFailed as exc:
                    arm.failed = str(exc)
                    stopped.add(name)
                    print(f"FAILED {scenario.name} {exc}", file=sys.stderr)
                    continue
                finally:
                    if not scenario.prepared_dest:
                        shutil.rmtree(dest, ignore_errors=True)
                arm.runs.append(run)
                if run.problem is not None:
                    # Its numbers stand, but the arm is reported as failed; later rounds
                    # still run, to see how often it happens.
                    arm.failed = arm.failed or f"round {run.round}: {run.problem}"
                    print(f"NOT VERIFIED {scenario.name} {name}: {run.problem}", file=sys.stderr)
                extra = "".join(f" {k} {v:.3g}" for k, v in run.extra.items())
                print(
                    f"{scenario.name:11} round {run.round} {name:18} {run.mb_per_s:8.1f} MB/s "
                    f"{run.seconds:7.2f} s  CPU {run.cpu_seconds:6.2f} s  "
                    f"RSS {run.peak_rss_mb:5.0f} MB{extra}",
                    file=sys.stderr,
                )
        shutil.rmtree(prepared, ignore_errors=True)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join([*DEFAULT_SCENARIOS, *HOOK_SCENARIOS])
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated, or 'all' (default: the table's, {', '.join(DEFAULT_SCENARIOS)})"
        f"\nfrom: {names}",
    )
    parser.add_argument("--arms", help=f"only these arms, comma-separated; from {', '.join(ARMS)}")
    parser.add_argument("--rounds", type=int, help=f"default {DEFAULT_ROUNDS}, 1 with --quick")
    parser.add_argument("--quick", action="store_true", help="small models (~100 MB), 1 round")
    parser.add_argument("--data", type=Path, help="keep generated models here for next time")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"), help="work folder's parent")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="kit.md, kit.json")
    parser.add_argument("--timeout", type=float, help="seconds per arm run (default 900/120)")
    parser.add_argument("--modelpull-args", default="", help="extra flags for modelpull pull")
    parser.add_argument(
        "--modelpull-env", action="append", default=[], metavar="K=V", help="repeatable"
    )
    parser.add_argument("--far-rtt-ms", type=float, default=20.0, help="default 20")
    parser.add_argument(
        "--far-rate", default="16MB", help="per connection (default 16MB; none: no limit)"
    )
    parser.add_argument("--far-total-rate", help="cap over all connections (default none)")
    args = parser.parse_args(argv)
    if args.scenarios == "all":
        args.scenario_list = [*DEFAULT_SCENARIOS, *HOOK_SCENARIOS]
    else:
        args.scenario_list = args.scenarios.split(",") if args.scenarios else [*DEFAULT_SCENARIOS]
    unknown = [s for s in args.scenario_list if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {names}")
    args.arm_filter = args.arms.split(",") if args.arms else None
    if args.arm_filter and set(args.arm_filter) - set(ARMS):
        parser.error(f"unknown arms {sorted(set(args.arm_filter) - set(ARMS))}")
    args.rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.timeout = args.timeout or (QUICK_TIMEOUT if args.quick else DEFAULT_TIMEOUT)
    if any("=" not in item for item in args.modelpull_env):
        parser.error("--modelpull-env takes K=V")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.tmp, prefix="kit-")))
        data = args.data.resolve() if args.data else work / "data"
        logs = work / "logs"
        logs.mkdir()
        settings = Settings(
            work=work,
            logs=logs,
            modelpull_args=tuple(shlex.split(args.modelpull_args)),
            modelpull_env=dict(item.split("=", 1) for item in args.modelpull_env),
            far_rtt_ms=args.far_rtt_ms,
            far_rate=args.far_rate,
            far_total_rate=args.far_total_rate,
        )
        for name in args.scenario_list:
            scenario = SCENARIOS[name]
            arms = [a for a in scenario.arms if not args.arm_filter or a in args.arm_filter]
            scenario_settings = Settings(**{**vars(settings), "work": work / name})
            scenario_settings.work.mkdir()
            try:
                results.append(run_scenario(scenario, arms, scenario_settings, data, args))
            finally:
                shutil.rmtree(scenario_settings.work, ignore_errors=True)
        params = {
            "rounds": args.rounds,
            "quick": args.quick,
            "scenarios": args.scenario_list,
            "arms": args.arm_filter,
            "modelpull_args": list(settings.modelpull_args),
            "modelpull_env": settings.modelpull_env,
            "far": {"rtt_ms": args.far_rtt_ms, "rate": args.far_rate},
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        if args.far_total_rate:
            params["far"]["total_rate"] = args.far_total_rate
    machine = machine_info()
    report = markdown(results, params, machine)
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "kit.md").write_text(report)
    document = {
        "params": params,
        "machine": machine,
        "scenarios": {r.name: r.to_json() for r in results},
    }
    (args.results / "kit.json").write_text(json.dumps(document, indent=2) + "\n")
    failed = [f"{r.name}/{a.arm}" for r in results for a in r.arms.values() if a.failed]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
