"""Side-by-side download benchmark: modelpull against s5cmd, boto3, the TOS SDK and a ceiling.

A generated model folder (two shards, 2/3 and 1/3 of ``--size-gib``, plus small JSON
files) is served by ``rclone serve s3`` on loopback. Every arm is a separate process
pulling the whole folder into a fresh destination; arms are interleaved, in a rotated
order each round, so drift on the machine hits them all alike. Each run is timed (wall
clock around the process), its peak RSS and CPU time are read from ``wait4``, and what it
wrote is checked byte for byte (SHA-256) against the source before it is deleted.

Run from the repository root (see benchmarks/README.md)::

    .venv/bin/python benchmarks/bench_pull.py                       # 1.5 GiB, 3 rounds
    .venv/bin/python benchmarks/bench_pull.py --size-gib 0.25 --rounds 1 --arms modelpull,s5cmd

Results: a Markdown table on stdout, and benchmarks/results/latest.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from _s3 import admin_client
from modelpull.demo import RcloneS3Server
from modelpull.demo.rclone import find_rclone

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
MiB = 1 << 20
GiB = 1 << 30
MB = 1e6
BUCKET = "models"
PREFIX = "bench-model/"
CHUNK = 64 * MiB
# Connection resets in the --faults arms: 5% of ranged GETs, cut after this many bytes.
RESET_P = 0.05
RESET_AFTER = 8 * MiB
SMALL_FILES: dict[str, Any] = {
    "config.json": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "torch_dtype": "float16",
    },
    "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6},
    "tokenizer.json": {
        "version": "1.0",
        "model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(20_000)}},
    },
    "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast"},
    "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>"},
}
DEFAULT_ARMS = (
    "modelpull",
    "modelpull-noverify",
    "modelpull-strict",
    "modelpull-c32",
    "boto3-default",
    "boto3-aibrix",
    "tos-sdk",
    "s5cmd",
    "ceiling",
)
FAULT_ARMS = ("modelpull-proxy", "modelpull-proxy-resets")
ALL_ARMS = DEFAULT_ARMS + FAULT_ARMS
PROXY_ARMS = frozenset(FAULT_ARMS)
NO_OUTPUT_ARMS = frozenset({"ceiling"})
STATE_DIR = ".modelpull"


# --- the model folder ------------------------------------------------------------------


def model_layout(size_gib: float) -> dict[str, int]:
    """File name -> size in bytes of the shards (2/3 and 1/3 of the size, whole MiB)."""
    total_mib = round(size_gib * 1024)
    first = round(total_mib * 2 / 3)
    second = total_mib - first
    if first < 1 or second < 1:
        raise SystemExit(f"--size-gib {size_gib} is too small: each shard needs a MiB")
    return {
        "model-00001-of-00002.safetensors": first * MiB,
        "model-00002-of-00002.safetensors": second * MiB,
    }


def write_model(folder: Path, size_gib: float) -> None:
    """Shards of random bytes (they do not compress), rewritten only when the size is off."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = model_layout(size_gib)
    for name, size in shards.items():
        path = folder / name
        if path.is_file() and path.stat().st_size == size:
            continue
        print(f"writing {path} ({size / GiB:.2f} GiB)", file=sys.stderr)
        with path.open("wb") as out:
            left = size
            while left:
                n = min(CHUNK, left)
                out.write(os.urandom(n))
                left -= n
    weight_map = {f"model.layers.{i}.weight": name for i, name in enumerate(shards)}
    docs = {
        **SMALL_FILES,
        "model.safetensors.index.json": {
            "metadata": {"total_size": sum(shards.values())},
            "weight_map": weight_map,
        },
    }
    for name, doc in docs.items():
        text = json.dumps(doc, indent=2) + "\n"
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    # Files left by another size would be served too: the folder holds this model only.
    for path in folder.iterdir():
        if path.name not in shards and path.name not in docs:
            raise SystemExit(f"{path} is not part of the benchmark model: remove it")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``folder`` (hashed in parallel).

    modelpull's own state folder (``.modelpull/``: resume records and locks) is no part
    of the model, so it is left out.
    """
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != STATE_DIR
    )
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        digests = list(pool.map(sha256_file, files))
    return {p.relative_to(folder).as_posix(): d for p, d in zip(files, digests, strict=True)}


def source_hashes(folder: Path, cache: Path) -> dict[str, str]:
    """The model's hashes, kept in ``cache`` while every file's size and mtime hold."""
    stamp = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())}
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(cache.read_text())
        if saved["stamp"] == stamp:
            return dict(saved["sha256"])
    hashes = tree_hashes(folder)
    cache.write_text(json.dumps({"stamp": stamp, "sha256": hashes}, indent=1))
    return hashes


def verify(dest: Path, expected: dict[str, str], arm: str) -> None:
    got = tree_hashes(dest)
    if got == expected:
        return
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if got[k] != expected[k])
    raise RuntimeError(
        f"{arm}: destination differs from the source: "
        f"missing {missing[:5]}, unexpected {extra[:5]}, wrong bytes {wrong[:5]}"
    )


# --- servers ---------------------------------------------------------------------------


def _answers(host: str, port: int, path: str = "/") -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
    except OSError:
        return None
    finally:
        conn.close()
    return response.status


def upload(endpoint: str, access_key: str, secret_key: str, source: Path) -> None:
    """PUT each file through the S3 API with a CRC-64/NVME checksum, as AWS S3 stores one
    for every new object: rclone then publishes it (and its MD5 ETag) on HEAD.

    rclone keeps checksums sent with a PUT in memory only, so the upload is redone for
    every run of the benchmark (a few seconds) instead of serving files from disk.
    """
    client = admin_client(endpoint, access_key, secret_key)
    for path in sorted(source.iterdir()):
        with path.open("rb") as body:
            client.put_object(
                Bucket=BUCKET, Key=PREFIX + path.name, Body=body, ChecksumAlgorithm="CRC64NVME"
            )


def warm_up(endpoint: str, access_key: str, secret_key: str, anon_endpoint: str | None) -> None:
    """List the model so each rclone computes and caches its MD5 ETags before timing."""
    client = admin_client(endpoint, access_key, secret_key)
    client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    if anon_endpoint is not None:
        # The anonymous server's bucket is the model folder; its own ETag cache is cold.
        host_port = anon_endpoint.removeprefix("http://")
        host, port = host_port.rsplit(":", 1)
        status = _answers(host, int(port), f"/{PREFIX.rstrip('/')}?list-type=2")
        if status != 200:
            raise RuntimeError(f"anonymous rclone listing answered {status}")


# --- arms ------------------------------------------------------------------------------


@dataclass
class Context:
    """What the arms need to build their command lines."""

    endpoint: str
    tos_endpoint: str | None
    proxy_url: str | None
    modelpull_args: list[str]
    modelpull_env: dict[str, str]


@dataclass
class Arm:
    name: str
    describe: str
    command: Callable[[Context, Path], list[str]]
    env: Callable[[Context], dict[str, str]] = lambda ctx: {}
    endpoint: Callable[[Context], str] = lambda ctx: ctx.endpoint


def _modelpull(extra: Sequence[str]) -> Callable[[Context, Path], list[str]]:
    def command(ctx: Context, dest: Path) -> list[str]:
        uri = f"s3://{BUCKET}/{PREFIX}"
        mp = str(BIN / "modelpull")
        return [mp, "pull", uri, str(dest), "--no-progress", *extra, *ctx.modelpull_args]

    return command


def _modelpull_env(ctx: Context) -> dict[str, str]:
    return {"MODELPULL_ADDRESSING_STYLE": "path", **ctx.modelpull_env}


def _proxy_endpoint(ctx: Context) -> str:
    assert ctx.proxy_url is not None
    return ctx.proxy_url


def _helper(script: str, *extra: str) -> Callable[[Context, Path], list[str]]:
    def command(ctx: Context, dest: Path) -> list[str]:
        return [sys.executable, str(HERE / script), BUCKET, PREFIX, str(dest), *extra]

    return command


def _tos(ctx: Context, dest: Path) -> list[str]:
    assert ctx.tos_endpoint is not None
    return [*_helper("_tos_download.py")(ctx, dest), "--tos-endpoint", ctx.tos_endpoint]


def _s5cmd(ctx: Context, dest: Path) -> list[str]:
    source = f"s3://{BUCKET}/{PREFIX}*"
    return [str(BIN / "s5cmd"), "--endpoint-url", ctx.endpoint, "cp", source, f"{dest}/"]


def _ceiling(ctx: Context, dest: Path) -> list[str]:
    return [sys.executable, str(HERE / "_ceiling.py"), BUCKET, PREFIX]


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("modelpull", "modelpull pull --no-progress", _modelpull([]), _modelpull_env),
        Arm(
            "modelpull-noverify",
            "modelpull pull --no-progress --verify off",
            _modelpull(["--verify", "off"]),
            _modelpull_env,
        ),
        Arm(
            "modelpull-c32",
            "modelpull pull --no-progress --concurrency 32 --part-size 64MiB (the tos-sdk arm's)",
            _modelpull(["--concurrency", "32", "--part-size", "64MiB"]),
            _modelpull_env,
        ),
        Arm(
            "modelpull-strict",
            "modelpull pull --no-progress --verify strict (CRC64NVME and the MD5 ETag)",
            _modelpull(["--verify", "strict"]),
            _modelpull_env,
        ),
        Arm(
            "boto3-default",
            "boto3 download_file per file, default TransferConfig",
            _helper("_boto3_download.py"),
        ),
        Arm(
            "boto3-aibrix",
            "boto3 download_file per file, AIBrix TransferConfig (64 MiB, 32 threads)",
            _helper("_boto3_download.py", "--aibrix"),
        ),
        Arm(
            "tos-sdk",
            "TOS SDK download_file per file (64 MiB parts, 32 tasks)",
            _tos,
        ),
        Arm("s5cmd", "s5cmd cp 's3://models/bench-model/*' (defaults)", _s5cmd),
        Arm("ceiling", "16 threads x 32 MiB ranged GETs, bytes discarded", _ceiling),
        Arm(
            "modelpull-proxy",
            "modelpull through the fault proxy, no faults",
            _modelpull([]),
            _modelpull_env,
            _proxy_endpoint,
        ),
        Arm(
            "modelpull-proxy-resets",
            f"modelpull through the fault proxy, {RESET_P:.0%} of ranged GETs reset",
            _modelpull([]),
            _modelpull_env,
            _proxy_endpoint,
        ),
    )
}


# --- running ---------------------------------------------------------------------------


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


def clean_env(ctx: Context, arm: Arm, access_key: str, secret_key: str) -> dict[str, str]:
    """os.environ without any store or tool settings, then the benchmark's own."""
    prefixes = ("AWS_", "MODELPULL_", "TOS_", "DOWNLOADER_", "S3_", "RCLONE_")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(prefixes)}
    env.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=arm.endpoint(ctx),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(arm.env(ctx))
    return env


