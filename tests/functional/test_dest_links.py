"""DEST is modelpull's alone: a link planted inside it is refused, never followed out.

Each case plants a symlink or a hard link where a pull would create, open, rename or
remove something under DEST, runs the CLI, and checks that it ends with exit 6 and one
``modelpull: error:`` line naming the path, no traceback, and that nothing outside DEST
changed: a sentinel file keeps its bytes and mtime, and no file appears beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from modelpull.state import StateDir
from tests.faults.proxy import FaultProxy, Rule, delay
from tests.helpers import S3Store, run_cli, start_cli, wait_until

MiB = 1 << 20
SENTINEL = b"a file outside DEST: modelpull must not touch it\n"
# Two parts of 1 MiB: a journal is saved between them.
WEIGHTS = bytes(range(256)) * (2 * MiB // 256)

_Snapshot = dict[str, tuple[str, bytes, int]]


class Outside:
    """``tmp_path`` beside DEST: a sentinel file and a folder, and what they hold."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.dest = tmp_path / "dest"
        self.folder = tmp_path / "outside"
        self.folder.mkdir()
        self.sentinel = self.folder / "sentinel.bin"
        self.sentinel.write_bytes(SENTINEL)
        os.utime(self.sentinel, ns=(1_000_000_000, 1_000_000_000))  # an mtime no write keeps
        self.before = self.snapshot()

    def snapshot(self) -> _Snapshot:
        """Every entry under ``tmp_path`` but DEST: its kind, bytes (or link) and mtime."""
        seen: _Snapshot = {}
        for top, dirs, files in os.walk(self.root):
            here = Path(top)
            if here == self.root and "dest" in dirs:
                dirs.remove("dest")
            for name in dirs + files:
                path = here / name
                st = path.lstat()
                if path.is_symlink():
                    seen[str(path)] = ("link", os.readlink(path).encode(), st.st_mtime_ns)
                elif path.is_dir():
                    seen[str(path)] = ("dir", b"", st.st_mtime_ns)
                else:
                    seen[str(path)] = ("file", path.read_bytes(), st.st_mtime_ns)
        return seen

    def assert_untouched(self) -> None:
        assert self.sentinel.read_bytes() == SENTINEL
        assert self.sentinel.stat().st_mtime_ns == 1_000_000_000
        assert self.snapshot() == self.before


def _model(store: S3Store) -> str:
    bucket = store.new_bucket()
    store.put_tree(bucket, "m/", {"config.json": b"{}", "w.bin": WEIGHTS})
    return bucket


