"""Resume after kill -9, and clean stops on Ctrl-C and SIGTERM, with a slowed-down store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import S3Store, parts_done, run_cli, start_cli, wait_until

from .proxy import FaultProxy, Rule, delay

# Every test here pulls through a store slowed down to seconds a pull.
pytestmark = pytest.mark.slow

MiB = 1 << 20
SIZE = 24 * MiB
DATA = os.urandom(SIZE)


@pytest.fixture
def slow(rclone_store: S3Store) -> Iterator[tuple[FaultProxy, str]]:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/w.bin", DATA)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        # About 3 MB/s per connection: a pull takes several seconds.
        proxy.add_rule(Rule(delay(seconds_per_chunk=0.02), method="GET", times=None))
        yield proxy, bucket


def start(store: S3Store, proxy: FaultProxy, bucket: str, dest: Path) -> subprocess.Popen[str]:
    env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    args = ["pull", f"s3://{bucket}/m/", str(dest), "--part-size", "1MiB", "--concurrency", "2"]
    return start_cli([*args, "--json"], env)


def wait_for_parts(proc: subprocess.Popen[str], dest: Path, n: int) -> None:
    wait_until(f"{n} parts in the journal", lambda: parts_done(dest) >= n, [proc])


def kill_9_after(store: S3Store, proxy: FaultProxy, bucket: str, dest: Path, n: int) -> None:
    """A pull into ``dest`` killed with SIGKILL once ``n`` parts are in its journal."""
    proc = start(store, proxy, bucket, dest)
    wait_for_parts(proc, dest, n)
    proc.kill()
    proc.communicate()


def test_kill_9_then_resume(
    rclone_store: S3Store, slow: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, bucket = slow
    kill_9_after(rclone_store, proxy, bucket, tmp_path, 14)
    assert not (tmp_path / "w.bin").exists()
    kept = parts_done(tmp_path)
    assert kept >= 14

    proxy.clear_rules()
    proxy.reset_counters()
    rerun = start(rclone_store, proxy, bucket, tmp_path)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert (tmp_path / "w.bin").read_bytes() == DATA
    fetched = sum(r.body_bytes for r in proxy.log if r.method == "GET" and "w.bin" in r.path)
    # Only the parts the journal did not hold were fetched again.
    assert fetched <= SIZE - kept * MiB
    assert fetched < SIZE // 2
    assert json.loads(out)["bytes_downloaded"] == fetched
    assert list((tmp_path / ".modelpull" / "incomplete").iterdir()) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_quickly_and_keeps_the_journal(
    rclone_store: S3Store, slow: tuple[FaultProxy, str], tmp_path: Path, signum: int, code: int
) -> None:
    proxy, bucket = slow
    proc = start(rclone_store, proxy, bucket, tmp_path)
    wait_for_parts(proc, tmp_path, 2)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "run the same command again to resume" in err
    assert not (tmp_path / "w.bin").exists()
    assert parts_done(tmp_path) >= 2

    proxy.clear_rules()
    rerun = start(rclone_store, proxy, bucket, tmp_path)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert (tmp_path / "w.bin").read_bytes() == DATA


def test_journal_of_another_version_is_not_trusted(
    rclone_store: S3Store, slow: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, bucket = slow
    kill_9_after(rclone_store, proxy, bucket, tmp_path, 4)
    # The object is replaced between the two runs: the kept parts belong to the old one.
    new = os.urandom(SIZE)
    rclone_store.put(bucket, "m/w.bin", new)
    proxy.clear_rules()
    proxy.reset_counters()
    rerun = start(rclone_store, proxy, bucket, tmp_path)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert (tmp_path / "w.bin").read_bytes() == new
    assert sum(r.body_bytes for r in proxy.log if r.method == "GET" and "w.bin" in r.path) == SIZE


def test_status_lines_when_stderr_is_a_pipe(
    rclone_store: S3Store, slow: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, bucket = slow
    env = rclone_store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    proc = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path), "--progress-interval", "0.3"], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    # Plain lines for container logs: no carriage returns, no bar drawing.
    assert len(lines) >= 3
    assert "\r" not in proc.stderr
    # Until the files are known a line says "listing"; then bytes, files and rate.
    assert all(
        line.startswith("modelpull: listing")
        or (line.startswith("modelpull: ") and "MB/s" in line and "files" in line)
        for line in lines
    )
    assert "24.00 MiB / 24.00 MiB (100%), 1/1 files" in lines[-1]
