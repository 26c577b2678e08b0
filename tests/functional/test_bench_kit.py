"""The benchmark kit (``benchmarks/bench_kit.py``) and its link emulator (``linkproxy.py``)."""

from __future__ import annotations

import http.client
import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.linkproxy import LinkProxy, parse_rate

from tests.helpers import isolated_env, run_command

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "benchmarks" / "bench_kit.py"
BODY = bytes(range(256)) * 8192  # 2 MiB
RTT = 0.05


class _Sized(http.server.BaseHTTPRequestHandler):
    """``GET /N`` answers N bytes, keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(BODY[:size])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[str, int]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sized)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    thread.join()
    server.server_close()


def _timed_get(conn: http.client.HTTPConnection, size: int) -> float:
    start = time.perf_counter()
    conn.request("GET", f"/{size}")
    body = conn.getresponse().read()
    assert body == BODY[:size]
    return time.perf_counter() - start


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv-send"])
def test_linkproxy_adds_round_trips_and_paces_each_connection(
    origin: tuple[str, int], splice: bool
) -> None:
    rate = 4e6
    with LinkProxy(origin, rtt=RTT, rate=rate, use_splice=splice) as proxy:
        conn = http.client.HTTPConnection(*proxy.address, timeout=10)
        try:
            # A new connection: one round trip for the handshake, one for the request.
            first = _timed_get(conn, 10)
            # The same connection again: one round trip, no second handshake.
            second = _timed_get(conn, 10)
            size = 1_200_000
            paced = _timed_get(conn, size)
        finally:
            conn.close()
        assert proxy.connections == 1  # keep-alive went through
        burst = max(64 * 1024, int(rate * 0.02))  # what the bucket may send at once
    assert first >= 2 * RTT
    assert RTT <= second < first
    assert paced >= RTT + (size - burst) / rate
    assert proxy.bytes_down >= size


def test_linkproxy_total_rate_is_shared_by_connections(origin: tuple[str, int]) -> None:
    total = 4e6
    size = 400_000
    times: list[float] = []

    def fetch(address: tuple[str, int]) -> None:
        conn = http.client.HTTPConnection(*address, timeout=10)
        try:
            times.append(_timed_get(conn, size))
        finally:
            conn.close()

    with LinkProxy(origin, total_rate=total) as proxy:
        threads = [threading.Thread(target=fetch, args=(proxy.address,)) for _ in range(2)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        both = time.perf_counter() - start
    assert len(times) == 2
    burst = max(64 * 1024, int(total * 0.02))
    assert both >= (2 * size - burst) / total


def test_parse_rate() -> None:
    assert parse_rate("16MB") == 16e6
    assert parse_rate("16MiB/s") == 16 * (1 << 20)
    assert parse_rate("2.5e6") == 2.5e6
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("fast")


@pytest.mark.slow
def test_kit_quick_run_verifies_outputs_and_writes_the_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = run_command(
        [
            sys.executable,
            str(KIT),
            "--quick",
            "--scenarios",
            "far,startup",
            "--arms",
            "s5cmd,modelpull",
            "--results",
            str(results),
            "--tmp",
            str(tmp_path),
        ],
        isolated_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((results / "kit.json").read_text())
    assert report["params"]["rounds"] == 1
    assert report["params"]["quick"] is True
    assert set(report["machine"]) >= {"nproc", "load_average", "git", "s5cmd", "rclone"}
    assert list(report["scenarios"]) == ["far", "startup"]
    for name, scenario in report["scenarios"].items():
        assert scenario["skipped"] is None
        assert scenario["modelpull_to_s5cmd"] > 0
        assert list(scenario["arms"]) == ["s5cmd", "modelpull"]
        for arm in scenario["arms"].values():
            assert arm["verified"] is True, (name, arm)
            assert arm["failed"] is None
            assert arm["median_seconds"] > 0
            assert arm["min_mb_per_s"] <= arm["median_mb_per_s"] <= arm["max_mb_per_s"]
            assert arm["cpu_s_per_gb"] > 0
            assert arm["peak_rss_mb"] > 1
    far = report["scenarios"]["far"]
    assert far["unit"] == "MB/s"
    assert far["files"] == 10  # four shards and the sample model's six JSON files
    # Through the emulated link (20 ms, 16 MB/s per connection) nothing is fast.
    assert far["arms"]["modelpull"]["median_mb_per_s"] < 16 * 16
    assert far["arms"]["modelpull"]["median_proxy_cpu_s"] >= 0
    assert report["scenarios"]["startup"]["unit"] == "s"
    markdown = (results / "kit.md").read_text()
    assert "| far: " in markdown
    assert "| startup: " in markdown
    assert markdown in proc.stdout
    # The work folder (models, stores, destinations) is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_a_scenario_that_runs_modelpull_as_another_command_shows_it_in_the_overview() -> None:
    from benchmarks._kitreport import ArmResult, Run, ScenarioResult, markdown

    run = Run(1, 2.0, 829.0, 2.6, 1.6, 85.0, verified=True)
    arm = ArmResult("modelpull-verify", "modelpull verify URI DEST", "modelpull verify", [run])
    scenario = ScenarioResult("verify", "modelpull verify", "rclone", 8, 1_605_660_748, False)
    scenario.arms[arm.arm] = arm
    overview = markdown([scenario], {"rounds": 1, "quick": False}, {}).split("\n## ")[0]
    row = next(line for line in overview.splitlines() if line.startswith("| verify: "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # scenario, model, s5cmd, boto3-default, boto3-aibrix, modelpull, noverify, ratio
    assert cells[5] == "829 (829-829), 1.6 CPU-s/GB"
    assert cells[2:5] == ["", "", ""] and cells[6] == ""
