"""The tools of the matrix, and how one of them downloads one object.

- the TOS SDK's ``download_file``, every setting at its default;
- boto3's ``download_file`` at its defaults, and under ``AWS_RETRY_MODE=legacy`` and
  ``adaptive`` (the default mode is ``standard`` in the botocore the JSON records);
- modelpull with the ``boto3`` backend and with the ``tos-sdk`` backend, pulling the
  ``tos://`` URI a migrating deployment pulls, with its ``TOS_*`` variables.

Each :func:`run` returns the same fields: ``ok``; ``seconds``, the tool's own time to
its outcome (from the SDK client's creation, or modelpull's ``pull_duration_seconds``:
interpreter start-up left out); ``process_seconds``, the process's wall time;
``error`` (type, status, code, request id, ...); and for modelpull ``exit_code`` and
what its metrics counted (requests by status, retries by reason). ``quick`` timeouts go
to every tool that has them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import modelpull

__all__ = [
    "TOOLS",
    "Job",
    "Timeouts",
    "Tool",
    "modelpull_env",
    "run",
    "run_inprocess",
    "tool_named",
]

HERE = Path(__file__).resolve().parent
# Removed from every tool's environment: the shell running the matrix changes nothing.
_STRIPPED = ("AWS_", "MODELPULL_", "TOS_", "DOWNLOADER_", "S3_")


@dataclass(frozen=True)
class Tool:
    """One column of the matrix."""

    id: str
    title: str
    side: Literal["s3", "tos"]  # the store it talks to
    kind: Literal["sdk", "modelpull"]
    retry_mode: str | None = None  # boto3's AWS_RETRY_MODE; None: its default
    backend: str | None = None  # modelpull's --backend

    @property
    def sdk(self) -> str:
        return "tos" if self.side == "tos" else "boto3"


TOOLS: tuple[Tool, ...] = (
    Tool("tos-download-file", "TOS SDK `download_file`", "tos", "sdk"),
    Tool("boto3-download-file", "boto3 `download_file`", "s3", "sdk"),
    Tool("boto3-legacy", "boto3, `AWS_RETRY_MODE=legacy`", "s3", "sdk", retry_mode="legacy"),
    Tool("boto3-adaptive", "boto3, `AWS_RETRY_MODE=adaptive`", "s3", "sdk", retry_mode="adaptive"),
    Tool("modelpull-boto3", "modelpull `--backend boto3`", "s3", "modelpull", backend="boto3"),
    Tool(
        "modelpull-tos-sdk", "modelpull `--backend tos-sdk`", "tos", "modelpull", backend="tos-sdk"
    ),
)


def tool_named(tool_id: str) -> Tool:
    for tool in TOOLS:
        if tool.id == tool_id:
            return tool
    raise KeyError(f"no tool {tool_id!r}; known: {', '.join(t.id for t in TOOLS)}")


@dataclass(frozen=True)
class Timeouts:
    """Connect and read timeouts for every tool, and modelpull's stall window
    (``--speed-time``), for ``--quick``; ``None``: each tool's own default."""

    connect: float | None = None
    read: float | None = None
    stall: float | None = None


