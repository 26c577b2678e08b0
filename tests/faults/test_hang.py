"""Every wait bounded: stalls abandoned, the deadline kept, stops prompt, and a store that
ignores ``Range`` served whole.

Faults come from FaultProxy in front of moto and rclone: a trickle (the headers, then a
byte every fraction of a second), a stall (no headers, or the headers and then nothing),
a lock held by this test process, a store answering every ranged GET with the whole
object. Bounds are asserted in seconds, with a margin for a busy machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from filelock import FileLock

import modelpull
from modelpull.config import PullConfig
from modelpull.events import BytesTransferred, Event, Observer
from modelpull.state import StateDir
from tests.helpers import S3Store, parts_done, rclone_slow, run_cli, start_cli, wait_until

from .proxy import FaultProxy, RequestRecord, Rule, ignore_range, reset_after, stall, trickle

MiB = 1 << 20
DATA = os.urandom(3 * MiB + 400_000)
OTHER = os.urandom(2 * MiB + 123_456)
WINDOW = 2.0  # speed_time for these tests, in seconds
DEADLINE = 4.0


@pytest.fixture
def proxy(store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(store.endpoint_url) as p:
        yield p


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put(name, "m/w.bin", DATA)
    return name


def config(proxy: FaultProxy, **overrides: object) -> PullConfig:
    base = PullConfig(
        endpoint_url=proxy.url,
        addressing_style="path",
        part_size=1 * MiB,
        io_chunk_size=256 * 1024,
        concurrency=1,
        speed_time=WINDOW,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def timed_pull(
    store: S3Store, cfg: PullConfig, bucket: str, dest: Path, observers: Sequence[Observer] = ()
) -> tuple[modelpull.PullResult, float]:
    began = time.monotonic()
    result = modelpull.pull(
        f"s3://{bucket}/m/", dest, config=cfg, credentials=store.credentials, observers=observers
    )
    return result, time.monotonic() - began


# --- stalls ------------------------------------------------------------------------------

STALLS = {
    # The second part's GET: headers, then one byte every half second.
    "get-trickle": Rule(trickle(0.5), method="GET", path="w.bin", ranged_only=True, skip=1),
    "get-stall-after-headers": Rule(stall(), method="GET", path="w.bin", ranged_only=True, skip=1),
    "get-stall-mid-body": Rule(
        stall(300_000), method="GET", path="w.bin", ranged_only=True, skip=1
    ),
    "get-no-headers": Rule(
        stall(before_headers=True), method="GET", path="w.bin", ranged_only=True, skip=1
    ),
    "head-no-headers": Rule(stall(before_headers=True), method="HEAD"),
    "list-no-headers": Rule(stall(before_headers=True), method="GET", query="list-type"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STALLS))
def test_a_stalled_request_is_abandoned_and_retried_within_the_window(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path, name: str
) -> None:
    rule = proxy.add_rule(replace(STALLS[name]))
    result, seconds = timed_pull(store, config(proxy), bucket, tmp_path)
    assert proxy.fired(rule) == 1
    assert result.retries == {"stall": 1}
    assert (tmp_path / "w.bin").read_bytes() == DATA
    # Abandoned once the window passed, not at the 60 s read timeout.
    assert WINDOW <= seconds < WINDOW + 3


@pytest.mark.slow
def test_the_defaults_abandon_a_trickle_within_30_seconds(
    moto_store: S3Store, tmp_path: Path
) -> None:
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/w.bin", DATA)
    with FaultProxy(moto_store.endpoint_url) as proxy:
        proxy.add_rule(Rule(trickle(2.0), method="GET", path="w.bin", ranged_only=True, skip=1))
        cfg = config(proxy, speed_time=PullConfig().speed_time)
        result, seconds = timed_pull(moto_store, cfg, bucket, tmp_path)
    assert result.retries == {"stall": 1}
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert seconds < 30


@pytest.mark.slow
def test_a_slow_but_steady_part_is_not_a_stall(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    # 16 KiB every 0.1 s: five times the limit, though one 512 KiB buffer takes over
    # three seconds to fill, longer than the window. Progress is seen read by read.
    proxy.add_rule(Rule(trickle(0.1, 16384), method="GET", path="w.bin", ranged_only=True))
    cfg = config(proxy, speed_limit=32 * 1024, io_chunk_size=512 * 1024)
    result, seconds = timed_pull(store, cfg, bucket, tmp_path)
    assert result.retries == {}
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert seconds > 2 * WINDOW


# --- the deadline ------------------------------------------------------------------------


def cli_args(bucket: str, dest: Path, *extra: str) -> list[str]:
    args = ["pull", f"s3://{bucket}/m/", str(dest), "--part-size", "1MiB", "--no-progress"]
    return [*args, *extra]


@pytest.mark.slow
def test_the_deadline_ends_a_trickling_pull_and_a_rerun_resumes(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    # Two parts arrive, then every GET trickles; the stall window is longer than the
    # deadline, so only the deadline can end the pull.
    proxy.add_rule(
        Rule(trickle(0.5), method="GET", path="w.bin", ranged_only=True, skip=2, times=None)
    )
    env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    args = cli_args(bucket, tmp_path, "--concurrency", "1", "--deadline", f"{DEADLINE:g}")
    began = time.monotonic()
    proc = run_cli(args, env)
    ended = time.monotonic()
    assert proc.returncode == 12, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelpull: error: the deadline of 4s passed")
    assert "run the same command again to resume" in lines[0]
    # The deadline counts from the pull's first request.
    first = min(r.at for r in proxy.log)
    assert ended - first < DEADLINE + 2
    assert ended - began < DEADLINE + 3
    assert not (tmp_path / "w.bin").exists()
    assert parts_done(tmp_path) == 2

    proxy.clear_rules()
    proxy.reset_counters()
    rerun = run_cli(cli_args(bucket, tmp_path), env)
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "w.bin").read_bytes() == DATA
    fetched = sum(r.body_bytes for r in proxy.log if r.method == "GET" and "w.bin" in r.path)
    assert fetched == len(DATA) - 2 * MiB


@pytest.mark.slow
def test_the_deadline_bounds_a_wait_for_another_process(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/w.bin", DATA)
    held = hold_lock(tmp_path)
    try:
        began = time.monotonic()
        proc = run_cli(cli_args(bucket, tmp_path, "--deadline", "2"), rclone_store.env())
        seconds = time.monotonic() - began
    finally:
        held.release()
    assert proc.returncode == 12, proc.stderr
    assert seconds < 2 + 3
    assert "Traceback" not in proc.stderr
    assert "waiting for w.bin" in proc.stderr


# --- stops -------------------------------------------------------------------------------


def hold_lock(dest: Path) -> FileLock:
    """This process takes ``w.bin``'s lock, as another pull into ``dest`` would."""
    state = StateDir(dest)
    state.create()
    lock = FileLock(state.lock_path("w.bin"))
    lock.acquire()
    return lock


