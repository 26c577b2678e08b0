"""Cluster pull (``pull --distributed``): several ranks on this machine, gloo over loopback.

Each rank is a ``python -m modelpull pull --distributed`` process with the variables
torchrun would set. With ``MODELPULL_DIST_NODE_PER_RANK=1`` (the testing switch) every
rank acts as a node of its own with its own DEST (``DEST/{rank}``), so a 4-rank job here
is a 4-node cluster. The store is rclone behind the fault proxy, which counts the bytes
it serves: egress is measured where a store would bill it.

Ranks are killed or stopped from outside, at a moment the test sees: a part in the
rank's resume journal (:func:`signal_after_first_part`), or a line of its ``-v`` log and
then a part from a peer (:func:`kill_mid_exchange`). The pure planning logic is in
``tests/unit/test_cluster.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileQueued,
    FileSkipped,
    PullFinished,
    PullStarted,
)
from tests.faults.proxy import FaultProxy, Rule, delay, flip_byte
from tests.helpers import S3Store, cli_command, free_port, parts_done, tree, wait_until

# torch (the [distributed] extra) is a test dependency: without it this module fails to
# collect; it never skips. Looked up, not imported: importing torch takes seconds.
if importlib.util.find_spec("torch") is None:
    raise ImportError("torch is missing: install the test extra (see the README)")

# Every test here starts ranks (torch, gloo, a rendezvous): seconds each.
pytestmark = pytest.mark.slow

MiB = 1 << 20
TIMEOUT = 6  # --dist-timeout of these tests: a silent rank is given up on after this


def model_files() -> dict[str, bytes]:
    rng = random.Random(11)
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "generation_config.json": b"",
        "tokenizer.json": rng.randbytes(300_000),
        "model-00001-of-00002.safetensors": rng.randbytes(9 * MiB + 5),
        "model-00002-of-00002.safetensors": rng.randbytes(6 * MiB + 1),
    }


FILES = model_files()
MODEL_BYTES = sum(map(len, FILES.values()))


class Rank:
    """One rank's process. Threads read its stdout and stderr as they come, so that a test
    can act the moment the rank logs a line (:meth:`on_line`)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lock = threading.Lock()
        self._out: list[str] = []
        self._err: list[str] = []
        self._hooks: list[tuple[str, Callable[[], None]]] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        with stream:
            for line in stream:
                with self._lock:
                    lines.append(line)
                    due = [h for h in self._hooks if lines is self._err and h[0] in line]
                    self._hooks = [h for h in self._hooks if h not in due]
                for _, action in due:
                    action()

    def on_line(self, needle: str, action: Callable[[], None]) -> None:
        """Call ``action`` (on a reader thread) as soon as stderr has a line with ``needle``."""
        with self._lock:
            seen = any(needle in line for line in self._err)
            if not seen:
                self._hooks.append((needle, action))
        if seen:
            action()

    def output(self) -> tuple[str, str]:
        """stdout and stderr, once the process has ended."""
        for reader in self._readers:
            reader.join()
        return "".join(self._out), "".join(self._err)


