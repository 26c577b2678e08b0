"""The second adversary's findings against the cluster pull (``pull --distributed``).

Real ranks (``python -m modelpull pull --distributed``) over gloo on loopback, rclone
behind the fault proxy, as in ``tests/functional/test_cluster.py``, whose harness this
reuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.proxy import FaultProxy, Rule, set_headers
from tests.faults.test_adversary import multipart_etag
from tests.functional.test_cluster import FILES, Cluster, finish
from tests.helpers import S3Store, flip_keeping_mtime, free_port, run_cli, tree

pytestmark = pytest.mark.slow

SHARD = "model-00001-of-00002.safetensors"
# S3's own words: the ETag of an SSE-KMS object is not the MD5 of its bytes. With no
# additional checksum the store publishes nothing that checks the bytes but their size.
KMS = {
    "ETag": '"0123456789abcdef0123456789abcdef"',
    "x-amz-server-side-encryption": "aws:kms",
}


def test_check_existing_never_spreads_a_damaged_copy_to_other_nodes(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    """``--check-existing`` says: trust no record, re-read the file. A node whose copy was
    damaged on disk (its size and mtime kept, so its record still matches) must not offer
    it to the other nodes as complete: on a store that publishes no checksum of the bytes
    (SSE-KMS), a node that lacks the file would place the damaged bytes under their final
    name, while the damaged node itself, checking its copy, fetches it from the store."""
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(bucket, "m/", FILES)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers(KMS), path="/m/", times=None))
        cluster = Cluster(rclone_store, proxy, bucket)
        first = finish(cluster.start(2, str(tmp_path / "{rank}")))
        assert [o.code for o in first] == [0, 0], [o.stderr for o in first]
        flip_keeping_mtime(tmp_path / "0" / SHARD, 12345)
        (tmp_path / "1" / SHARD).unlink()
        again = finish(cluster.start(2, str(tmp_path / "{rank}"), args=("--check-existing",)))
    for rank, o in enumerate(again):
        assert o.code == 0, o.stderr
        assert tree(tmp_path / str(rank)) == FILES, f"rank {rank} holds wrong bytes"


# -- the launcher's variables ------------------------------------------------------------


def launcher(store: S3Store, **variables: str) -> dict[str, str]:
    return (
        store.env()
        | {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": "2",
            "RANK": "1",
        }
        | variables
    )


@pytest.mark.parametrize("port", ["99999", "-5"])
def test_a_master_port_no_tcp_has_is_a_usage_error(
    moto_store: S3Store, tmp_path: Path, port: str
) -> None:
    """It was tried for the whole timeout and reported as ranks that never met (exit 11)."""
    args = ["pull", "--distributed", "s3://bk/m/", str(tmp_path), "--dist-timeout", "2"]
    done = run_cli(args, launcher(moto_store, MASTER_PORT=port))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"modelpull: error: MASTER_PORT must be a TCP port (0 to 65535), not {port}"
    ]


def test_a_master_addr_that_never_answers_is_one_stderr_line(
    moto_store: S3Store, tmp_path: Path
) -> None:
    """A typo in MASTER_ADDR: torch's c10d logged each failed connection as an error with
    a C++ backtrace (22 lines on stderr) before modelpull's own line."""
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/a.json", b"{}")
    args = ["pull", "--distributed", f"s3://{bucket}/m/", str(tmp_path), "--dist-timeout", "2"]
    done = run_cli(args, launcher(moto_store, MASTER_ADDR="nohost.invalid"))
    assert done.returncode == 11, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("modelpull: error: rank 1: could not meet the other ranks")


# -- the second-download rule in a cluster -----------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="each node's finalize runs _alike on its own: the exchanged copy counts as its "
    "first download and it fetches the whole file again, N+1 times the file for N nodes",
)
def test_a_file_no_guessed_layout_fits_is_fetched_from_the_store_once_per_cluster(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    """Uploaded in 7 MiB parts, the store publishing only the multipart ETag: the 8 MiB
    guess fits the part count but not the bytes, so a file is placed only once two
    downloads agree (``finish.py _alike``). In a cluster the node that fetched it does
    that once for the cluster (two downloads at most); instead every node fetched it again
    after the exchange: 4 times the file from the store for 3 nodes (N + 1 for N)."""
    bucket = rclone_store.new_bucket()
    data = os.urandom(20 << 20)
    rclone_store.put(bucket, "m/w.bin", data)
    etag = {"ETag": f'"{multipart_etag(data, 7 << 20)}"'}
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers(etag), path="w.bin", times=None))
        cluster = Cluster(rclone_store, proxy, bucket)
        outcomes = finish(cluster.start(3, str(tmp_path / "{rank}")))
        egress = cluster.egress()
    for rank, o in enumerate(outcomes):
        assert o.code == 0, o.stderr
        assert (tmp_path / str(rank) / "w.bin").read_bytes() == data
    assert egress <= 2 * len(data), f"{egress / len(data):.1f} times the file from the store"
