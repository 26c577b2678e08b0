"""``bench_pull.py``'s results: per-run records, per-arm summaries, targets, Markdown."""

from __future__ import annotations

import shlex
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Run", "Summary", "Target", "markdown", "summarise", "targets"]

MB = 1e6


@dataclass
class Run:
    arm: str
    round: int
    seconds: float
    mb_per_s: float
    peak_rss_mb: float
    cpu_seconds: float
    cpu_s_per_gb: float
    faults_fired: int | None = None


@dataclass
class Summary:
    arm: str
    describe: str
    mb_per_s: float
    mb_per_s_min: float
    mb_per_s_max: float
    peak_rss_mb: float
    peak_rss_mb_max: float
    cpu_s_per_gb: float
    modelpull_ratio: float | None
    runs: list[Run] = field(default_factory=list)


def summarise(runs: list[Run], describe: dict[str, str]) -> dict[str, Summary]:
    """Per arm (in the order of ``describe``): medians over rounds and modelpull's ratio."""
    out: dict[str, Summary] = {}
    for name, text in describe.items():
        mine = [r for r in runs if r.arm == name]
        if not mine:
            continue
        speeds = [r.mb_per_s for r in mine]
        out[name] = Summary(
            arm=name,
            describe=text,
            mb_per_s=statistics.median(speeds),
            mb_per_s_min=min(speeds),
            mb_per_s_max=max(speeds),
            peak_rss_mb=statistics.median(r.peak_rss_mb for r in mine),
            peak_rss_mb_max=max(r.peak_rss_mb for r in mine),
            cpu_s_per_gb=statistics.median(r.cpu_s_per_gb for r in mine),
            modelpull_ratio=None,
            runs=mine,
        )
    if "modelpull" in out:
        base = out["modelpull"].mb_per_s
        for summary in out.values():
            summary.modelpull_ratio = base / summary.mb_per_s
    return out


@dataclass
class Target:
    name: str
    value: float
    goal: str
    met: bool


def targets(summaries: dict[str, Summary]) -> list[Target]:
    """The goals checked at the end of a run, with the numbers."""
    found: list[Target] = []
    mp = summaries.get("modelpull")
    if mp is not None:
        for arm, want in (("s5cmd", 1.5), ("boto3-default", 3.0), ("ceiling", 0.7)):
            if arm in summaries:
                ratio = mp.mb_per_s / summaries[arm].mb_per_s
                found.append(Target(f"modelpull / {arm}", ratio, f">= {want}x", ratio >= want))
        found.append(
            Target(
                "modelpull peak RSS (MB, max of runs)",
                mp.peak_rss_mb_max,
                "<= 150",
                mp.peak_rss_mb_max <= 150,
            )
        )
        if "modelpull-noverify" in summaries:
            overhead = 1 - mp.mb_per_s / summaries["modelpull-noverify"].mb_per_s
            found.append(
                Target(
                    "verify overhead (1 - modelpull / modelpull-noverify)",
                    overhead,
                    "<= 0.10",
                    overhead <= 0.10,
                )
            )
    if "modelpull-c32" in summaries and "tos-sdk" in summaries:
        # Same concurrency and part size as the TOS SDK arm: the migration's comparison.
        ratio = summaries["modelpull-c32"].mb_per_s / summaries["tos-sdk"].mb_per_s
        found.append(
            Target("modelpull-c32 / tos-sdk (32 requests, 64 MiB parts)", ratio, "> 1x", ratio > 1)
        )
    if "modelpull-proxy" in summaries and "modelpull-proxy-resets" in summaries:
        ratio = summaries["modelpull-proxy-resets"].mb_per_s / summaries["modelpull-proxy"].mb_per_s
        found.append(
            Target("resets / no faults (through the proxy)", ratio, ">= 0.7x", ratio >= 0.7)
        )
    return found


def markdown(
    summaries: dict[str, Summary], goals: list[Target], info: dict[str, Any], params: dict[str, Any]
) -> str:
    lines = [
        "# modelpull download benchmark",
        "",
        f"Model: {params['total_bytes'] / MB:.0f} MB in {params['files']} files "
        f"({params['size_gib']} GiB of shards); {params['rounds']} interleaved round(s); "
        f"loopback `rclone serve s3`. modelpull extra args: "
        f"`{shlex.join(params['modelpull_args']) or '(none)'}`"
        + (f", env `{params['modelpull_env']}`" if params["modelpull_env"] else ""),
        "",
        "| arm | median MB/s | min-max MB/s | peak RSS MB (median) | CPU s/GB | modelpull ÷ arm |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        ratio = f"{s.modelpull_ratio:.2f}x" if s.modelpull_ratio is not None else "-"
        lines.append(
            f"| {s.arm} | {s.mb_per_s:.0f} | {s.mb_per_s_min:.0f}-{s.mb_per_s_max:.0f} "
            f"| {s.peak_rss_mb:.0f} | {s.cpu_s_per_gb:.2f} | {ratio} |"
        )
    if goals:
        lines += ["", "| target | value | goal | met |", "|---|---:|---|---|"]
        for t in goals:
            lines.append(f"| {t.name} | {t.value:.3f} | {t.goal} | {'yes' if t.met else 'NO'} |")
    resets = [
        r.faults_fired for s in summaries.values() for r in s.runs if r.faults_fired is not None
    ]
    if resets:
        lines += ["", f"Connection resets fired per modelpull-proxy-resets run: {resets}"]
    lines += ["", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "Arms:", ""]
    lines += [f"- `{s.arm}`: {s.describe}" for s in summaries.values()]
    return "\n".join(lines) + "\n"
