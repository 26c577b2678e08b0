"""Cluster pull logic without processes or servers: options, topology, coordination
through an in-memory store, and planning. The ranks themselves are in
``tests/functional/test_cluster.py``."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

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
from modelpull.objects import ObjectInfo, RemoteFile

# -- errors -------------------------------------------------------------------------------


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


@pytest.mark.slow
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


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, math.inf, 400 * 86400.0])
def test_a_timeout_no_clock_waits_is_refused(timeout: float) -> None:
    with pytest.raises(UsageError, match="distributed timeout"):
        ClusterOptions(timeout=timeout)