def run_once(
    arm: Arm, command: list[str], env: dict[str, str], logs: Path, total_bytes: int
) -> tuple[float, float, float]:
    """Run ``command``; its wall seconds, peak RSS (MB) and CPU seconds. Raises on failure.

    Through ``_measure.py``, which times the command with ``perf_counter`` and reads
    ``wait4``'s rusage: see its docstring for why the command is not spawned from here.
    """
    measured = logs / f"{arm.name}.json"
    # Dirty pages left by the upload or by the previous arm would be written back during
    # this one, on the same 2 cores and disk: flush them first, for every arm alike.
    os.sync()
    launcher = [sys.executable, "-I", "-S", str(HERE / "_measure.py"), str(measured)]
    stdout = (logs / f"{arm.name}.out").open("wb")
    stderr = (logs / f"{arm.name}.err").open("wb")
    with stdout, stderr:
        done = subprocess.run(
            [*launcher, *command],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        tail = (logs / f"{arm.name}.err").read_text(errors="replace")[-3000:]
        raise RuntimeError(
            f"{arm.name} exited with {done.returncode}: {shlex.join(command)}\n{tail}"
        )
    usage = json.loads(measured.read_text())
    if arm.name in NO_OUTPUT_ARMS:
        reported = json.loads((logs / f"{arm.name}.out").read_text())["bytes"]
        if reported != total_bytes:
            raise RuntimeError(f"{arm.name} read {reported} bytes, not {total_bytes}")
    # ru_maxrss is in KiB on Linux: the largest RSS of the command (and of any child it
    # waited for), not their sum.
    return usage["seconds"], usage["maxrss_kib"] * 1024 / MB, usage["cpu_seconds"]


def command_line(arm: Arm, ctx: Context) -> str:
    """The arm's command as a shell line, with its endpoint and own variables."""
    env = {"AWS_ENDPOINT_URL": arm.endpoint(ctx), **arm.env(ctx)}
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return " ".join([*assigns, shlex.join(arm.command(ctx, Path("DEST")))])


def rotated(arms: Sequence[str], round_index: int) -> list[str]:
    k = round_index % len(arms)
    return [*arms[k:], *arms[:k]]


# --- reporting -------------------------------------------------------------------------


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


def summarise(runs: list[Run], arms: Sequence[str]) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in arms:
        mine = [r for r in runs if r.arm == name]
        if not mine:
            continue
        speeds = [r.mb_per_s for r in mine]
        out[name] = Summary(
            arm=name,
            describe=ARMS[name].describe,
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


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unavailable"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) * 1024 / 1e9
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
        "cpu": cpu,
        "ram_gb": round(ram_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "rclone": _first_line([str(find_rclone()), "version"]),
        "s5cmd": _first_line([str(BIN / "s5cmd"), "version"]),
        "git": commit + (" (modified)" if dirty not in ("", "unknown") else ""),
    }


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


# --- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size-gib", type=float, default=1.5, help="shard bytes (default 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--arms",
        help=f"comma-separated arms (default: all but the fault arms)\n{', '.join(ALL_ARMS)}",
    )
    parser.add_argument("--faults", action="store_true", help="add the fault-proxy arms")
    parser.add_argument(
        "--data", type=Path, help="keep the generated model here and reuse it next time"
    )
    parser.add_argument(
        "--tmp", type=Path, default=Path("/tmp"), help="where destinations go (default /tmp)"
    )
    parser.add_argument(
        "--modelpull-args", default="", help="extra flags for the modelpull arms (one string)"
    )
    parser.add_argument(
        "--modelpull-env",
        action="append",
        default=[],
        metavar="K=V",
        help="environment for the modelpull arms (repeatable)",
    )
    parser.add_argument(
        "--results", type=Path, default=HERE / "results", help="default benchmarks/results"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="report a failed arm and go on without it"
    )
    args = parser.parse_args(argv)
    arms = args.arms.split(",") if args.arms else list(DEFAULT_ARMS)
    if args.faults:
        arms += [a for a in FAULT_ARMS if a not in arms]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(ALL_ARMS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for item in args.modelpull_env:
        if "=" not in item:
            parser.error(f"--modelpull-env takes K=V, not {item!r}")
    args.arm_list = arms
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    arms: list[str] = args.arm_list
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-")))
        data = args.data.resolve() if args.data else work / "data"
        model = data / "source" / PREFIX.rstrip("/")
        write_model(model, args.size_gib)
        expected = source_hashes(model, data / "source-sha256.json")
        total_bytes = sum((model / name).stat().st_size for name in expected)

        root = work / "s3"  # each folder below is a bucket
        (root / BUCKET).mkdir(parents=True)
        server = stack.enter_context(RcloneS3Server(root))
        creds = server.credentials
        print("uploading the model with CRC64NVME checksums", file=sys.stderr)
        upload(server.endpoint_url, creds.access_key, creds.secret_key, model)
        tos_endpoint = None
        if "tos-sdk" in arms:
            # Rooted at the bucket folder: the SDK's /bench-model/<file> is bucket + key.
            anonymous = RcloneS3Server(root / BUCKET, anonymous=True)
            tos_endpoint = stack.enter_context(anonymous).endpoint_url
        warm_up(server.endpoint_url, creds.access_key, creds.secret_key, tos_endpoint)

        proxy = reset_rule = None
        if PROXY_ARMS & set(arms):
            sys.path.insert(0, str(REPO))
            from tests.faults.proxy import FaultProxy, Rule, reset_after

            proxy = stack.enter_context(FaultProxy(server.endpoint_url))
            reset_rule = Rule(
                reset_after(RESET_AFTER),
                method="GET",
                ranged_only=True,
                times=None,
                p=RESET_P,
                seed=1,
            )

        ctx = Context(
            endpoint=server.endpoint_url,
            tos_endpoint=tos_endpoint,
            proxy_url=proxy.url if proxy is not None else None,
            modelpull_args=shlex.split(args.modelpull_args),
            modelpull_env=dict(item.split("=", 1) for item in args.modelpull_env),
        )
        logs = work / "logs"
        logs.mkdir()
        runs: list[Run] = []
        failed: dict[str, str] = {}
        print(
            f"{total_bytes / MB:.0f} MB in {len(expected)} files; arms: {', '.join(arms)}; "
            f"{args.rounds} round(s)",
            file=sys.stderr,
        )
        for round_index in range(args.rounds):
            for name in rotated(arms, round_index):
                if name in failed:
                    continue
                arm = ARMS[name]
                dest = work / f"dest-{name}-{round_index}"
                dest.mkdir()
                command = arm.command(ctx, dest)
                env = clean_env(ctx, arm, creds.access_key, creds.secret_key)
                if proxy is not None:
                    proxy.clear_rules()
                    proxy.reset_counters()
                    if name == "modelpull-proxy-resets":
                        assert reset_rule is not None
                        proxy.add_rule(reset_rule)
                try:
                    seconds, rss, cpu = run_once(arm, command, env, logs, total_bytes)
                    if name not in NO_OUTPUT_ARMS:
                        verify(dest, expected, name)
                except RuntimeError as exc:
                    if not args.keep_going:
                        raise
                    failed[name] = str(exc)
                    print(f"FAILED {exc}", file=sys.stderr)
                    continue
                finally:
                    shutil.rmtree(dest, ignore_errors=True)
                fired = None
                if proxy is not None and reset_rule is not None and name.endswith("-resets"):
                    fired = proxy.fired(reset_rule)
                run = Run(
                    arm=name,
                    round=round_index + 1,
                    seconds=seconds,
                    mb_per_s=total_bytes / MB / seconds,
                    peak_rss_mb=rss,
                    cpu_seconds=cpu,
                    cpu_s_per_gb=cpu / (total_bytes / 1e9),
                    faults_fired=fired,
                )
                runs.append(run)
                extra = f", {fired} resets" if fired is not None else ""
                print(
                    f"round {run.round} {name:24} {run.mb_per_s:7.0f} MB/s "
                    f"{run.seconds:6.2f} s  RSS {rss:5.0f} MB  CPU {cpu:5.2f} s{extra}",
                    file=sys.stderr,
                )

    summaries = summarise(runs, arms)
    goals = targets(summaries)
    info = machine_info()
    params = {
        "size_gib": args.size_gib,
        "total_bytes": total_bytes,
        "files": len(expected),
        "rounds": args.rounds,
        "arms": arms,
        "modelpull_args": ctx.modelpull_args,
        "modelpull_env": ctx.modelpull_env,
        "commands": {name: command_line(ARMS[name], ctx) for name in arms},
    }
    report = markdown(summaries, goals, info, params)
    if failed:
        report += "\nFailed arms:\n\n" + "".join(
            f"- `{k}`: {v.splitlines()[0]}\n" for k, v in failed.items()
        )
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "latest.md").write_text(report)
    document = {
        "params": params,
        "machine": info,
        "summary": {
            k: {f: x for f, x in asdict(v).items() if f != "runs"} for k, v in summaries.items()
        },
        "targets": [asdict(t) for t in goals],
        "runs": [asdict(r) for r in runs],
        "failed": failed,
    }
    (args.results / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
