"""Cluster pull (``pull --distributed``): several ranks on this machine, gloo over loopback.

Each rank is a ``python -m modelpull pull --distributed`` process with the variables
torchrun would set. With ``MODELPULL_DIST_NODE_PER_RANK=1`` (the testing switch) every
rank acts as a node of its own with its own DEST (``DEST/{rank}``), so a 4-rank job here
is a 4-node cluster. The store is rclone behind the fault proxy, which counts the bytes
it serves: egress is measured where a store would bill it.

The pure planning logic is tested at the end, without processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelpull.cluster.coord import Coordinator
from modelpull.cluster.options import ClusterOptions
from modelpull.cluster.plan import (
    ClusterPlan,
    MemberState,
    View,
    assign_missing,
    missing_parts,
    plan_transfers,
)
from modelpull.cluster.topology import Layout, Topology
from modelpull.errors import UsageError
from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileQueued,
    FileSkipped,
    PullFinished,
    PullStarted,
)
from modelpull.objects import ObjectInfo, RemoteFile
from tests.faults.proxy import FaultProxy, Rule, delay, flip_byte
from tests.helpers import S3Store

MiB = 1 << 20
TIMEOUT = 6  # --dist-timeout of these tests: a silent rank is given up on after this
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="the [distributed] extra (torch)")


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


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".modelpull" not in p.relative_to(root).parts
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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

    def start(
        self,
        world: int,
        dest: str,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        node_per_rank: bool = True,
    ) -> list[subprocess.Popen[str]]:
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
        command = [
            sys.executable,
            "-m",
            "modelpull",
            "pull",
            "--distributed",
            self.uri,
            dest,
            "--json",
            "--no-progress",
            "--dist-timeout",
            str(TIMEOUT),
            *args,
        ]
        return [
            subprocess.Popen(
                command,
                env=base | {"RANK": str(r), "LOCAL_RANK": "0" if node_per_rank else str(r)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(world)
        ]


@dataclass
class Outcome:
    code: int
    result: dict[str, Any]
    stderr: str


def finish(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[Outcome]:
    deadline = time.monotonic() + timeout
    outcomes = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        line = out.strip().splitlines()[-1] if out.strip() else "{}"
        outcomes.append(Outcome(proc.returncode, json.loads(line), err))
    return outcomes


@pytest.fixture
def cluster(rclone_store: S3Store) -> Iterator[Cluster]:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(bucket, "m/", FILES)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        yield Cluster(rclone_store, proxy, bucket)


def parts_done(dest: Path) -> int:
    total = 0
    for journal in (dest / ".modelpull" / "incomplete").glob("*.journal"):
        with contextlib.suppress(OSError, ValueError):
            total += len(json.loads(journal.read_text())["done"])
    return total


def wait_until(what: str, check: Callable[[], bool], procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert all(p.poll() is None for p in procs), f"a rank ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- whole pulls -------------------------------------------------------------------------


@needs_torch
@pytest.mark.slow
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


@needs_torch
@pytest.mark.slow
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


@needs_torch
@pytest.mark.slow
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


@needs_torch
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


@needs_torch
@pytest.mark.slow
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


@needs_torch
@pytest.mark.slow
def test_rank_killed_while_fetching_its_share_the_others_fetch_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Slow enough (about 1.3 MB/s per connection, 2 connections a rank) to kill mid-share.
    cluster.proxy.add_rule(Rule(delay(seconds_per_chunk=0.05), method="GET", times=None))
    procs = cluster.start(3, str(tmp_path / "{rank}"), env={"MODELPULL_CONCURRENCY": "2"})
    wait_until("rank 1 fetched a part", lambda: parts_done(tmp_path / "1") >= 1, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    cluster.proxy.clear_rules()
    outcomes = finish(procs)
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


@needs_torch
@pytest.mark.slow
def test_rank_killed_mid_exchange_the_others_still_finish(cluster: Cluster, tmp_path: Path) -> None:
    procs = cluster.start(
        3, str(tmp_path / "{rank}"), env={"MODELPULL_DIST_TEST_KILL": "2:exchange"}
    )
    outcomes = finish(procs)
    assert outcomes[2].code == -signal.SIGKILL
    for rank in (0, 1):
        assert outcomes[rank].code == 0, outcomes[rank].stderr
        assert tree(tmp_path / str(rank)) == FILES
        assert outcomes[rank].result["cluster"]["lost_ranks"] == [2]
    assert cluster.egress() < 1.5 * MODEL_BYTES


@needs_torch
@pytest.mark.slow
def test_lost_rank_without_fallback_fails_naming_it(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    procs = cluster.start(
        2,
        str(tmp_path / "{rank}"),
        env={"MODELPULL_DIST_TEST_KILL": "1:fetched"},
        args=("--no-dist-fallback",),
    )
    outcomes = finish(procs)
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


@needs_torch
@pytest.mark.slow
def test_hung_rank_is_given_up_on_and_ends_correct_on_its_own(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.proxy.add_rule(Rule(delay(seconds_per_chunk=0.05), method="GET", times=None))
    procs = cluster.start(2, str(tmp_path / "{rank}"), env={"MODELPULL_CONCURRENCY": "2"})
    wait_until("rank 1 fetched a part", lambda: parts_done(tmp_path / "1") >= 1, procs)
    procs[1].send_signal(signal.SIGSTOP)  # alive, holding its sockets, silent
    try:
        cluster.proxy.clear_rules()
        (survivor,) = finish(procs[:1])
    finally:
        procs[1].send_signal(signal.SIGCONT)
    assert survivor.code == 0, survivor.stderr
    assert tree(tmp_path / "0") == FILES
    assert survivor.result["cluster"]["lost_ranks"] == [1]
    # Woken up, rank 1 finds it was left out and completes its DEST from the store.
    (woken,) = finish(procs[1:])
    assert woken.code == 0, woken.stderr
    assert tree(tmp_path / "1") == FILES


# -- errors without processes ------------------------------------------------------------


def test_without_torch_the_flag_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelpull.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)
    code = main(["pull", "--distributed", "s3://bucket/m/", str(tmp_path)])
    assert code == 9
    assert "pip install 'modelpull[distributed]'" in capsys.readouterr().err


def test_launcher_variables_are_required() -> None:
    with pytest.raises(UsageError, match="MASTER_ADDR, MASTER_PORT"):
        Topology.from_env(ClusterOptions(), {"RANK": "0", "WORLD_SIZE": "2"})


def test_topology_nodes_and_dest_template() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
        "GROUP_RANK": "1",
    }
    topo = Topology.from_env(ClusterOptions(), env)
    assert topo.node == "group-1"
    assert topo.expand("/m/{node}/{rank}") == "/m/group-1/3"
    assert Topology.from_env(ClusterOptions(node_per_rank=True), env).node == "rank-3"
    layout = Layout({0: "a", 1: "a", 2: "b", 3: "b"})
    assert layout.fetchers == (0, 2)
    assert layout.fetcher_of(3) == 2


def test_options_from_env() -> None:
    opts = ClusterOptions.from_env(
        {"MODELPULL_DIST_TIMEOUT": "2m", "MODELPULL_DIST_FALLBACK": "0"}, timeout=None
    )
    assert (opts.timeout, opts.fallback) == (120.0, False)
    with pytest.raises(UsageError, match="MODELPULL_DIST_BACKEND"):
        ClusterOptions.from_env({"MODELPULL_DIST_BACKEND": "mpi"})


# -- coordination through the store, with an in-memory store ---------------------------


class MemoryStore:
    """The few ``torch.distributed.Store`` calls the coordinator makes, in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        return self.data[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def multi_get(self, keys: list[str]) -> list[bytes]:
        return [self.data[k] for k in keys]

    def add(self, key: str, value: int) -> int:
        total = int(self.data.get(key, b"0")) + value
        self.data[key] = str(total).encode()
        return total

    def compare_set(self, key: str, expected_value: str, desired_value: str) -> bytes:
        if key not in self.data and expected_value == "":
            self.data[key] = desired_value.encode()
        return self.data[key]

    def clone(self) -> MemoryStore:
        return self


def test_waiting_gives_up_on_silent_and_finished_peers_only() -> None:
    store = MemoryStore()
    me, posted, finished = (Coordinator(store, "p", r, timeout=0.3) for r in range(3))
    posted.publish("state/1", {"x": 1})
    finished.publish("done/2", {"ok": False})
    started = time.monotonic()
    got = me.wait({1: "state/1", 2: "state/2", 3: "state/3"})
    assert got == {1: {"x": 1}, 2: None, 3: None}
    # Rank 3 never beat: lost once silent for the timeout (checked twice a second).
    assert 0.3 <= time.monotonic() - started < 3
    assert me.agree("members", [0, 1]) == [0, 1]
    assert posted.agree("members", [1]) == [0, 1]  # the first proposal stands


def test_a_beating_peer_is_waited_for_beyond_the_timeout() -> None:
    store = MemoryStore()
    me, slow = Coordinator(store, "p", 0, timeout=0.3), Coordinator(store, "p", 1, timeout=0.3)
    slow.start()  # beats every 0.1 s
    try:
        threading.Timer(1.5, lambda: slow.publish("state/1", "late")).start()
        assert me.wait({1: "state/1"}) == {1: "late"}
    finally:
        slow.stop()


# -- planning (pure logic) ---------------------------------------------------------------


def plan_of(*sizes: int, part_size: int = 4) -> ClusterPlan:
    files = tuple(
        RemoteFile(ObjectInfo(key=f"m/f{i}", size=s, etag=f"e{i}"), f"f{i}")
        for i, s in enumerate(sizes)
    )
    return ClusterPlan("b", part_size, files)


def view_of(*states: MemberState) -> View:
    return View(0, tuple(s.rank for s in states), {s.rank: s for s in states})


def test_missing_parts_are_shared_out_in_contiguous_runs_of_equal_bytes() -> None:
    plan = plan_of(40, 0, 24)  # 10 + 6 parts of 4 bytes; the empty file is not shared
    view = view_of(MemberState(0), MemberState(1), MemberState(2), MemberState(3))
    missing = missing_parts(plan, view)
    assert len(missing) == 16
    shares = assign_missing(missing, view)
    assert [sum(r.length for r in shares[m]) for m in range(4)] == [16, 16, 16, 16]
    flat = [r for m in range(4) for r in shares[m]]
    assert flat == missing  # contiguous, in plan order


def test_a_member_whose_fetch_failed_is_passed_over() -> None:
    plan = plan_of(16)
    view = view_of(MemberState(0, fetch_failed=True), MemberState(1))
    shares = assign_missing(missing_parts(plan, view), view)
    assert shares[0] == [] and len(shares[1]) == 4


def test_files_complete_everywhere_are_skipped_and_sources_are_balanced() -> None:
    plan = plan_of(16, 16)
    everything = frozenset(range(4))
    view = view_of(
        MemberState(0, complete=frozenset({0}), held={1: everything}),
        MemberState(1, complete=frozenset({0}), held={1: everything}),
        MemberState(2, complete=frozenset({0})),
    )
    assert missing_parts(plan, view) == []
    schedule = plan_transfers(plan, view, chunk_size=3)
    sent = {m: sum(c.length for c in schedule.streams[m]) for m in view.members}
    assert sent == {0: 8, 1: 8, 2: 0}  # file 0 is nowhere; file 1 comes from both holders
    assert all(c.ref.file == 1 for s in schedule.streams.values() for c in s)
    # Each holder sends two parts of 4 bytes, in chunks of 3 and 1, side by side.
    assert schedule.steps == 4
    assert [schedule.step_length(k) for k in range(4)] == [3, 1, 3, 1]
    assert [c.last for c in schedule.streams[0]] == [False, True, False, True]
    assert [c.ref.part for c in schedule.streams[0]] == [0, 0, 2, 2]


def test_member_state_survives_json() -> None:
    state = MemberState(
        2, complete=frozenset({0, 1, 2, 7}), held={3: frozenset({0, 1, 5})}, cuda=True
    )
    assert MemberState.from_json(json.loads(json.dumps(state.to_json()))) == state
    plan = plan_of(5, 0)
    assert ClusterPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
