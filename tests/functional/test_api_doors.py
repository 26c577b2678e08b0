"""The Python API as its users call it: a partial config keeps the environment,
``progress=True``, ``snapshot()``, presets and a file DEST."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

import modelpull
from modelpull.events import BytesTransferred, Event
from tests.helpers import S3Store, rclone_slow, tree

MiB = 1 << 20
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(MiB + 5),
    "tokenizer.model": os.urandom(512),
    "original/consolidated.00.pth": os.urandom(2048),
}


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "m/", FILES)
    return name


def use_store_env(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store in the environment only, as a deployment sets it."""
    for name, value in store.env().items():
        if name.startswith(("AWS_", "MODELPULL_")):
            monkeypatch.setenv(name, value)


def test_a_partial_config_keeps_the_environment(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store_env(store, monkeypatch)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MODELPULL_ENDPOINT_URL", store.endpoint_url)
    monkeypatch.setenv("MODELPULL_CONCURRENCY", "7")
    # Only concurrency given: the endpoint is still the environment's, as for the CLI,
    # and the given field wins over its own variable.
    result = modelpull.pull(
        f"s3://{bucket}/m/", tmp_path, config=modelpull.PullConfig(concurrency=2)
    )
    assert result.config["endpoint_url"] == store.endpoint_url
    assert result.config["concurrency"] == 2
    assert tree(tmp_path) == FILES


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


@rclone_slow
def test_progress_true_draws_the_cli_display(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store_env(store, monkeypatch)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    modelpull.pull(f"s3://{bucket}/m/", tmp_path / "a", progress=True)
    drawn = term.getvalue()
    assert "listing" in drawn and "pull:" in drawn and f"{len(FILES)}/{len(FILES)} files" in drawn
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    modelpull.pull(f"s3://{bucket}/m/", tmp_path / "b")
    assert quiet.getvalue() == ""  # off by default


@rclone_slow
def test_snapshot_returns_the_cached_folder(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store_env(store, monkeypatch)
    monkeypatch.setenv("MODELPULL_CACHE", str(tmp_path / "cache"))
    folder = modelpull.snapshot(f"s3://{bucket}/m/")
    assert folder == tmp_path / "cache" / "s3" / bucket / "m"
    assert tree(folder) == FILES
    moved: list[int] = []

    def count(event: Event) -> None:
        if isinstance(event, BytesTransferred):
            moved.append(event.bytes)

    # A second call is cheap: every file is complete already.
    assert modelpull.snapshot(f"s3://{bucket}/m", observers=[count]) == folder
    assert moved == []
    # One object: the folder that holds its key, as huggingface_hub's files live in one.
    single = modelpull.snapshot(f"s3://{bucket}/m/config.json", tmp_path / "x")
    assert single == tmp_path / "x"
    assert tree(single) == {"config.json": FILES["config.json"]}
    assert modelpull.snapshot(f"s3://{bucket}/m/config.json") == folder


def test_preset_keeps_what_vllm_reads(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store_env(store, monkeypatch)
    result = modelpull.pull(f"s3://{bucket}/m/", tmp_path, preset="vllm")
    assert sorted(f.path for f in result.files) == [
        "config.json",
        "model.safetensors",
        "tokenizer.model",
    ]


@rclone_slow
def test_one_object_to_a_file_path(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store_env(store, monkeypatch)
    result = modelpull.pull(f"s3://{bucket}/m/tokenizer.model", tmp_path / "tok.model")
    assert (tmp_path / "tok.model").read_bytes() == FILES["tokenizer.model"]
    assert result.dest == str(tmp_path / "tok.model")
    again = modelpull.pull(f"s3://{bucket}/m/tokenizer.model", tmp_path / "tok.model")
    assert (again.files_fetched, again.files_skipped) == (0, 1)
    # Filters match the store's name, not the name DEST gives the file.
    kept = modelpull.pull(
        f"s3://{bucket}/m/tokenizer.model", tmp_path / "other", include=["tokenizer.*"]
    )
    assert (tmp_path / "other").is_file() and kept.files_fetched == 1


@rclone_slow
def test_nothing_selected_is_an_object_not_found_error(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store_env(store, monkeypatch)
    with pytest.raises(modelpull.NothingSelectedError) as caught:
        modelpull.pull(f"s3://{bucket}/m/", tmp_path / "d", include=["*.gguf"])
    assert isinstance(caught.value, modelpull.ObjectNotFoundError)
    assert not (tmp_path / "d").exists()
    empty = modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path / "d",
        include=["*.gguf"],
        config=modelpull.PullConfig(allow_empty=True),
    )
    assert empty.files == ()
