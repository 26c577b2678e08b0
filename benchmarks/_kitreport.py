"""The benchmark kit's results: per-run records, per-arm summaries, the Markdown report."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ArmResult", "Run", "ScenarioResult", "markdown"]

MB = 1e6
# Columns of the overview table, in the order.
OVERVIEW = ("s5cmd", "boto3-default", "boto3-aibrix", "modelpull", "modelpull-noverify")


@dataclass
class Run:
    round: int
    seconds: float
    mb_per_s: float
    cpu_seconds: float
    cpu_s_per_gb: float
    peak_rss_mb: float
    verified: bool
    problem: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ArmResult:
    """Every run of one arm in one scenario, and what they add up to."""

    arm: str
    label: str
    command: str
    runs: list[Run] = field(default_factory=list)
    failed: str | None = None

    def summary(self) -> dict[str, Any]:
        """Medians (and min-max) over the runs; ``verified`` only if every run was."""
        out: dict[str, Any] = {"arm": self.arm, "label": self.label, "command": self.command}
        out["runs"] = len(self.runs)
        out["failed"] = self.failed
        out["verified"] = (
            bool(self.runs) and self.failed is None and all(r.verified for r in self.runs)
        )
        if not self.runs:
            return out
        speeds = [r.mb_per_s for r in self.runs]
        seconds = [r.seconds for r in self.runs]
        out |= {
            "median_mb_per_s": statistics.median(speeds),
            "min_mb_per_s": min(speeds),
            "max_mb_per_s": max(speeds),
            "median_seconds": statistics.median(seconds),
            "min_seconds": min(seconds),
            "max_seconds": max(seconds),
            "cpu_seconds": statistics.median(r.cpu_seconds for r in self.runs),
            "cpu_s_per_gb": statistics.median(r.cpu_s_per_gb for r in self.runs),
            "peak_rss_mb": max(r.peak_rss_mb for r in self.runs),
        }
        for key in sorted({k for r in self.runs for k in r.extra}):
            values = [r.extra[key] for r in self.runs if key in r.extra]
            out[f"median_{key}"] = statistics.median(values)
            out[f"max_{key}"] = max(values)
        return out


@dataclass
class ScenarioResult:
    name: str
    title: str
    store: str
    files: int
    total_bytes: int
    startup: bool
    arms: dict[str, ArmResult] = field(default_factory=dict)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def speed(self, arm: str) -> float | None:
        """The arm's median speed: MB/s, or runs per second for a startup scenario."""
        result = self.arms.get(arm)
        if result is None or not result.runs or result.failed is not None:
            return None
        if self.startup:
            return 1 / statistics.median(r.seconds for r in result.runs)
        return statistics.median(r.mb_per_s for r in result.runs)

    def ratio(self, arm: str, base: str = "s5cmd") -> float | None:
        """``arm``'s median speed over ``base``'s (for startup: base's time over arm's)."""
        mine, theirs = self.speed(arm), self.speed(base)
        return mine / theirs if mine is not None and theirs else None

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "store": self.store,
            "files": self.files,
            "bytes": self.total_bytes,
            "unit": "s" if self.startup else "MB/s",
            "skipped": self.skipped,
            "notes": self.notes,
            "modelpull_to_s5cmd": self.ratio("modelpull"),
            "arms": {
                name: a.summary() | {"to_s5cmd": self.ratio(name)} for name, a in self.arms.items()
            },
            "runs": {name: [vars(r) for r in a.runs] for name, a in self.arms.items()},
        }


def _column_arm(scenario: ScenarioResult, arm: str) -> str:
    """The arm shown in ``arm``'s overview column: a scenario that runs modelpull only as
    another command (``verify``) shows that arm under modelpull, rather than nothing."""
    if arm != "modelpull" or arm in scenario.arms:
        return arm
    others = [a for a in scenario.arms if a.startswith("modelpull-") and a not in OVERVIEW]
    return others[0] if others else arm


def _cell(scenario: ScenarioResult, arm: str) -> str:
    result = scenario.arms.get(_column_arm(scenario, arm))
    if result is None:
        return ""
    if result.failed is not None and not result.runs:
        return "failed"
    s = result.summary()
    if scenario.startup:
        text = f"{s['median_seconds']:.2f} s"
    else:
        text = f"{s['median_mb_per_s']:.0f} ({s['min_mb_per_s']:.0f}-{s['max_mb_per_s']:.0f})"
    if arm.startswith("modelpull") and not scenario.startup:
        text += f", {s['cpu_s_per_gb']:.1f} CPU-s/GB"
    if not all(r.verified for r in result.runs):
        text += " NOT VERIFIED"
    elif result.failed is not None:
        text += " (then failed)"
    return text