def _pull(
    store: S3Store, bucket: str, dest: Path, *flags: str, endpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = store.env() | ({"AWS_ENDPOINT_URL": endpoint} if endpoint else {})
    args = ["pull", f"s3://{bucket}/m/", str(dest), "--part-size", "1MiB", *flags]
    return run_cli(args, env)


def assert_one_error(proc: subprocess.CompletedProcess[str], code: int, *named: str) -> str:
    """The run ended with ``code`` and exactly one error line, naming each of ``named``."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("modelpull: error:")]
    assert len(errors) == 1, proc.stderr
    for name in named:
        assert name in errors[0], errors[0]
    return errors[0]


# -- a link where modelpull keeps one file's state --------------------------------------

_STATE_FILES: dict[str, Callable[[StateDir, str], Path]] = {
    "temp": StateDir.temp_path,
    "journal": StateDir.journal_path,
    "record": StateDir.record_path,
    "lock": StateDir.lock_path,
}


@pytest.mark.parametrize("what", sorted(_STATE_FILES))
@pytest.mark.parametrize("target", ["sentinel", "dangling"])
def test_symlink_at_a_state_file_is_refused(
    moto_store: S3Store, tmp_path: Path, what: str, target: str
) -> None:
    outside = Outside(tmp_path)
    bucket = _model(moto_store)
    state = StateDir(outside.dest)
    state.create()
    planted = _STATE_FILES[what](state, "w.bin")
    # A link to the sentinel, or to a file that a followed link would create.
    planted.symlink_to(outside.sentinel if target == "sentinel" else outside.folder / "new")
    outside.before = outside.snapshot()
    proc = _pull(moto_store, bucket, outside.dest, "--json")
    assert_one_error(proc, 6, str(planted), "symlink")
    assert json.loads(proc.stdout)["error"]["type"] == "UnsafePathError"
    outside.assert_untouched()
    assert not (outside.dest / "w.bin").exists()
    assert planted.is_symlink()  # refused, not replaced


def test_hard_link_at_the_temp_path_is_refused(moto_store: S3Store, tmp_path: Path) -> None:
    outside = Outside(tmp_path)
    bucket = _model(moto_store)
    state = StateDir(outside.dest)
    state.create()
    planted = state.temp_path("w.bin")
    os.link(outside.sentinel, planted)
    outside.before = outside.snapshot()
    proc = _pull(moto_store, bucket, outside.dest)
    assert_one_error(proc, 6, str(planted), "hard links")
    outside.assert_untouched()  # neither truncated nor written through the other name
    assert not (outside.dest / "w.bin").exists()


@pytest.mark.parametrize("folder", [".modelpull", ".modelpull/incomplete", ".modelpull/records"])
def test_symlinked_state_folder_is_refused(
    moto_store: S3Store, tmp_path: Path, folder: str
) -> None:
    outside = Outside(tmp_path)
    bucket = _model(moto_store)
    elsewhere = outside.folder / "state"
    elsewhere.mkdir()
    link = outside.dest / folder
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    outside.before = outside.snapshot()
    proc = _pull(moto_store, bucket, outside.dest)
    assert_one_error(proc, 6, str(link), "symlink")
    outside.assert_untouched()  # no temp file, journal or record out there
    assert list(elsewhere.iterdir()) == []


def test_symlinked_locks_folder_is_refused(moto_store: S3Store, tmp_path: Path) -> None:
    outside = Outside(tmp_path)
    bucket = _model(moto_store)
    StateDir(outside.dest).create()
    locks = outside.dest / ".modelpull" / "locks"
    locks.rmdir()
    locks.symlink_to(outside.folder)
    proc = _pull(moto_store, bucket, outside.dest)
    assert_one_error(proc, 6, str(locks), "symlink")
    outside.assert_untouched()  # no lock file made beside the sentinel


def test_symlinked_subfolder_is_refused_before_any_request(
    moto_store: S3Store, tmp_path: Path
) -> None:
    outside = Outside(tmp_path)
    bucket = moto_store.new_bucket()
    moto_store.put_tree(bucket, "m/", {"a.json": b"{}", "sub/deeper/w.bin": b"w" * 100})
    outside.dest.mkdir()
    (outside.dest / "sub").symlink_to(outside.folder)
    outside.before = outside.snapshot()
    with FaultProxy(moto_store.endpoint_url) as proxy:
        proc = _pull(moto_store, bucket, outside.dest, endpoint=proxy.url)
        gets = [r for r in proxy.log if r.method == "GET" and "/m/" in r.path]
    assert_one_error(proc, 6, str(outside.dest / "sub"), "symlink")
    assert gets == []
    outside.assert_untouched()  # no "deeper" folder made through the link
    assert not (outside.dest / "a.json").exists()


# -- names DEST cannot hold ---------------------------------------------------------------


def test_too_long_name_is_refused_before_any_request(moto_store: S3Store, tmp_path: Path) -> None:
    outside = Outside(tmp_path)
    bucket = moto_store.new_bucket()
    long_name = "x" * 300 + ".bin"
    moto_store.put_tree(bucket, "m/", {"config.json": b"{}", long_name: b"w" * 100})
    with FaultProxy(moto_store.endpoint_url) as proxy:
        proc = _pull(moto_store, bucket, outside.dest, endpoint=proxy.url)
        log = list(proxy.log)
    assert_one_error(proc, 6, f"m/{long_name}", "255")
    assert [r for r in log if "xxxx" in r.path] == []  # no HEAD or GET for it
    assert [r for r in log if r.method == "GET" and "/m/" in r.path] == []  # nor any other
    assert [p.name for p in outside.dest.iterdir()] == []
    outside.assert_untouched()


# -- the state folder removed under a running pull ----------------------------------------


@pytest.mark.slow
def test_state_folder_removed_mid_pull(rclone_store: S3Store, tmp_path: Path) -> None:
    outside = Outside(tmp_path)
    bucket = _model(rclone_store)
    temp = StateDir(outside.dest).temp_path("w.bin")
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        # The first part of w.bin waits, so the test can remove the folder meanwhile.
        proxy.add_rule(Rule(delay(seconds_before_headers=1.5), method="GET", path="w.bin"))
        env = rclone_store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        args = ["pull", f"s3://{bucket}/m/", str(outside.dest), "--part-size", "1MiB"]
        proc = start_cli([*args, "--concurrency", "1"], env)
        wait_until("the temp file exists", temp.exists, [proc])
        shutil.rmtree(outside.dest / ".modelpull")
        stdout, stderr = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_one_error(done, 6, str(temp), "vanished", ".modelpull")
        assert not (outside.dest / "w.bin").exists()
        # The next run starts the file over and completes it.
        again = run_cli(args, env)
    assert again.returncode == 0, again.stderr
    assert (outside.dest / "w.bin").read_bytes() == WEIGHTS
    outside.assert_untouched()


def test_symlink_at_a_final_name_is_replaced_not_written_through(
    moto_store: S3Store, tmp_path: Path
) -> None:
    outside = Outside(tmp_path)
    bucket = _model(moto_store)
    outside.dest.mkdir()
    (outside.dest / "w.bin").symlink_to(outside.sentinel)
    outside.before = outside.snapshot()
    proc = _pull(moto_store, bucket, outside.dest)
    assert proc.returncode == 0, proc.stderr
    final = outside.dest / "w.bin"
    assert not final.is_symlink() and final.read_bytes() == WEIGHTS
    outside.assert_untouched()
