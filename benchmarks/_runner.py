"""Running one benchmark arm as a process: its environment, its wall time, CPU and peak
RSS (through ``_measure.py``), and a description of the machine for the report."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from modelpull.demo.rclone import find_rclone

__all__ = [
    "BIN",
    "MB",
    "RunFailed",
    "Usage",
    "clean_env",
    "machine_info",
    "measure",
    "rotated",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
MB = 1e6
# Removed from every arm's environment, so the shell running the benchmark cannot
# change what an arm does.
_STRIPPED = ("AWS_", "MODELPULL_", "TOS_", "DOWNLOADER_", "S3_", "RCLONE_", "SSL_CERT_")
_TAIL_CHARS = 3000
T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    """What ``wait4`` and the clock said about one run."""

    seconds: float
    peak_rss_mb: float
    cpu_seconds: float


class RunFailed(RuntimeError):
    """An arm exited with an error, ran out of time, or wrote the wrong bytes."""


def clean_env(
    endpoint: str, access_key: str, secret_key: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """os.environ without any store or tool settings, then the store's and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_STRIPPED)}
    env.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra or {})
    return env


def measure(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    logs: Path,
    timeout: float | None = None,
) -> Usage:
    """Run ``command``; its wall seconds, peak RSS (MB) and CPU seconds.

    Raises :class:`RunFailed` with the tail of its stderr when it fails or runs past
    ``timeout`` (then its whole process group is killed). Through ``_measure.py``, which
    times the command with ``perf_counter`` and reads ``wait4``'s rusage: see its
    docstring for why the command is not spawned from here. Its stdout and stderr are
    kept in ``logs/NAME.out`` and ``logs/NAME.err``.
    """
    measured = logs / f"{name}.json"
    measured.unlink(missing_ok=True)
    # Dirty pages left by the setup or by the previous arm would be written back during
    # this one, on the same cores and disk: flush them first, for every arm alike.
    os.sync()
    launcher = [sys.executable, "-I", "-S", str(HERE / "_measure.py"), str(measured)]
    err_path = logs / f"{name}.err"
    with (logs / f"{name}.out").open("wb") as stdout, err_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [*launcher, *command],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            start_new_session=True,  # so that a timeout can kill the command's children
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RunFailed(f"{name} ran past {timeout:g} s: {shlex.join(command)}") from None
    if code != 0:
        tail = err_path.read_text(errors="replace")[-_TAIL_CHARS:]
        raise RunFailed(f"{name} exited with {code}: {shlex.join(command)}\n{tail}")
    usage = json.loads(measured.read_text())
    # ru_maxrss is in KiB on Linux: the largest RSS of the command (and of any child it
    # waited for), not their sum.
    return Usage(usage["seconds"], usage["maxrss_kib"] * 1024 / MB, usage["cpu_seconds"])


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` rotated left by ``round_index``: each round starts with another one."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unavailable"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _proc_field(path: str, key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info() -> dict[str, Any]:
    """Date, CPU, RAM, load, tool versions and git commit, for the report."""
    ram = _proc_field("/proc/meminfo", "MemTotal")
    ram_gb = round(int(ram.split()[0]) * 1024 / 1e9, 1) if ram[:1].isdigit() else None
    versions: dict[str, str] = {}
    for module in ("modelpull", "boto3", "botocore", "tos"):
        try:
            versions[module] = metadata.version(module)
        except metadata.PackageNotFoundError:
            versions[module] = "not installed"
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked=no"])
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "ram_gb": ram_gb,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "rclone": _first_line([str(find_rclone()), "version"]),
        "s5cmd": _first_line([str(BIN / "s5cmd"), "version"]),
        "git": commit + (" (modified)" if dirty not in ("", "unknown") else ""),
    }
