"""``modelpull bench``: the same objects through each backend, side by side.

Every trial is one pull in a child process (so its peak RSS and CPU time are its own,
read with ``wait4``), into a fresh folder, with ``force`` on. Trials are interleaved
round by round in a rotated order, so drift on the machine hits every setting alike.
Each trial's files are hashed afterwards, in this process, and must equal the first
trial's: a backend that returned other bytes fails the benchmark.

Besides the backends (``boto3``, ``tos-sdk``), one arm is not a backend:
``tos-sdk-download-file`` runs the TOS SDK's own ``download_file``
(:mod:`modelpull.bench_sdk`), the path TOS deployments take today, at the same
concurrency (its ``task_num``) and part size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from modelpull.backends import BACKENDS
from modelpull.config import PullConfig
from modelpull.errors import (
    BackendUnavailableError,
    ModelPullError,
    UsageError,
)
from modelpull.files import make_folder
from modelpull.resolve import Target
from modelpull.text import escape_controls
from modelpull.units import format_size, parse_size

__all__ = [
    "ARMS",
    "DEFAULT_ARMS",
    "SDK_DOWNLOAD_FILE",
    "Setting",
    "Trial",
    "available_arms",
    "check_dirs",
    "config_env",
    "main_trial",
    "parse_list",
    "parse_sizes",
    "run_bench",
]

STATE_DIR = ".modelpull"
SDK_DOWNLOAD_FILE = "tos-sdk-download-file"
# What --backends may name: the backends, and the TOS SDK's own download_file.
ARMS = (*BACKENDS, SDK_DOWNLOAD_FILE)
# Without --backends; an arm that cannot reach the store is then left out with a note
# (the TOS SDK on a plain S3 store), where a named one fails the bench.
DEFAULT_ARMS = ("boto3", "tos-sdk")
# Passed on to each trial; the settings under test are set per trial.
_CONNECTION_FIELDS = frozenset(
    {
        "endpoint_url",
        "region",
        "profile",
        "addressing_style",
        "no_sign_request",
        "ca_bundle",
        "verify_ssl",
        "verify",
    }
)


@dataclass(frozen=True)
class Setting:
    """One combination under test."""

    backend: str
    concurrency: int
    part_size: int

    @property
    def label(self) -> str:
        return f"{self.backend} c={self.concurrency} part={format_size(self.part_size)}"


@dataclass
class Trial:
    """One pull: its throughput, request latencies and cost."""

    setting: Setting
    round: int
    seconds: float
    bytes: int
    mb_per_s: float
    peak_rss_mb: float
    cpu_seconds: float
    retries: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _hash_tree(root: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != STATE_DIR:
            sha = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
            digests[rel.as_posix()] = sha.hexdigest()
    return digests


def _run_trial(
    uri: str, setting: Setting, round_index: int, dest: Path, env: dict[str, str] | None
) -> Trial:
    spec = {"uri": uri, "dest": str(dest), **asdict(setting)}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelpull.bench", json.dumps(spec)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        out.seek(0)
        report = out.read()
    if proc.returncode != 0:
        # The trial's own one-line error (main_trial prints no traceback for modelpull's).
        lines = [line for line in stderr.splitlines() if line.strip()] or ["no output"]
        raise ModelPullError(
            f"bench trial {setting.label} failed (exit {proc.returncode}): {lines[-1].strip()}"
        )
    data = json.loads(report)
    return Trial(
        setting=setting,
        round=round_index,
        seconds=data["seconds"],
        bytes=data["bytes"],
        mb_per_s=data["bytes"] / data["seconds"] / 1e6 if data["seconds"] > 0 else 0.0,
        peak_rss_mb=usage.ru_maxrss / 1024,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        retries=data["retries"],
        latencies=data["latencies"],
    )


def summarise(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """One row per setting: medians over rounds, latency percentiles over all requests."""
    rows = []
    by_setting: dict[Setting, list[Trial]] = {}
    for trial in trials:
        by_setting.setdefault(trial.setting, []).append(trial)
    for setting, runs in by_setting.items():
        latencies = [x for run in runs for x in run.latencies]
        total_bytes = sum(run.bytes for run in runs)
        retries: dict[str, int] = {}
        for run in runs:
            for reason, count in run.retries.items():
                retries[reason] = retries.get(reason, 0) + count
        rows.append(
            {
                **asdict(setting),
                "label": setting.label,
                "rounds": len(runs),
                "median_mb_per_s": statistics.median(run.mb_per_s for run in runs),
                "p50_request_ms": _percentile(latencies, 0.5) * 1000,
                "p95_request_ms": _percentile(latencies, 0.95) * 1000,
                "cpu_s_per_gb": sum(run.cpu_seconds for run in runs) / (total_bytes / 1e9)
                if total_bytes
                else float("nan"),
                "peak_rss_mb": max(run.peak_rss_mb for run in runs),
                "retries": retries,
            }
        )
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| backend | concurrency | part size | median MB/s | p50 / p95 request ms "
        "| CPU s/GB | peak RSS MB | retries |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        retries = ", ".join(f"{k}={v}" for k, v in sorted(row["retries"].items())) or "0"
        lines.append(
            f"| {row['backend']} | {row['concurrency']} | {format_size(row['part_size'])} "
            f"| {row['median_mb_per_s']:.0f} | {row['p50_request_ms']:.0f} / "
            f"{row['p95_request_ms']:.0f} | {row['cpu_s_per_gb']:.2f} "
            f"| {row['peak_rss_mb']:.0f} | {retries} |"
        )
    return "\n".join(lines) + "\n"


def _chart(rows: Sequence[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BackendUnavailableError(
            "the chart needs matplotlib: pip install 'modelpull[bench]' (the JSON is written)"
        ) from exc
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows)), 4.0))
    labels = [row["label"].replace(" ", "\n", 1) for row in rows]
    palette = {"boto3": "tab:blue", "tos-sdk": "tab:orange"}
    colors = [palette.get(row["backend"], "tab:green") for row in rows]
    ax.bar(labels, [row["median_mb_per_s"] for row in rows], color=colors)
    ax.set_ylabel("median MB/s")
    ax.set_title("modelpull bench: backends at equal concurrency and part size")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_bench(
    uri: str,
    *,
    backends: Sequence[str],
    concurrencies: Sequence[int],
    part_sizes: Sequence[int],
    rounds: int,
    out_dir: Path,
    work_dir: Path | None = None,
    env: dict[str, str] | None = None,
    stream: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Run every setting ``rounds`` times, interleaved; write bench.json and bench.png."""
    if rounds < 1:
        raise UsageError("--rounds must be at least 1")
    unknown = [name for name in backends if name not in ARMS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}: choose from {', '.join(ARMS)}")
    settings = [
        Setting(b, c, p) for b, c, p in itertools.product(backends, concurrencies, part_sizes)
    ]
    if not settings:
        raise UsageError("nothing to compare: give at least one backend, concurrency and size")
    log = stream if stream is not None else sys.stderr
    check_dirs(out_dir, work_dir)
    trials: list[Trial] = []
    reference: dict[str, str] | None = None
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="modelpull-bench-") as scratch:
        for round_index in range(rounds):
            shift = round_index % len(settings)
            for setting in settings[shift:] + settings[:shift]:
                dest = Path(scratch) / "dest"
                trial = _run_trial(uri, setting, round_index, dest, env)
                digests = _hash_tree(dest)
                shutil.rmtree(dest)
                if reference is None:
                    reference = digests
                elif digests != reference:
                    raise ModelPullError(
                        f"bench: {setting.label} produced different files than the first trial"
                    )
                trials.append(trial)
                print(
                    f"round {round_index + 1}/{rounds} {setting.label}: {trial.mb_per_s:.0f} MB/s",
                    file=log,
                )
    rows = summarise(trials)
    report = {
        "uri": uri,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "rows": rows,
        "trials": [{**asdict(t), "latencies": len(t.latencies)} for t in trials],
    }
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    try:
        _chart(rows, out_dir / "bench.png")
    except BackendUnavailableError as exc:
        print(f"modelpull bench: {exc}", file=log)
    return rows


