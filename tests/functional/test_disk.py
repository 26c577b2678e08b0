"""Disk space: checked before the pull, and ENOSPC mid-pull (writing a part or saving a
journal), on a small private tmpfs.

Each case runs in its own mount namespace (``unshare -m``) so the tmpfs is private to
the test and disappears with it.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.faults.proxy import FaultProxy, Rule, delay
from tests.helpers import S3Store, run_cli, run_command

MiB = 1 << 20

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import modelpull
    from modelpull.events import FileDone

    dest, fill = sys.argv[1], sys.argv[2] == "fill"
    filled = []

    def fill_disk(event):
        # Once the first file is in, something else takes all the space left.
        if fill and isinstance(event, FileDone) and not filled:
            filled.append(event.path)
            with open(os.path.join(dest, "..", "filler"), "wb") as f:
                try:
                    while True:
                        f.write(b"\\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass

    cfg = modelpull.PullConfig.from_env(concurrency=1, part_size=4 << 20)
    try:
        modelpull.pull(sys.argv[3], dest, config=cfg, observers=[fill_disk])
        error = None
    except modelpull.ModelPullError as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
    finals = sorted(p for p in os.listdir(dest) if p != ".modelpull")
    incomplete = sorted(os.listdir(os.path.join(dest, ".modelpull", "incomplete")))
    print(json.dumps({"error": error, "finals": finals, "incomplete": incomplete}))
    """
)


def run_on_tmpfs(
    store: S3Store, tmp_path: Path, size: str, uri: str, mode: str
) -> dict[str, object]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    script = (
        'mnt=$1; shift; mount -t tmpfs -o size="$0" tmpfs "$mnt" && mkdir "$mnt/dest" && exec "$@"'
    )
    proc = run_command(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            script,
            size,
            str(mnt),
            sys.executable,
            str(driver),
            str(mnt / "dest"),
            mode,
            uri,
        ],
        store.env(),
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_free_space_is_checked_first(rclone_store: S3Store, tmp_path: Path) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(
        bucket, "m/", {"a.bin": os.urandom(6 * MiB), "b.bin": os.urandom(6 * MiB)}
    )
    result = run_on_tmpfs(rclone_store, tmp_path, "8m", f"s3://{bucket}/m/", "plain")
    assert result["error"]["type"] == "DiskFullError"  # type: ignore[index]
    assert "not enough free space" in result["error"]["message"]  # type: ignore[index]
    assert result["finals"] == []
    assert result["incomplete"] == []


def test_enospc_mid_pull(rclone_store: S3Store, tmp_path: Path) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(
        bucket, "m/", {"a.bin": os.urandom(2 * MiB), "b.bin": os.urandom(6 * MiB)}
    )
    result = run_on_tmpfs(rclone_store, tmp_path, "40m", f"s3://{bucket}/m/", "fill")
    assert result["error"]["type"] == "DiskFullError"  # type: ignore[index]
    assert "disk full" in result["error"]["message"]  # type: ignore[index]
    assert "resume" in result["error"]["message"]  # type: ignore[index]
    # The complete file landed; the other never appears under its final name.
    assert result["finals"] == ["a.bin"]


# Runs the CLI given after the mount point on a fresh tmpfs, fills the disk once the temp
# file exists (its space already reserved), then lists what is left in incomplete/.
FILL_WHEN_TEMP_EXISTS = """
mnt=$1; shift
mount -t tmpfs -o size=40m tmpfs "$mnt" && mkdir "$mnt/dest" || exit 99
"$@" &
pid=$!
until ls "$mnt"/dest/.modelpull/incomplete/*.part >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
done
cat /dev/zero > "$mnt/filler" 2>/dev/null
wait "$pid"
code=$?
echo "--- incomplete:"
ls -A "$mnt/dest/.modelpull/incomplete"
exit "$code"
"""


@pytest.mark.slow
def test_enospc_saving_a_journal(rclone_store: S3Store, tmp_path: Path) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/w.bin", os.urandom(2 * MiB))  # two parts: one journal save
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        # The first part waits until the disk is full; its bytes go to reserved space,
        # and the journal saved after it finds none.
        proxy.add_rule(Rule(delay(seconds_before_headers=1.0), method="GET", path="w.bin"))
        proc = run_cli(
            ["pull", f"s3://{bucket}/m/", str(mnt / "dest"), "--part-size", "1MiB"],
            rclone_store.env() | {"AWS_ENDPOINT_URL": proxy.url},
            prefix=["unshare", "-m", "sh", "-c", FILL_WHEN_TEMP_EXISTS, "sh", str(mnt)],
        )
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("modelpull: error:")]
    assert len(errors) == 1, proc.stderr
    assert "disk full while writing" in errors[0] and ".journal" in errors[0]
    left = proc.stdout.split("--- incomplete:\n", 1)[1].split()
    assert [name for name in left if name.endswith(".part")] != []  # kept for resume
    assert [name for name in left if name.endswith(".tmp")] == []  # no half-written journal
