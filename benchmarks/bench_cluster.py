"""Cluster pull benchmark: N simulated nodes against N independent pulls, on this machine.

A generated model (two shards, 2/3 and 1/3 of ``--size-mib``, plus small JSON files) is
served by ``rclone serve s3`` on loopback. For each N in ``--nodes``, two arms run, in
alternating order each round:

- ``cluster``: N processes of ``modelpull pull --distributed`` with the variables
  torchrun would set and the testing switch ``MODELPULL_DIST_NODE_PER_RANK=1``, so each
  rank is a node of its own with its own DEST; the shares are exchanged over gloo on
  loopback;
- ``independent``: N plain ``modelpull pull`` processes at once, one DEST each: what N
  nodes do without the cluster pull.

Wall time is from the first start to the last exit. Egress (object bytes the store
served) is the sum of every rank's ``bytes_downloaded`` from its ``--json`` summary: the
test suite checks that this equals what a counting proxy in front of the store sees
(``tests/functional/test_cluster.py``); ``--proxy`` also counts at the fault proxy here,
at the cost of its throughput (it is pure Python). Every DEST is checked byte for byte
(SHA-256) against the source. Peak RSS is the largest of the ranks' (``wait4``).

All ranks share this machine's cores, disk and loopback, so the wall times show the
cost of the exchange, not what separate nodes with their own network would gain: the
egress column is the result that carries over to a real cluster.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cluster.py                    # 512 MiB, N = 1, 2, 4
    .venv/bin/python benchmarks/bench_cluster.py --size-mib 256 --nodes 2 --proxy
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _s3 import admin_client
from modelpull.demo import RcloneS3Server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20
BUCKET = "models"
PREFIX = "bench-model/"
SMALL_FILES = {
    "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}),
    "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": 2}),
    "tokenizer.json": json.dumps({"model": {"vocab": {f"tok{i}": i for i in range(20_000)}}}),
}


@dataclass
class Run:
    nodes: int
    mode: str
    seconds: float
    egress: int
    proxy_egress: int | None
    peak_rss_mb: float
    verified: bool


def write_model(folder: Path, size_mib: int) -> dict[str, str]:
    """The model's files under ``folder``; returns path -> SHA-256."""
    folder.mkdir(parents=True)
    rng = random.Random(20)
    shards = {
        "model-00001-of-00002.safetensors": size_mib * 2 // 3 * MiB,
        "model-00002-of-00002.safetensors": (size_mib - size_mib * 2 // 3) * MiB + 12345,
    }
    hashes = {}
    for name, size in shards.items():
        digest = hashlib.sha256()
        with (folder / name).open("wb") as f:
            left = size
            while left:
                block = rng.randbytes(min(left, 64 * MiB))
                f.write(block)
                digest.update(block)
                left -= len(block)
        hashes[name] = digest.hexdigest()
    for name, text in SMALL_FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
        hashes[name] = hashlib.sha256(text.encode()).hexdigest()
    return hashes


def tree_hashes(folder: Path) -> dict[str, str]:
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and ".modelpull" not in path.relative_to(folder).parts:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(8 * MiB):
                    digest.update(block)
            found[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return found


def warm_up(endpoint: str, access_key: str, secret_key: str) -> None:
    """List and HEAD every object once: rclone hashes a file (for its MD5 ETag) when first
    asked, and that should not land on the first timed run."""
    client = admin_client(endpoint, access_key, secret_key)
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", ()):
        client.head_object(Bucket=BUCKET, Key=obj["Key"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_arm(
    mode: str, nodes: int, env: dict[str, str], scratch: Path, expected: dict[str, str]
) -> tuple[float, int, float, bool]:
    """Start the arm's processes, wait for all; (seconds, egress, peak RSS MB, verified)."""
    uri = f"s3://{BUCKET}/{PREFIX}"
    dests = [scratch / f"dest-{mode}-{r}" for r in range(nodes)]
    logs = []
    procs = []
    cluster_env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(nodes),
        "LOCAL_WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MODELPULL_DIST_NODE_PER_RANK": "1",
    }
    started = time.monotonic()
    for rank, dest in enumerate(dests):
        # Through _measure.py: spawned from here, a rank's peak RSS would count ours.
        measure = [sys.executable, "-I", "-S", str(HERE / "_measure.py")]
        measure.append(str(scratch / f"{mode}-{rank}.rusage.json"))
        command = [*measure, sys.executable, "-m", "modelpull", "pull", uri, str(dest)]
        command += ["--json", "--no-progress"]
        proc_env = dict(env)
        if mode == "cluster":
            command.append("--distributed")
            proc_env |= cluster_env | {"RANK": str(rank)}
        out = (scratch / f"{mode}-{rank}.out").open("w+")
        err = (scratch / f"{mode}-{rank}.err").open("w+")
        logs.append((out, err))
        procs.append(subprocess.Popen(command, env=proc_env, stdout=out, stderr=err))
    for proc in procs:
        proc.wait()
    seconds = time.monotonic() - started
    egress = 0
    peak = 0
    for rank, (out, err) in enumerate(logs):
        out.seek(0)
        err.seek(0)
        if procs[rank].returncode:
            raise SystemExit(f"{mode} rank {rank} failed:\n{err.read()[-4000:]}")
        egress += int(json.loads(out.read().strip().splitlines()[-1])["bytes_downloaded"])
        usage = json.loads((scratch / f"{mode}-{rank}.rusage.json").read_text())
        peak = max(peak, int(usage["maxrss_kib"]))
        out.close()
        err.close()
    verified = all(tree_hashes(dest) == expected for dest in dests)
    for dest in dests:
        shutil.rmtree(dest)
    return seconds, egress, peak / 1024, verified


@contextlib.contextmanager
def counting_proxy(endpoint: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    sys.path.insert(0, str(REPO))
    from tests.faults.proxy import FaultProxy

    with FaultProxy(endpoint) as proxy:
        yield proxy


def markdown(runs: Sequence[Run], model_bytes: int, args: argparse.Namespace) -> str:
    lines = [
        "# Cluster pull benchmark",
        "",
        f"Model: {model_bytes / MiB:.0f} MiB in {2 + len(SMALL_FILES)} files; "
        f"{args.rounds} round(s), median shown; loopback `rclone serve s3`; all ranks on "
        f"one {os.cpu_count()}-core machine. Egress: the ranks' own `bytes_downloaded`"
        + (" (and at the counting proxy)" if args.proxy else "")
        + ".",
        "",
        "| nodes | mode | wall s | egress MiB | egress / model | peak RSS per rank MB | verified |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    keys = sorted({(r.nodes, r.mode) for r in runs}, key=lambda k: (k[0], k[1] != "cluster"))
    for nodes, mode in keys:
        mine = [r for r in runs if (r.nodes, r.mode) == (nodes, mode)]
        seconds = statistics.median(r.seconds for r in mine)
        egress = statistics.median(r.egress for r in mine)
        rss = max(r.peak_rss_mb for r in mine)
        proxy = [r.proxy_egress for r in mine if r.proxy_egress is not None]
        shown = f"{egress / MiB:.1f}" + (
            f" (proxy {statistics.median(proxy) / MiB:.1f})" if proxy else ""
        )
        ok = "yes" if all(r.verified for r in mine) else "NO"
        lines.append(
            f"| {nodes} | {mode} | {seconds:.1f} | {shown} | {egress / model_bytes:.3f} | "
            f"{rss:.0f} | {ok} |"
        )
    lines += [
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512, help="model size (default 512)")
    parser.add_argument("--nodes", default="1,2,4", help="simulated node counts (1,2,4)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per arm (default 1)")
    parser.add_argument("--proxy", action="store_true", help="also count egress at a proxy")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.nodes.split(",")]
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-")))
        root = scratch / "store"
        print(f"writing a {args.size_mib} MiB model", file=sys.stderr)
        expected = write_model(root / BUCKET / PREFIX.rstrip("/"), args.size_mib)
        model_bytes = sum(p.stat().st_size for p in (root / BUCKET).rglob("*") if p.is_file())
        server = stack.enter_context(RcloneS3Server(root))
        creds = server.credentials
        warm_up(server.endpoint_url, creds.access_key, creds.secret_key)
        proxy = stack.enter_context(counting_proxy(server.endpoint_url, args.proxy))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "MODELPULL_", "TOS_", "DOWNLOADER_"))
        } | {
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_ENDPOINT_URL": proxy.url if proxy is not None else server.endpoint_url,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "MODELPULL_ADDRESSING_STYLE": "path",
        }
        for round_index in range(args.rounds):
            for nodes in counts:
                modes = ["cluster", "independent"]
                if round_index % 2:
                    modes.reverse()
                for mode in modes:
                    if proxy is not None:
                        proxy.reset_counters()
                    seconds, egress, rss, ok = run_arm(mode, nodes, env, scratch, expected)
                    served = None
                    if proxy is not None:
                        served = sum(
                            r.body_bytes
                            for r in proxy.log
                            if r.method == "GET" and r.path.startswith(f"/{BUCKET}/{PREFIX}")
                        )
                    runs.append(Run(nodes, mode, seconds, egress, served, rss, ok))
                    print(
                        f"{nodes} {mode}: {seconds:.1f}s, egress {egress / model_bytes:.3f}x, "
                        f"RSS {rss:.0f} MB, verified {ok}",
                        file=sys.stderr,
                    )
    report = markdown(runs, model_bytes, args)
    print(report)
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    return 0 if all(r.verified for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