def check_dirs(out_dir: Path, work_dir: Path | None) -> None:
    """Create ``out_dir``; check ``work_dir`` is a writable folder. One-line errors."""
    if work_dir is not None and not (work_dir.is_dir() and os.access(work_dir, os.W_OK | os.X_OK)):
        raise UsageError(f"--work-dir {work_dir}: not an existing, writable folder")
    make_folder(out_dir, option="--output")


def available_arms(
    uri: str,
    arms: Sequence[str],
    overrides: dict[str, Any],
    *,
    optional: Sequence[str] = (),
    stream: TextIO | None = None,
) -> list[str]:
    """The arms whose backend can list ``uri`` with these settings, tried once each.

    An arm in ``optional`` that cannot (the TOS SDK without a TOS endpoint or region, or
    without its package) is left out with a note on ``stream``; any other failure is the
    bench's.
    """
    from modelpull.plan import list_remote
    from modelpull.resolve import resolve

    unknown = [name for name in arms if name not in ARMS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}: choose from {', '.join(ARMS)}")
    log = stream if stream is not None else sys.stderr
    kept = []
    for arm in arms:
        backend = "tos-sdk" if arm == SDK_DOWNLOAD_FILE else arm
        try:
            with resolve(uri, overrides={**overrides, "backend": backend}) as target:
                list_remote(target.backend, target.uri)
        except ModelPullError as exc:
            if arm not in optional:
                raise
            note = escape_controls(str(exc))
            print(f"modelpull bench: leaving out {arm}: it cannot run here ({note})", file=log)
            continue
        kept.append(arm)
    if not kept:
        raise UsageError("no backend can reach the store: see the notes above")
    return kept