def _size(scenario: ScenarioResult) -> str:
    total = scenario.total_bytes
    size = f"{total / 1e9:.2f} GB" if total >= 1e9 else f"{total / MB:.1f} MB"
    return f"{scenario.files} files, {size}" if total >= 1e5 else f"{scenario.files} file(s)"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _detail(scenario: ScenarioResult) -> list[str]:
    unit = "s" if scenario.startup else "MB/s"
    extras = sorted({k for a in scenario.arms.values() for r in a.runs for k in r.extra})
    head = (
        f"| arm | median {unit} | min-max | CPU-s/GB | CPU s | peak RSS MB | verified | ÷ s5cmd |"
    )
    lines = [head + "".join(f" {k} |" for k in extras)]
    lines.append("|---|---:|---:|---:|---:|---:|---|---:|" + "---:|" * len(extras))
    for name, arm in scenario.arms.items():
        s = arm.summary()
        if not arm.runs:
            lines.append(f"| {name} | failed | | | | | no | - |" + " |" * len(extras))
            continue
        if scenario.startup:
            median, low, high = s["median_seconds"], s["min_seconds"], s["max_seconds"]
            spread = f"{low:.2f}-{high:.2f}"
            median_text = f"{median:.2f}"
        else:
            median_text = f"{s['median_mb_per_s']:.0f}"
            spread = f"{s['min_mb_per_s']:.0f}-{s['max_mb_per_s']:.0f}"
        wrong = sum(not r.verified for r in arm.runs)
        if wrong:
            verified = f"NO: {wrong} of {len(arm.runs)} runs wrong"
        else:
            verified = "yes" if s["verified"] else "runs yes, then failed"
        per_gb = "-" if scenario.startup else f"{s['cpu_s_per_gb']:.2f}"
        row = (
            f"| {name} | {median_text} | {spread} | {per_gb} | "
            f"{s['cpu_seconds']:.2f} | {s['peak_rss_mb']:.0f} | {verified} | "
            f"{_ratio(scenario.ratio(name))} |"
        )
        row += "".join(f" {s.get(f'median_{k}', float('nan')):.3g} |" for k in extras)
        lines.append(row)
    return lines


def markdown(results: list[ScenarioResult], params: dict[str, Any], machine: dict[str, Any]) -> str:
    """The overview table (the issue's), then each scenario's arms in detail."""
    load = machine.get("load_average", [])
    lines = [
        "# modelpull benchmark kit",
        "",
        f"{params['rounds']} round(s), arms interleaved in a rotated order each round"
        + (", --quick sizes" if params["quick"] else "")
        + f"; every output checked byte for byte (SHA-256). Load average at the end: {load}; "
        f"{machine.get('nproc')} CPUs ({machine.get('cpu')}).",
        "",
        "Median MB/s (min-max) of whole processes; modelpull's CPU seconds per GB; "
        "the startup row is wall seconds.",
        "",
        "| scenario | model | " + " | ".join(OVERVIEW) + " | modelpull / s5cmd |",
        "|---|---|" + "---:|" * (len(OVERVIEW) + 1),
    ]
    for sc in results:
        row = f"| {sc.name}: {sc.title} | {_size(sc)} |"
        if sc.skipped:
            lines.append(row + " skipped |" + " |" * len(OVERVIEW))
            continue
        cells = " | ".join(_cell(sc, arm) for arm in OVERVIEW)
        lines.append(f"{row} {cells} | {_ratio(sc.ratio('modelpull'))} |")
    for sc in results:
        lines += ["", f"## {sc.name}: {sc.title}", ""]
        lines.append(
            f"Store: {sc.store or '-'}. Model: {sc.files} files, {sc.total_bytes / MB:.1f} MB."
        )
        if sc.skipped:
            lines += ["", f"Skipped: {sc.skipped}"]
            continue
        lines += ["", *_detail(sc)]
        lines += [f"\n- {note}" for note in sc.notes]
        for name, arm in sc.arms.items():
            if arm.failed:
                lines.append(f"\n- **{name} failed**: {arm.failed.splitlines()[0]}")
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += ["", "## Arms", "", "Commands as run (DEST stands for a fresh folder):", ""]
    commands: dict[str, str] = {}
    for sc in results:
        for name, arm in sc.arms.items():
            line = f"- `{name}`: {arm.label}; in `{sc.name}`: `{arm.command}`"
            commands.setdefault(name, line)
    lines += list(commands.values())
    return "\n".join(lines) + "\n"
