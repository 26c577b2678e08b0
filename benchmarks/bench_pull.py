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
import http.client
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from _models import get_model
from _pullreport import Run, markdown, summarise, targets
from _runner import BIN, MB, Usage, clean_env, machine_info, measure, rotated
from _s3 import admin_client
from _stores import Store, upload_crc64
from _tree import compare, tree_hashes
from modelpull.demo import RcloneS3Server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20
BUCKET = "models"
PREFIX = "bench-model/"
# Connection resets in the --faults arms: 5% of ranged GETs, cut after this many bytes.
RESET_P = 0.05
RESET_AFTER = 8 * MiB
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


# --- the model folder ------------------------------------------------------------------


def shard_sizes(size_gib: float) -> list[int]:
    """The two shards' sizes in bytes: 2/3 and 1/3 of the size, whole MiB."""
    total_mib = round(size_gib * 1024)
    first = round(total_mib * 2 / 3)
    second = total_mib - first
    if first < 1 or second < 1:
        raise SystemExit(f"--size-gib {size_gib} is too small: each shard needs a MiB")
    return [first * MiB, second * MiB]


def verify(dest: Path, expected: dict[str, str], arm: str) -> None:
    problem = compare(tree_hashes(dest), expected)
    if problem is not None:
        raise RuntimeError(f"{arm}: {problem}")


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


def arm_env(ctx: Context, arm: Arm, access_key: str, secret_key: str) -> dict[str, str]:
    return clean_env(arm.endpoint(ctx), access_key, secret_key, arm.env(ctx))


def run_once(
    arm: Arm, command: list[str], env: dict[str, str], logs: Path, total_bytes: int
) -> Usage:
    """Run ``command`` (see ``_runner.measure``); raises RuntimeError on failure."""
    usage = measure(arm.name, command, env, logs)
    if arm.name in NO_OUTPUT_ARMS:
        reported = json.loads((logs / f"{arm.name}.out").read_text())["bytes"]
        if reported != total_bytes:
            raise RuntimeError(f"{arm.name} read {reported} bytes, not {total_bytes}")
    return usage


def command_line(arm: Arm, ctx: Context) -> str:
    """The arm's command as a shell line, with its endpoint and own variables."""
    env = {"AWS_ENDPOINT_URL": arm.endpoint(ctx), **arm.env(ctx)}
    assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return " ".join([*assigns, shlex.join(arm.command(ctx, Path("DEST")))])


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
        source = get_model(data, "big", shard_sizes=shard_sizes(args.size_gib))
        model, expected, total_bytes = source.folder, source.hashes, source.total_bytes

        root = work / "s3"  # each folder below is a bucket
        (root / BUCKET).mkdir(parents=True)
        server = stack.enter_context(RcloneS3Server(root))
        creds = server.credentials
        print("uploading the model with CRC64NVME checksums", file=sys.stderr)
        store = Store(server.endpoint_url, creds.access_key, creds.secret_key)
        upload_crc64(store, model, PREFIX)
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
                env = arm_env(ctx, arm, creds.access_key, creds.secret_key)
                if proxy is not None:
                    proxy.clear_rules()
                    proxy.reset_counters()
                    if name == "modelpull-proxy-resets":
                        assert reset_rule is not None
                        proxy.add_rule(reset_rule)
                try:
                    usage = run_once(arm, command, env, logs, total_bytes)
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
                    seconds=usage.seconds,
                    mb_per_s=total_bytes / MB / usage.seconds,
                    peak_rss_mb=usage.peak_rss_mb,
                    cpu_seconds=usage.cpu_seconds,
                    cpu_s_per_gb=usage.cpu_seconds / (total_bytes / 1e9),
                    faults_fired=fired,
                )
                runs.append(run)
                extra = f", {fired} resets" if fired is not None else ""
                print(
                    f"round {run.round} {name:24} {run.mb_per_s:7.0f} MB/s "
                    f"{run.seconds:6.2f} s  RSS {run.peak_rss_mb:5.0f} MB  "
                    f"CPU {run.cpu_seconds:5.2f} s{extra}",
                    file=sys.stderr,
                )

    summaries = summarise(runs, {name: ARMS[name].describe for name in arms})
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
