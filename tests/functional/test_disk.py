"""Disk space: checked before the pull, and ENOSPC mid-pull, on a small private tmpfs.

Each case runs in its own mount namespace (``unshare -m``) so the tmpfs is private to
the test and disappears with it.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from tests.helpers import S3Store, run_command

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