@dataclass(frozen=True)
class Job:
    """What a tool is to fetch, and where from."""

    endpoint: str
    bucket: str
    key: str
    path: Path  # the file to write
    access_key: str
    secret_key: str
    region: str


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_STRIPPED)}
    # The modelpull this harness imported, also in the processes it starts.
    src = str(Path(modelpull.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def modelpull_env(tool: Tool, job: Job, timeouts: Timeouts) -> dict[str, str]:
    """What a TOS deployment sets, pointed at the cell's endpoint (no ``AWS_*`` keys)."""
    env = {
        "TOS_ACCESS_KEY": job.access_key,
        "TOS_SECRET_KEY": job.secret_key,
        "TOS_ENDPOINT": job.endpoint,
        "TOS_REGION": job.region,
        # Loopback: path-style on the S3 side, custom-domain mode on the TOS side.
        "MODELPULL_ADDRESSING_STYLE": "path",
        "MODELPULL_BACKEND": tool.backend or "boto3",
    }
    if timeouts.read is not None:
        env["MODELPULL_READ_TIMEOUT"] = f"{timeouts.read:g}"
    if timeouts.stall is not None:
        env["MODELPULL_SPEED_TIME"] = f"{timeouts.stall:g}"
    if timeouts.connect is not None:
        env["MODELPULL_CONNECT_TIMEOUT"] = f"{timeouts.connect:g}"
    return env


def _finish(proc: subprocess.Popen[str], cap: float) -> tuple[str, str, bool]:
    """The process's stdout and stderr, and whether it had to be killed at ``cap``."""
    try:
        out, err = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return out, err, True
    return out, err, False


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            found = json.loads(line)
            if isinstance(found, dict):
                return found
    return None


def _run_sdk(tool: Tool, job: Job, timeouts: Timeouts, cap: float) -> dict[str, Any]:
    args = {
        "tool": tool.sdk,
        "endpoint": job.endpoint,
        "bucket": job.bucket,
        "key": job.key,
        "path": str(job.path),
        "region": job.region,
        "access_key": job.access_key,
        "secret_key": job.secret_key,
        "read_timeout": timeouts.read,
        "connect_timeout": timeouts.connect,
    }
    env = _base_env() | {
        "AWS_ACCESS_KEY_ID": job.access_key,
        "AWS_SECRET_ACCESS_KEY": job.secret_key,
        "AWS_REGION": "us-east-1",
    }
    if tool.retry_mode is not None:
        env["AWS_RETRY_MODE"] = tool.retry_mode
    argv = [sys.executable, str(HERE / "sdk_arm.py"), json.dumps(args)]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err, killed = _finish(proc, cap)
    seconds = time.monotonic() - started
    found = _last_json(out)
    if killed:
        return {"ok": False, "capped": True, "seconds": cap, "process_seconds": round(seconds, 2)}
    if found is None:
        tail = err.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"{tool.id}: the SDK arm printed no result: {tail[0]}")
    return {
        "ok": found["ok"],
        "seconds": found["seconds"],
        "process_seconds": round(seconds, 2),
        "error": found.get("error"),
        "settings": found.get("settings"),
    }


# A sample of the Prometheus text format: name{label="value",...} value
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _metrics(text: str) -> tuple[dict[str, int], dict[str, int], float | None]:
    """Requests by ``METHOD status``, retries by reason and the pull's duration, from a
    metrics textfile."""
    requests: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    duration = None
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels_text, value = match.groups()
        labels = dict(_LABEL.findall(labels_text or ""))
        if name == "modelpull_pull_duration_seconds":
            duration = round(float(value), 2)
        elif name == "modelpull_requests_total":
            requests[f"{labels['method']} {labels['status']}"] += round(float(value))
        elif name == "modelpull_retries_total":
            retries[labels["reason"]] += round(float(value))
    return dict(requests), dict(retries), duration


def _run_modelpull(tool: Tool, job: Job, timeouts: Timeouts, cap: float) -> dict[str, Any]:
    env = _base_env() | modelpull_env(tool, job, timeouts)
    uri = f"tos://{job.bucket}/{job.key}"
    with tempfile.TemporaryDirectory(prefix="matrix-metrics-") as scratch:
        metrics = Path(scratch) / "pull.prom"
        argv = [sys.executable, "-m", "modelpull", "pull", uri, str(job.path), "--json"]
        argv += ["--no-progress", "--metrics-file", str(metrics)]
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        out, err, killed = _finish(proc, cap)
        seconds = time.monotonic() - started
        counted = _metrics(metrics.read_text()) if metrics.exists() else ({}, {}, None)
    requests, retries, duration = counted
    if killed:
        return {"ok": False, "capped": True, "seconds": cap, "process_seconds": round(seconds, 2)}
    found = _last_json(out) or {}
    result: dict[str, Any] = {
        "ok": proc.returncode == 0,
        "seconds": duration if duration is not None else round(seconds, 2),
        "process_seconds": round(seconds, 2),
        "exit_code": proc.returncode,
        "statuses": requests,
        "retries": retries,
    }
    if proc.returncode != 0:
        error = dict(found.get("error") or {"type": "?", "message": err.strip()[-300:]})
        error.pop("bucket", None)
        error.pop("key", None)
        error.pop("path", None)
        result["error"] = error
        result["stderr"] = err.strip().splitlines()[-1] if err.strip() else ""
    return result


def run_inprocess(tool: Tool, job: Job, timeouts: Timeouts) -> dict[str, Any]:
    """modelpull in this process, through the API the CLI calls: the same fields as the
    CLI's run (exit code by the CLI's table, the error as ``--json`` reports it, the
    requests and retries its metrics would count). No cap: for faults that end soon."""
    from modelpull.cli.exits import exit_code
    from modelpull.errors import ModelPullError
    from modelpull.events import Event, PartRetried, RequestFinished
    from modelpull.resolve import resolve

    requests: Counter[str] = Counter()
    retries: Counter[str] = Counter()

    def observe(event: Event) -> None:
        if isinstance(event, RequestFinished):
            requests[f"{event.method} {event.status}"] += 1
        elif isinstance(event, PartRetried):
            retries[event.reason] += 1

    env = modelpull_env(tool, job, timeouts)
    started = time.monotonic()
    error: dict[str, Any] | None = None
    code = 0
    try:
        with resolve(f"tos://{job.bucket}/{job.key}", environ=env) as target:
            modelpull.pull(target, job.path, observers=[observe])
    except ModelPullError as exc:
        code = exit_code(exc)
        error = {"type": type(exc).__name__, "message": str(exc)}
        for name in ("status", "code", "request_id"):
            if getattr(exc, name, None) is not None:
                error[name] = getattr(exc, name)
    result: dict[str, Any] = {
        "ok": error is None,
        "seconds": round(time.monotonic() - started, 2),
        "exit_code": code,
        "statuses": dict(requests),
        "retries": dict(retries),
    }
    if error is not None:
        result["error"] = error
    return result


def run(
    tool: Tool, job: Job, timeouts: Timeouts, cap: float, *, inprocess: bool = False
) -> dict[str, Any]:
    """``tool`` fetching ``job``, killed at ``cap`` seconds (``capped`` in the result)."""
    if tool.kind == "sdk":
        return _run_sdk(tool, job, timeouts, cap)
    if inprocess:
        return run_inprocess(tool, job, timeouts)
    return _run_modelpull(tool, job, timeouts, cap)