def parse_list(text: str, what: str, convert: Any) -> list[Any]:
    """``"8,16,32"`` into ``[8, 16, 32]`` with ``convert`` on each item."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UsageError(f"{what} needs at least one value")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}") from None


def parse_sizes(text: str) -> list[int]:
    return parse_list(text, "--part-size", lambda item: parse_size(item, what="--part-size"))


def config_env(config: PullConfig) -> dict[str, str]:
    """The connection settings of ``config`` as the variables a trial's process reads."""
    env = dict(os.environ)
    for f in dataclasses.fields(config):
        if f.name in _CONNECTION_FIELDS:
            value = getattr(config, f.name)
            if value != f.default:
                env[f.metadata["env"][0]] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
    return env


def main_trial(spec_text: str) -> int:
    """One trial, in a child process: pull, then print its numbers as JSON."""
    from modelpull.resolve import resolve

    spec = json.loads(spec_text)
    sdk_arm = spec["backend"] == SDK_DOWNLOAD_FILE
    setting = {
        "backend": "tos-sdk" if sdk_arm else spec["backend"],
        "concurrency": spec["concurrency"],
        "part_size": spec["part_size"],
        "force": True,
    }
    with resolve(spec["uri"], overrides=setting) as target:
        if sdk_arm:
            from modelpull.bench_sdk import run_trial

            report = run_trial(target, Path(spec["dest"]))
        else:
            report = _pull_trial(target, spec["dest"])
    print(json.dumps(report))
    return 0


def _pull_trial(target: Target, dest: str) -> dict[str, Any]:
    from modelpull.api import pull
    from modelpull.events import Event, RequestFinished

    latencies: list[float] = []

    def collect(event: Event) -> None:
        if isinstance(event, RequestFinished) and event.method == "GET" and event.status[0] == "2":
            latencies.append(event.seconds)

    result = pull(target, dest, observers=[collect])
    return {
        "seconds": result.seconds,
        "bytes": result.bytes_downloaded,
        "retries": result.retries,
        "latencies": latencies,
    }


def _main_trial_cli(spec_text: str) -> int:
    """:func:`main_trial` as a process: a modelpull error is one line on stderr."""
    from modelpull.cli.exits import run_command

    return run_command("modelpull bench trial", lambda: main_trial(spec_text))


if __name__ == "__main__":
    sys.exit(_main_trial_cli(sys.argv[1]))