@dataclass
class Cluster:
    """One bucket with the model, a counting proxy in front of rclone, ways to run ranks."""

    store: S3Store
    proxy: FaultProxy
    bucket: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/m/"

    def egress(self) -> int:
        """Object bytes the store served for the model's keys (listing excluded)."""
        prefix = f"/{self.bucket}/m/"
        return sum(
            r.body_bytes for r in self.proxy.log if r.method == "GET" and r.path.startswith(prefix)
        )

    def slow_down(self) -> None:
        """About 1.3 MB/s per connection until :meth:`FaultProxy.clear_rules`."""
        self.proxy.add_rule(Rule(delay(seconds_per_chunk=0.05), method="GET", times=None))

    def start(
        self,
        world: int,
        dest: str,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        node_per_rank: bool = True,
    ) -> list[Rank]:
        base = self.store.env() | {
            "AWS_ENDPOINT_URL": self.proxy.url,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": "1" if node_per_rank else str(world),
            # Small parts and chunks: a 16 MiB model still has parts to share out.
            "MODELPULL_PART_SIZE": "1MiB",
            "MODELPULL_DIST_CHUNK_SIZE": "256KiB",
        }
        if node_per_rank:
            base["MODELPULL_DIST_NODE_PER_RANK"] = "1"
        base |= env or {}
        command = cli_command(
            "pull",
            "--distributed",
            self.uri,
            dest,
            "--json",
            "--no-progress",
            "--dist-timeout",
            str(TIMEOUT),
            *args,
        )
        return [
            Rank(
                subprocess.Popen(
                    command,
                    env=base | {"RANK": str(r), "LOCAL_RANK": "0" if node_per_rank else str(r)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            for r in range(world)
        ]


@dataclass
class Outcome:
    code: int
    result: dict[str, Any]
    stderr: str


def finish(ranks: list[Rank], timeout: float = 90) -> list[Outcome]:
    deadline = time.monotonic() + timeout
    outcomes = []
    for rank in ranks:
        try:
            rank.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in ranks:
                other.proc.kill()
            raise
        out, err = rank.output()
        line = out.strip().splitlines()[-1] if out.strip() else "{}"
        outcomes.append(Outcome(rank.proc.returncode, json.loads(line), err))
    return outcomes


@pytest.fixture
def cluster(rclone_store: S3Store) -> Iterator[Cluster]:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(bucket, "m/", FILES)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        yield Cluster(rclone_store, proxy, bucket)


def signal_after_first_part(ranks: list[Rank], victim: int, dest: Path, signum: int) -> float:
    """Send ``signum`` to rank ``victim`` once its journal under ``dest`` holds a part of
    its share (start the ranks slowed down, so that this comes mid-share); returns when."""
    wait_until(
        f"rank {victim} fetched a part",
        lambda: parts_done(dest) >= 1,
        [rank.proc for rank in ranks],
    )
    ranks[victim].proc.send_signal(signum)
    return time.monotonic()


# How long a rank runs at a time while it is let through the exchange in slices.
SLICE = 0.005


def _wait_stopped(pid: int) -> None:
    """Until the kernel shows ``pid`` stopped (or gone): SIGSTOP takes effect a moment later."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in "TtZX":
            return
        time.sleep(0.0005)


def kill_mid_exchange(rank: Rank, me: int, dest: Path) -> threading.Event:
    """SIGKILL rank ``me`` once it has recorded a part it received in the exchange.

    At its INFO line ``rank N: exchanging ...`` (the ranks need ``-v``) the rank is
    stopped, then let run a few milliseconds at a time (SIGCONT, SIGSTOP) until its
    journals under ``dest`` hold one part more than at that line: a part from a peer,
    which takes several steps of the exchange. A slice lets it through a few steps at
    most, so it dies in the exchange with steps still to come for the others. The
    returned event is set once it was killed: a test asserts it, so that a reworded log
    line fails the test instead of leaving the rank alive.
    """
    proc, killed = rank.proc, threading.Event()

    def run_in_slices() -> None:
        before = parts_done(dest)
        deadline = time.monotonic() + 60
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if parts_done(dest) > before:
                    proc.send_signal(signal.SIGKILL)
                    killed.set()
                    return
                proc.send_signal(signal.SIGCONT)
                time.sleep(SLICE)
                proc.send_signal(signal.SIGSTOP)
                _wait_stopped(proc.pid)
        finally:
            if not killed.is_set() and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def stop() -> None:
        proc.send_signal(signal.SIGSTOP)
        _wait_stopped(proc.pid)
        threading.Thread(target=run_in_slices, daemon=True).start()

    rank.on_line(f"rank {me}: exchanging", stop)
    return killed


# -- whole pulls -------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_every_node_gets_the_model_and_the_store_serves_it_once(
    cluster: Cluster, tmp_path: Path, world: int
) -> None:
    outcomes = finish(cluster.start(world, str(tmp_path / "{rank}")))
    for rank, o in enumerate(outcomes):
        assert o.code == 0, o.stderr
        assert tree(tmp_path / str(rank)) == FILES
        assert o.result["cluster"]["nodes"] == world
        assert o.result["files_fetched"] == len(FILES)
        assert o.result["cluster"]["lost_ranks"] == []
    egress = cluster.egress()
    assert egress <= 1.05 * MODEL_BYTES
    # Each rank's own count of store bytes adds up to what the store served.
    assert sum(int(o.result["bytes_downloaded"]) for o in outcomes) == egress
    # The work was shared: no rank fetched more than its share and a part.
    assert all(int(o.result["bytes_downloaded"]) <= MODEL_BYTES / world + MiB for o in outcomes)

    # Again: everything is complete on every node, so nothing is fetched or exchanged.
    cluster.proxy.reset_counters()
    again = finish(cluster.start(world, str(tmp_path / "{rank}")))
    for o in again:
        assert o.code == 0, o.stderr
        assert o.result["files_skipped"] == len(FILES)
        assert o.result["cluster"]["bytes_from_peers"] == 0
    assert cluster.egress() == 0


def test_a_file_one_node_lacks_comes_from_a_peer(cluster: Cluster, tmp_path: Path) -> None:
    assert all(o.code == 0 for o in finish(cluster.start(2, str(tmp_path / "{rank}"))))
    lost = tmp_path / "1" / "model-00002-of-00002.safetensors"
    lost.unlink()
    cluster.proxy.reset_counters()
    outcomes = finish(cluster.start(2, str(tmp_path / "{rank}")))
    assert [o.code for o in outcomes] == [0, 0], outcomes[1].stderr
    assert tree(tmp_path / "1") == FILES
    # Rank 0 read it from its complete copy; the store served nothing.
    assert cluster.egress() == 0
    size = len(FILES["model-00002-of-00002.safetensors"])
    assert outcomes[1].result["cluster"]["bytes_from_peers"] == size
    assert outcomes[0].result["cluster"]["bytes_to_peers"] == size


def test_ranks_of_one_node_share_one_dest_and_one_fetcher(cluster: Cluster, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    outcomes = finish(cluster.start(2, str(dest), node_per_rank=False))
    assert [o.code for o in outcomes] == [0, 0], outcomes[1].stderr
    assert tree(dest) == FILES
    assert cluster.egress() <= 1.05 * MODEL_BYTES
    assert outcomes[1].result["bytes_downloaded"] == 0
    assert outcomes[1].result["cluster"]["fetcher"] == 0
    assert outcomes[1].result["files_skipped"] == len(FILES)
    # Rank 1 never talked to the store: every request came from rank 0.
    assert outcomes[0].result["bytes_downloaded"] == cluster.egress()


def test_one_rank_in_process_is_a_plain_pull_with_the_same_events(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelpull.cluster import pull_distributed

    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    events: list[Event] = []
    result = pull_distributed(
        cluster.uri,
        tmp_path / "{rank}",
        config=dataclasses.replace(
            cluster.store.config(part_size=MiB), endpoint_url=cluster.proxy.url
        ),
        credentials=cluster.store.credentials,
        observers=[events.append],
        timeout=TIMEOUT,
    )
    assert tree(tmp_path / "0") == FILES
    assert result.bytes_downloaded == MODEL_BYTES == cluster.egress()
    assert (result.nodes, result.rank, result.lost_ranks) == (1, 0, ())
    # Observers see one pull: each file queued once and done once, every byte once.
    queued = [e.path for e in events if isinstance(e, FileQueued)]
    done = [e.path for e in events if isinstance(e, FileDone | FileSkipped)]
    assert sorted(done) == sorted(FILES)
    assert len(queued) == len(set(queued))
    assert sum(e.bytes for e in events if isinstance(e, BytesTransferred)) == MODEL_BYTES
    assert isinstance(events[0], PullStarted) and isinstance(events[-1], PullFinished)
    assert (events[-1].files, events[-1].ok) == (len(FILES), True)


# -- failures ----------------------------------------------------------------------------


def test_bytes_corrupted_in_transit_are_caught_on_every_node(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    bucket = rclone_store.new_bucket()
    for relative, data in FILES.items():
        # A CRC-64/NVME the store publishes: receivers must combine their own part CRCs.
        rclone_store.client().put_object(
            Bucket=bucket, Key=f"m/{relative}", Body=data, ChecksumAlgorithm="CRC64NVME"
        )
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        flip = proxy.add_rule(
            # Byte 0: the part that draws it may be the file's 5-byte tail.
            Rule(flip_byte(0), method="GET", path="model-00001", ranged_only=True)
        )
        cluster = Cluster(rclone_store, proxy, bucket)
        outcomes = finish(cluster.start(2, str(tmp_path / "{rank}")))
        egress = cluster.egress()
    assert flip.fired == 1
    for rank, o in enumerate(outcomes):
        assert o.code == 0, o.stderr
        assert tree(tmp_path / str(rank)) == FILES
        # Every file was checked against the store's CRC on this node.
        assert o.result["checksums_verified"]["crc64nvme"] == len(FILES)
        # The bad part reached both nodes (fetched by one, exchanged to the other); each
        # caught it end to end and fetched the file again from the store.
        assert o.result["retries"] == {"integrity": 1}
    assert egress == MODEL_BYTES + 2 * len(FILES["model-00001-of-00002.safetensors"])


def test_rank_killed_while_fetching_its_share_the_others_fetch_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Slow enough (about 1.3 MB/s per connection, 2 connections a rank) to kill mid-share.
    cluster.slow_down()
    ranks = cluster.start(3, str(tmp_path / "{rank}"), env={"MODELPULL_CONCURRENCY": "2"})
    killed = signal_after_first_part(ranks, 1, tmp_path / "1", signal.SIGKILL)
    cluster.proxy.clear_rules()
    outcomes = finish(ranks)
    assert outcomes[1].code == -signal.SIGKILL
    for rank in (0, 2):
        o = outcomes[rank]
        assert o.code == 0, o.stderr
        assert tree(tmp_path / str(rank)) == FILES
        assert o.result["cluster"]["lost_ranks"] == [1]
        assert "lost rank 1 stopped responding" in o.stderr
    # Given up on after the timeout, not hung: the rest is a few seconds of work.
    assert time.monotonic() - killed < TIMEOUT + 30
    # Only rank 1's share, at most, was fetched twice.
    assert cluster.egress() < 1.5 * MODEL_BYTES


def test_rank_killed_mid_exchange_the_others_still_finish(cluster: Cluster, tmp_path: Path) -> None:
    ranks = cluster.start(3, str(tmp_path / "{rank}"), args=("-v",))
    killed = kill_mid_exchange(ranks[2], 2, tmp_path / "2")
    outcomes = finish(ranks)
    assert killed.is_set(), outcomes[2].stderr
    assert outcomes[2].code == -signal.SIGKILL
    for rank in (0, 1):
        assert outcomes[rank].code == 0, outcomes[rank].stderr
        assert tree(tmp_path / str(rank)) == FILES
        assert outcomes[rank].result["cluster"]["lost_ranks"] == [2]
    assert cluster.egress() < 1.5 * MODEL_BYTES


def test_lost_rank_without_fallback_fails_naming_it(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    cluster.slow_down()
    ranks = cluster.start(
        2,
        str(tmp_path / "{rank}"),
        env={"MODELPULL_CONCURRENCY": "2"},
        args=("--no-dist-fallback",),
    )
    # Rank 1 dies with part of its share on disk, before it could tell rank 0 so.
    signal_after_first_part(ranks, 1, tmp_path / "1", signal.SIGKILL)
    cluster.proxy.clear_rules()
    outcomes = finish(ranks)
    assert outcomes[1].code == -signal.SIGKILL
    survivor = outcomes[0]
    assert survivor.code == 11, survivor.stderr
    assert "lost rank 1 stopped responding" in survivor.stderr
    assert "--no-dist-fallback" in survivor.stderr
    assert survivor.result["ok"] is False
    assert time.monotonic() - started < TIMEOUT + 40
    # Never a wrong file: whatever has its final name is complete and verified.
    for path, data in tree(tmp_path / "0").items():
        assert data == FILES[path]


def test_hung_rank_is_given_up_on_and_ends_correct_on_its_own(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.slow_down()
    ranks = cluster.start(2, str(tmp_path / "{rank}"), env={"MODELPULL_CONCURRENCY": "2"})
    # SIGSTOP: alive, holding its sockets, silent.
    signal_after_first_part(ranks, 1, tmp_path / "1", signal.SIGSTOP)
    try:
        cluster.proxy.clear_rules()
        (survivor,) = finish(ranks[:1])
    finally:
        ranks[1].proc.send_signal(signal.SIGCONT)
    assert survivor.code == 0, survivor.stderr
    assert tree(tmp_path / "0") == FILES
    assert survivor.result["cluster"]["lost_ranks"] == [1]
    # Woken up, rank 1 finds it was left out and completes its DEST from the store.
    (woken,) = finish(ranks[1:])
    assert woken.code == 0, woken.stderr
    assert tree(tmp_path / "1") == FILES
