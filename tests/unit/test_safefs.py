"""modelpull.safefs: paths under DEST reached without following a link; names DEST can hold."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from modelpull import safefs
from modelpull.compat.aibrix import AibrixCache
from modelpull.errors import DestinationError, DiskFullError, UnsafePathError
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.plan import check_dest_paths
from modelpull.state import StateDir

OUTSIDE = b"outside DEST\n"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file").write_bytes(OUTSIDE)
    folder = tmp_path / "dest"
    folder.mkdir()
    return folder


def _outside(dest: Path) -> list[str]:
    return sorted(p.name for p in (dest.parent / "outside").iterdir())


def test_folders_are_made_one_at_a_time_and_a_link_among_them_is_refused(dest: Path) -> None:
    safefs.makedirs(dest, dest / "a" / "b" / "c")
    assert (dest / "a" / "b" / "c").is_dir()
    (dest / "link").symlink_to(dest.parent / "outside")
    with pytest.raises(UnsafePathError, match=r"dest/link: it is a symlink"):
        safefs.makedirs(dest, dest / "link" / "new")
    assert _outside(dest) == ["file"]
    # A link to a folder inside DEST is refused as well: links inside DEST are not ours.
    (dest / "inner").symlink_to(dest / "a")
    with pytest.raises(UnsafePathError):
        safefs.makedirs(dest, dest / "inner" / "b")


def test_dest_itself_may_be_a_link(dest: Path) -> None:
    alias = dest.parent / "alias"
    alias.symlink_to(dest)
    safefs.write_atomic(alias, alias / "x" / "f.json", b"{}")
    assert (dest / "x" / "f.json").read_bytes() == b"{}"


def test_a_file_in_the_way_of_a_folder(dest: Path) -> None:
    (dest / "a").write_bytes(b"")
    with pytest.raises(DestinationError, match="not a folder") as info:
        safefs.makedirs(dest, dest / "a" / "b")
    assert not isinstance(info.value, UnsafePathError)


def test_open_file_refuses_links_and_special_files(dest: Path) -> None:
    outside = dest.parent / "outside" / "file"
    (dest / "sym").symlink_to(outside)
    os.link(outside, dest / "hard")
    os.mkfifo(dest / "fifo")
    create = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    with pytest.raises(UnsafePathError, match="symlink"):
        safefs.open_file(dest, dest / "sym", create)
    with pytest.raises(UnsafePathError, match="2 hard links"):
        safefs.open_file(dest, dest / "hard", create)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        safefs.read_bytes(dest, dest / "fifo")  # refused, not waited on
    assert outside.read_bytes() == OUTSIDE  # O_TRUNC came after the checks
    # A final file may have other names: reading it is fine; a record or journal may not.
    os.close(safefs.open_file(dest, dest / "hard", os.O_RDONLY))
    with pytest.raises(UnsafePathError, match="2 hard links"):
        safefs.read_bytes(dest, dest / "hard")


def test_a_dangling_link_creates_nothing(dest: Path) -> None:
    (dest / "sym").symlink_to(dest.parent / "outside" / "new")
    with pytest.raises(UnsafePathError):
        safefs.open_file(dest, dest / "sym", os.O_RDWR | os.O_CREAT)
    assert _outside(dest) == ["file"]


def test_write_atomic_makes_its_folder_and_leaves_no_temp_file(dest: Path) -> None:
    target = dest / "gone" / "j.journal"
    safefs.write_atomic(dest, target, b"one")  # the folder was removed: made again
    assert target.read_bytes() == b"one"
    # A link at the name is replaced, never written through.
    target.unlink()
    target.symlink_to(dest.parent / "outside" / "file")
    safefs.write_atomic(dest, target, b"two")
    assert not target.is_symlink() and target.read_bytes() == b"two"
    assert (dest.parent / "outside" / "file").read_bytes() == OUTSIDE
    # A failed rename (a folder with a file is in the way) leaves no temp file behind.
    target.unlink()
    (target / "x").mkdir(parents=True)
    with pytest.raises(DestinationError, match=r"j\.journal"):
        safefs.write_atomic(dest, target, b"three")
    assert sorted(p.name for p in target.parent.iterdir()) == ["j.journal"]


def test_replace_makes_folders_and_refuses_a_folder_in_the_way(dest: Path) -> None:
    src = dest / "t.part"
    src.write_bytes(b"bytes")
    st = safefs.replace(dest, src, dest / "a" / "b.bin")
    assert (dest / "a" / "b.bin").read_bytes() == b"bytes"
    assert st.st_size == 5
    (dest / "dir").mkdir()
    src.write_bytes(b"more")
    with pytest.raises(DestinationError, match="folder is in the way"):
        safefs.replace(dest, src, dest / "dir")
    src.unlink()
    with pytest.raises(DestinationError, match="vanished"):
        safefs.replace(dest, src, dest / "c.bin")


def test_lstat_and_unlink_never_follow(dest: Path) -> None:
    (dest / "sym").symlink_to(dest.parent / "outside" / "file")
    st = safefs.lstat(dest, dest / "sym")
    assert st is not None and st.st_size != len(OUTSIDE)
    assert safefs.lstat(dest, dest / "missing" / "x") is None
    safefs.unlink(dest, dest / "sym")
    safefs.unlink(dest, dest / "sym")  # already gone: fine
    assert _outside(dest) == ["file"]


def test_check_file_before_a_lock(dest: Path) -> None:
    lock = dest / "locks" / "x.lock"
    safefs.check_file(dest, lock)  # missing: its folder is made
    assert lock.parent.is_dir()
    lock.symlink_to(dest.parent / "outside" / "file")
    with pytest.raises(UnsafePathError, match="symlink"):
        safefs.check_file(dest, lock)
    lock.unlink()
    os.link(dest.parent / "outside" / "file", lock)
    with pytest.raises(UnsafePathError, match="hard links"):
        safefs.check_file(dest, lock)


def test_os_errors_become_destination_errors(tmp_path: Path) -> None:
    full = safefs.dest_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert isinstance(full, DiskFullError) and str(tmp_path) in str(full)
    loop = safefs.dest_error(OSError(errno.ELOOP, "Too many levels"), tmp_path)
    assert isinstance(loop, UnsafePathError)
    gone = safefs.dest_error(FileNotFoundError(errno.ENOENT, "No such file"), tmp_path)
    assert type(gone) is DestinationError and ".modelpull" in str(gone)


def test_state_dir_refuses_a_linked_record(dest: Path) -> None:
    state = StateDir(dest)
    state.create()
    state.record_path("a").symlink_to(dest.parent / "outside" / "file")
    with pytest.raises(UnsafePathError):
        state.read_record("a")
    (dest / "a").symlink_to(dest.parent / "outside" / "file")
    assert state.read_record("b") is None
    obj = ObjectInfo(key="a", size=len(OUTSIDE), etag="e")
    assert not state.is_complete("b", dest / "a", obj)  # a link is never a complete file


def _file(path: str) -> RemoteFile:
    return RemoteFile(ObjectInfo(key=f"m/{path}", size=1, etag="e"), path)


def test_names_longer_than_the_file_system_allows(dest: Path) -> None:
    name_max = os.pathconf(dest, "PC_NAME_MAX")
    check_dest_paths([_file("a" * name_max), _file("sub/" + "é" * (name_max // 2))], dest)
    with pytest.raises(UnsafePathError, match=f"allows {name_max}") as info:
        check_dest_paths([_file("ok.json"), _file("sub/" + "a" * (name_max + 1))], dest)
    assert info.value.key == f"m/sub/{'a' * (name_max + 1)}"
    with pytest.raises(UnsafePathError):  # counted in bytes: é is two
        check_dest_paths([_file("é" * (name_max // 2 + 1))], dest)
    path_max = os.pathconf(dest, "PC_PATH_MAX")
    deep = "/".join(["d" * 200] * (path_max // 200 + 1))
    with pytest.raises(UnsafePathError, match="path under"):
        check_dest_paths([_file(deep)], dest)
    assert list(dest.iterdir()) == []


def test_a_link_on_the_way_is_refused_at_planning(dest: Path) -> None:
    (dest / "sub").symlink_to(dest.parent / "outside")
    with pytest.raises(UnsafePathError, match="symlink"):
        check_dest_paths([_file("sub/new/w.bin")], dest)
    assert _outside(dest) == ["file"]


def test_aibrix_cache_files_are_reached_without_links(dest: Path) -> None:
    cache = AibrixCache(dest, "s3")
    cache.mark_complete("sub/w.bin", "abc")
    assert cache.metadata_path("sub/w.bin").read_text() == '"abc"'
    assert cache.checked_lock_path("sub/w.bin").parent.is_dir()
    (dest / ".cache" / "s3" / "download" / "other").symlink_to(dest.parent / "outside")
    with pytest.raises(UnsafePathError, match="symlink"):
        cache.mark_complete("other/w.bin", "abc")
    with pytest.raises(UnsafePathError, match="symlink"):
        cache.checked_lock_path("other/w.bin")
    assert _outside(dest) == ["file"]