class StderrLines:
    """A child's stderr, read line by line as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        assert proc.stderr is not None
        stream = proc.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def text(self) -> str:
        """All of it, once the child has ended; its pipes are closed."""
        self._thread.join(10)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
        return "".join(self.lines)


def stalled(records: list[RequestRecord], method: str, query: str = "") -> bool:
    return any(r.method == method and query in r.query and r.status == 0 for r in records)


# Where the pull waits when the signal comes: another process's lock, a HEAD or a listing
# that gets no answer, a GET that trickles.
SITUATIONS = ("lock", "head", "list", "get")


@pytest.mark.slow
@pytest.mark.parametrize("situation", SITUATIONS)
@pytest.mark.parametrize(
    ("server", "signum", "code"), [("moto", signal.SIGINT, 130), ("rclone", signal.SIGTERM, 143)]
)
def test_a_signal_ends_the_pull_within_2_seconds_whatever_it_waits_for(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    situation: str,
    server: str,
    signum: int,
    code: int,
) -> None:
    store: S3Store = request.getfixturevalue(f"{server}_store")
    bucket = store.new_bucket()
    store.put(bucket, "m/w.bin", DATA)
    held: FileLock | None = None
    with FaultProxy(store.endpoint_url) as proxy:
        rules = {
            "head": Rule(stall(before_headers=True), method="HEAD"),
            "list": Rule(stall(before_headers=True), method="GET", query="list-type"),
            "get": Rule(trickle(0.5), method="GET", path="w.bin", times=None),
        }
        if situation in rules:
            proxy.add_rule(rules[situation])
        else:
            held = hold_lock(tmp_path)
        env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        proc = start_cli(cli_args(bucket, tmp_path, "--concurrency", "2"), env)
        err = StderrLines(proc)
        try:
            caught = {
                "lock": lambda: any("waiting for" in line for line in err.lines),
                "head": lambda: stalled(proxy.log, "HEAD"),
                "list": lambda: stalled(proxy.log, "GET", "list-type"),
                "get": lambda: any("w.bin" in r.path and r.body_bytes for r in proxy.log),
            }[situation]
            wait_until(f"the pull waiting ({situation})", caught, [proc])
            time.sleep(0.3)  # well inside the wait
            sent = time.monotonic()
            proc.send_signal(signum)
            proc.wait(timeout=30)
            seconds = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if held is not None:
                held.release()
            stderr = err.text()
    assert proc.returncode == code, stderr
    assert seconds < 2.0
    assert "Traceback" not in stderr
    assert "run the same command again to resume" in stderr
    if situation == "lock":
        waiting = [line for line in stderr.splitlines() if "waiting for" in line]
        assert waiting == [
            f"modelpull: WARNING: waiting for w.bin: another process (pid {os.getpid()}) is "
            "fetching it into the same folder"
        ]


# --- a store that never honours Range --------------------------------------------------


def bytes_by_path(events: list[Event]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for event in events:
        if isinstance(event, BytesTransferred):
            totals[event.path] = totals.get(event.path, 0) + event.bytes
    return totals


@rclone_slow
def test_a_store_that_ignores_range_is_read_whole_with_one_warning(
    store: S3Store,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store.put(bucket, "m/other.bin", OTHER)
    store.put(bucket, "m/config.json", b"{}")
    proxy.add_rule(Rule(ignore_range(), method="GET", ranged_only=True, times=None))
    events: list[Event] = []
    with caplog.at_level(logging.WARNING, logger="modelpull"):
        cfg = config(proxy, concurrency=4, max_attempts=2)
        result, _ = timed_pull(store, cfg, bucket, tmp_path, [events.append])
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert (tmp_path / "other.bin").read_bytes() == OTHER
    assert (tmp_path / "config.json").read_bytes() == b"{}"
    warnings = [r for r in caplog.records if "ignores Range" in r.getMessage()]
    assert len(warnings) == 1
    assert result.retries["range_ignored"] >= 1
    # Each big file came in one GET without a Range, and progress adds up to its size.
    for key, data in (("w.bin", DATA), ("other.bin", OTHER)):
        whole = [r for r in proxy.log if key in r.path and r.range is None and r.method == "GET"]
        assert [r.body_bytes for r in whole] == [len(data)]
    assert bytes_by_path(events) == {"w.bin": len(DATA), "other.bin": len(OTHER), "config.json": 2}


@rclone_slow
def test_a_broken_whole_stream_starts_over_from_byte_0(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(ignore_range(), method="GET", ranged_only=True, times=None))
    # Two ranged GETs of the first part (max_attempts=2), then the whole object, cut.
    cut = proxy.add_rule(Rule(reset_after(300_000), method="GET", path="w.bin", skip=2))
    events: list[Event] = []
    result, _ = timed_pull(store, config(proxy, max_attempts=2), bucket, tmp_path, [events.append])
    assert proxy.fired(cut) == 1
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert result.retries["reset"] == 1
    whole = [r for r in proxy.log if r.range is None and r.method == "GET" and "w.bin" in r.path]
    assert [r.body_bytes for r in whole] == [300_000, len(DATA)]
    # What the broken stream wrote was taken back: progress ends at the file's size.
    assert bytes_by_path(events) == {"w.bin": len(DATA)}
