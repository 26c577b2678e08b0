"""The Python API against real S3 servers on loopback (moto and rclone serve s3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelpull
from modelpull.events import BytesTransferred, Event, FileDone, PullStarted
from tests.helpers import S3Store, rclone_slow, tree

MiB = 1 << 20


def model_files() -> dict[str, bytes]:
    rng = __import__("random").Random(7)
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "tokenizer.json": b'{"model": {"type": "BPE"}}' * 50,
        "model-00001-of-00002.safetensors": rng.randbytes(5 * MiB + 123),
        "model-00002-of-00002.safetensors": rng.randbytes(2 * MiB + 7),
        "sub/extra/notes.txt": b"hello",
        "empty.txt": b"",
    }


@pytest.fixture
def model(store: S3Store) -> tuple[str, dict[str, bytes]]:
    bucket = store.new_bucket()
    files = model_files()
    store.put_tree(bucket, "models/llama/", files)
    # A sibling whose name shares the prefix must not leak into the pull.
    store.put(bucket, "models/llama-old/config.json", b"old")
    return bucket, files


def test_pull_folder_byte_identical(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, files = model
    cfg = store.config(part_size=1 * MiB, concurrency=4)
    result = modelpull.pull(
        f"s3://{bucket}/models/llama/", tmp_path / "out", config=cfg, credentials=store.credentials
    )
    assert tree(tmp_path / "out") == files
    assert result.files_fetched == len(files)
    assert result.files_skipped == 0
    assert result.bytes_downloaded == sum(map(len, files.values()))
    assert result.seconds > 0
    # Nothing is left half-done: no temp files once the pull succeeded.
    assert list((tmp_path / "out" / ".modelpull" / "incomplete").iterdir()) == []


def test_folder_without_trailing_slash(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, files = model
    modelpull.pull(
        f"s3://{bucket}/models/llama",
        tmp_path,
        config=store.config(),
        credentials=store.credentials,
    )
    assert tree(tmp_path) == files


def test_single_object(store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    bucket, files = model
    key = "model-00001-of-00002.safetensors"
    result = modelpull.pull(
        f"s3://{bucket}/models/llama/{key}",
        tmp_path,
        config=store.config(part_size=1 * MiB),
        credentials=store.credentials,
    )
    assert tree(tmp_path) == {key: files[key]}
    assert result.files_fetched == 1


def test_whole_bucket(store: S3Store, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    store.put_tree(bucket, "", {"a.json": b"a", "d/b.bin": b"bb"})
    modelpull.pull(f"s3://{bucket}", tmp_path, config=store.config(), credentials=store.credentials)
    assert tree(tmp_path) == {"a.json": b"a", "d/b.bin": b"bb"}


@rclone_slow
def test_include_exclude(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, _files = model
    modelpull.pull(
        f"s3://{bucket}/models/llama/",
        tmp_path,
        include=["*.json", "*.safetensors"],
        exclude=["model-00002-*"],
        config=store.config(),
        credentials=store.credentials,
    )
    assert sorted(tree(tmp_path)) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
    ]


@pytest.mark.slow
def test_second_pull_transfers_nothing(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, files = model
    uri = f"s3://{bucket}/models/llama/"
    cfg = store.config(part_size=1 * MiB)
    modelpull.pull(uri, tmp_path, config=cfg, credentials=store.credentials)
    seen: list[Event] = []
    again = modelpull.pull(
        uri, tmp_path, config=cfg, credentials=store.credentials, observers=[seen.append]
    )
    assert (again.files_fetched, again.files_skipped, again.bytes_downloaded) == (0, len(files), 0)
    assert not any(isinstance(e, BytesTransferred) for e in seen)

    # A changed object is fetched again, and only that one.
    store.put(bucket, "models/llama/config.json", b'{"changed": true}')
    third = modelpull.pull(uri, tmp_path, config=cfg, credentials=store.credentials)
    assert third.files_fetched == 1
    assert (tmp_path / "config.json").read_bytes() == b'{"changed": true}'

    # A file edited on disk is not trusted any more.
    (tmp_path / "tokenizer.json").write_bytes(b"edited locally")
    fourth = modelpull.pull(uri, tmp_path, config=cfg, credentials=store.credentials)
    assert fourth.files_fetched == 1
    assert (tmp_path / "tokenizer.json").read_bytes() == files["tokenizer.json"]

    forced = modelpull.pull(
        uri, tmp_path, config=store.config(force=True), credentials=store.credentials
    )
    assert forced.files_fetched == len(files)


@pytest.mark.slow
def test_many_files_paginated_listing(moto_store: S3Store, tmp_path: Path) -> None:
    # moto pages ListObjectsV2 at 1000 keys, so 1003 files need two pages.
    bucket = moto_store.new_bucket()
    files = {f"shard/{i:04d}.txt": str(i).encode() for i in range(1003)}
    moto_store.put_tree(bucket, "m/", files)
    listed = modelpull.list_objects(
        f"s3://{bucket}/m/", config=moto_store.config(), credentials=moto_store.credentials
    )
    assert [f.path for f in listed] == sorted(files)
    result = modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=moto_store.config(concurrency=32),
        credentials=moto_store.credentials,
    )
    assert result.files_fetched == 1003
    assert tree(tmp_path) == files


def _replacer(store: S3Store, bucket: str, key: str, times: int) -> tuple[list[bytes], object]:
    """An observer that uploads a new version of ``key`` on the first ``times`` parts."""
    versions: list[bytes] = []
    seen: set[int] = set()

    def replace(event: Event) -> None:
        if isinstance(event, BytesTransferred) and len(versions) < times and event.bytes > 0:
            generation = len(versions)
            if generation not in seen:
                seen.add(generation)
                versions.append(os.urandom(4 * MiB))
                store.put(bucket, key, versions[-1])

    return versions, replace


def test_object_replaced_once_is_refetched(store: S3Store, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    store.put(bucket, "m/w.bin", os.urandom(4 * MiB))
    versions, replace = _replacer(store, bucket, "m/w.bin", times=1)
    cfg = store.config(part_size=1 * MiB, concurrency=1, io_chunk_size=256 * 1024)
    modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=cfg,
        credentials=store.credentials,
        observers=[replace],
    )  # type: ignore[list-item]
    # Never a stitched file: the whole of the newest version.
    assert (tmp_path / "w.bin").read_bytes() == versions[-1]


@rclone_slow
def test_object_that_keeps_changing_fails_cleanly(store: S3Store, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    store.put(bucket, "m/w.bin", os.urandom(4 * MiB))
    _, replace = _replacer(store, bucket, "m/w.bin", times=10)
    cfg = store.config(part_size=1 * MiB, concurrency=1, io_chunk_size=256 * 1024)
    with pytest.raises(modelpull.ObjectChangedError) as info:
        modelpull.pull(
            f"s3://{bucket}/m/",
            tmp_path,
            config=cfg,
            credentials=store.credentials,
            observers=[replace],
        )  # type: ignore[list-item]
    assert info.value.key == "m/w.bin"
    assert info.value.bucket == bucket
    assert not (tmp_path / "w.bin").exists()


@rclone_slow
def test_observers_see_every_byte(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, files = model
    events: list[Event] = []
    modelpull.pull(
        f"s3://{bucket}/models/llama/",
        tmp_path,
        config=store.config(part_size=1 * MiB),
        credentials=store.credentials,
        observers=[events.append],
    )
    assert sum(e.bytes for e in events if isinstance(e, BytesTransferred)) == sum(
        map(len, files.values())
    )
    assert sorted(e.path for e in events if isinstance(e, FileDone)) == sorted(files)


def test_broken_observer_does_not_fail_the_pull(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, files = model

    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    result = modelpull.pull(
        f"s3://{bucket}/models/llama/",
        tmp_path,
        config=store.config(),
        credentials=store.credentials,
        observers=[broken],
    )
    assert result.files_fetched == len(files)


@rclone_slow
def test_partial_pull_then_completion(store: S3Store, tmp_path: Path) -> None:
    """``only`` fetches some parts and leaves the rest for a later run (the cluster pull's base)."""
    from modelpull.backends import make_backend
    from modelpull.engine import Engine
    from modelpull.plan import list_remote
    from modelpull.uri import parse_uri

    bucket = store.new_bucket()
    data = os.urandom(4 * MiB)
    store.put(bucket, "m/w.bin", data)
    cfg = store.config(part_size=1 * MiB)
    backend = make_backend(cfg, store.credentials)
    files = list_remote(backend, parse_uri(f"s3://{bucket}/m/"))
    seen: list[Event] = []
    outcomes = Engine(backend, cfg, seen.append).run(
        bucket, files, tmp_path, only={"w.bin": {0, 2}}
    )
    assert [o.status for o in outcomes] == ["partial"]
    assert not (tmp_path / "w.bin").exists()
    assert sum(e.bytes for e in seen if isinstance(e, BytesTransferred)) == 2 * MiB

    result = modelpull.pull(
        f"s3://{bucket}/m/", tmp_path, config=cfg, credentials=store.credentials
    )
    assert result.bytes_downloaded == 2 * MiB
    assert (tmp_path / "w.bin").read_bytes() == data


# -- a backend passed in, and files listed once --------------------------------------------


@rclone_slow
def test_a_given_backend_serves_several_calls_and_stays_open(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    from modelpull.backends.boto3 import Boto3Backend

    bucket, files = model
    cfg = store.config(part_size=1 * MiB)
    uri = f"s3://{bucket}/models/llama/"
    backend = Boto3Backend(cfg, store.credentials)
    try:
        listed = modelpull.list_objects(uri, config=cfg, backend=backend)
        result = modelpull.pull(uri, tmp_path / "a", config=cfg, backend=backend)
        # Still usable: neither call closed it.
        again = modelpull.pull(uri, tmp_path / "b", config=cfg, backend=backend)
    finally:
        backend.close()
    assert [f.path for f in listed] == sorted(files)
    assert result.backend == again.backend == "boto3"
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == files


@rclone_slow
def test_pull_files_pulls_what_was_listed(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, files = model
    seen: list[Event] = []
    with modelpull.resolve(
        f"s3://{bucket}/models/llama/", store.config(), store.credentials
    ) as target:
        listed = modelpull.list_objects(target)
        small = [f for f in listed if f.obj.size < MiB]
        result = modelpull.pull_files(target, small, tmp_path, observers=[seen.append])
    assert tree(tmp_path) == {f.path: files[f.path] for f in small}
    assert result.files_fetched == len(small)
    assert result.uri == f"s3://{bucket}/models/llama/"
    started = [e for e in seen if isinstance(e, PullStarted)]
    assert len(started) == 1 and started[0].files == len(small)


def test_pull_files_refuses_paths_it_did_not_list(
    store: S3Store, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, _ = model
    uri = f"s3://{bucket}/models/llama/"
    listed = modelpull.list_objects(uri, config=store.config(), credentials=store.credentials)
    escape = modelpull.RemoteFile(obj=listed[0].obj, path="../outside.json")
    with pytest.raises(modelpull.UnsafePathError):
        modelpull.pull_files(
            uri, [escape], tmp_path / "d", config=store.config(), credentials=store.credentials
        )
    with pytest.raises(modelpull.DestinationError, match="more than one"):
        modelpull.pull_files(
            uri,
            [listed[0], listed[0]],
            tmp_path / "d",
            config=store.config(),
            credentials=store.credentials,
        )
    assert not (tmp_path / "d").exists()
    assert not (tmp_path / "outside.json").exists()


def test_a_target_takes_no_second_config(store: S3Store, tmp_path: Path) -> None:
    with (
        modelpull.resolve("s3://bucket/m/", store.config()) as target,
        pytest.raises(modelpull.UsageError, match="Target"),
    ):
        modelpull.pull(target, tmp_path, config=store.config())
