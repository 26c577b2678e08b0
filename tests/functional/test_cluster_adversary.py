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
from tests.functional.test_cluster import FILES, Cluster, finish
from tests.helpers import S3Store, free_port, run_cli, tree

pytestmark = pytest.mark.slow

SHARD = "model-00001-of-00002.safetensors"
# S3's own words: the ETag of an SSE-KMS object is not the MD5 of its bytes. With no
# additional checksum the store publishes nothing that checks the bytes but their size.
KMS = {
    "ETag": '"0123456789abcdef0123456789abcdef"',
    "x-amz-server-side-encryption": "aws:kms",
}


def flip_keeping_mtime(path: Path, offset: int) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


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
