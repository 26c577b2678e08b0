"""`modelpull verify`, adopting copies other tools made, and `--check-existing`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.state import StateDir
from modelpull.verify import verify
from tests.faults.proxy import FaultProxy
from tests.helpers import S3Store, flip_keeping_mtime, rclone_slow, run_cli, tree

MiB = 1 << 20
FILES = {
    "config.json": b'{"hidden_size": 64}',
    "model-00001.safetensors": os.urandom(3 * MiB + 5),
    "model-00002.safetensors": os.urandom(2 * MiB),
    "tokenizer/vocab.json": b'{"a": 1}',
}
SHARD = "model-00001.safetensors"


@pytest.fixture
def model(store: S3Store) -> str:
    bucket = store.new_bucket()
    store.put_tree(bucket, "m/", FILES)
    return f"s3://{bucket}/m/"


@pytest.fixture
def proxy(store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(store.endpoint_url) as p:
        yield p


def pull(store: S3Store, uri: str, dest: Path, **overrides: Any) -> modelpull.PullResult:
    config = store.config(part_size=1 * MiB, **overrides)
    return modelpull.pull(uri, dest, config=config, credentials=store.credentials)


def got_bytes(proxy: FaultProxy) -> int:
    return sum(r.body_bytes for r in proxy.log if r.method == "GET")


# --- modelpull verify --------------------------------------------------------------------


@rclone_slow
def test_verify_a_good_folder_then_a_damaged_one(
    store: S3Store, model: str, tmp_path: Path
) -> None:
    pull(store, model, tmp_path)
    env = store.env()
    good = run_cli(["verify", model, str(tmp_path)], env)
    assert good.returncode == 0, good.stderr
    assert "4 good, 0 bad, 0 missing" in good.stdout

    flip_keeping_mtime(tmp_path / SHARD, 2 * MiB + 17)
    (tmp_path / "tokenizer" / "vocab.json").unlink()
    bad = run_cli(["verify", model, str(tmp_path)], env)
    assert bad.returncode == 7, bad.stderr
    lines = bad.stdout.splitlines()
    assert any(line.startswith(f"bad: {SHARD}") for line in lines)
    assert "missing: tokenizer/vocab.json (not in DEST)" in lines
    assert lines[-1].endswith("2 good, 1 bad, 1 missing")
    assert "Traceback" not in bad.stderr

    report = json.loads(run_cli(["verify", model, str(tmp_path), "--json"], env).stdout)
    assert report["ok"] is False
    # The bad file's record was dropped: a plain pull now fetches it (and the missing one).
    again = pull(store, model, tmp_path)
    assert again.files_fetched == 2 and again.files_skipped == 2
    assert tree(tmp_path) == FILES


@rclone_slow
def test_verify_refreshes_records_of_good_files(store: S3Store, model: str, tmp_path: Path) -> None:
    pull(store, model, tmp_path)
    state = StateDir(tmp_path)
    for path in FILES:
        state.forget(path)
    result = verify(model, tmp_path, config=store.config(), credentials=store.credentials)
    assert result.ok and {f.status for f in result.files} == {"good"}
    assert all(len(f.verified) >= 2 for f in result.files)  # size and a checksum
    again = pull(store, model, tmp_path)
    assert (again.files_fetched, again.files_skipped) == (0, len(FILES))


# --- adopting what other tools left ------------------------------------------------------


@rclone_slow
def test_a_folder_made_by_another_tool_is_adopted_not_fetched(
    store: S3Store, model: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = model.split("/")[2]
    for path in FILES:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        store.client().download_file(bucket, f"m/{path}", str(target))
    flip_keeping_mtime(tmp_path / SHARD, 100)
    config = modelpull.PullConfig(
        endpoint_url=proxy.url, addressing_style="path", part_size=1 * MiB
    )
    result = modelpull.pull(model, tmp_path, config=config, credentials=store.credentials)
    assert tree(tmp_path) == FILES
    statuses = {f.path: f.status for f in result.files}
    assert statuses.pop(SHARD) == "fetched"  # damaged: fetched again
    assert set(statuses.values()) == {"adopted"}
    assert result.files_adopted == 3 and result.to_dict()["files_adopted"] == 3
    total = sum(map(len, FILES.values()))
    assert got_bytes(proxy) - len(FILES[SHARD]) < total // 100
    # Adopted files are recorded: the next pull skips everything.
    again = modelpull.pull(model, tmp_path, config=config, credentials=store.credentials)
    assert (again.files_fetched, again.files_skipped) == (0, len(FILES))


@rclone_slow
def test_force_fetches_an_adoptable_folder_again(
    store: S3Store, model: str, tmp_path: Path
) -> None:
    pull(store, model, tmp_path)
    for path in FILES:
        StateDir(tmp_path).forget(path)
    result = pull(store, model, tmp_path, force=True)
    assert result.files_fetched == len(FILES) and result.files_adopted == 0


@rclone_slow
def test_nothing_is_adopted_without_a_checksum(store: S3Store, model: str, tmp_path: Path) -> None:
    pull(store, model, tmp_path)
    for path in FILES:
        StateDir(tmp_path).forget(path)
    result = pull(store, model, tmp_path, verify="off")
    assert result.files_fetched == len(FILES)  # a same-size file proves nothing


# --- --check-existing ----------------------------------------------------------------


@rclone_slow
def test_check_existing_finds_a_damaged_file_its_record_hides(
    store: S3Store, model: str, tmp_path: Path
) -> None:
    pull(store, model, tmp_path)
    flip_keeping_mtime(tmp_path / SHARD, 5)
    plain = pull(store, model, tmp_path)
    assert plain.files_skipped == len(FILES)  # size and mtime match its record
    checked = pull(store, model, tmp_path, check_existing=True)
    assert tree(tmp_path) == FILES
    fetched = [f.path for f in checked.files if f.status == "fetched"]
    assert fetched == [SHARD]
    assert checked.files_skipped == len(FILES) - 1


def test_verify_of_a_dest_that_is_a_file_says_so(moto_store: S3Store, tmp_path: Path) -> None:
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/a.json", b"{}")
    dest = tmp_path / "f"
    dest.write_text("not a folder")
    done = run_cli(["verify", f"s3://{bucket}/m/", str(dest)], moto_store.env())
    assert done.returncode == 6, done.stderr
    assert done.stderr.strip().splitlines() == [f"modelpull: error: DEST is not a folder: {dest}"]
    assert dest.read_text() == "not a folder"
