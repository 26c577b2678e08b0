"""``python -m modelpull.aibrix`` against local S3 servers: AIBrix's arguments, variables, layout.

AIBrix itself is not installed here, so :func:`aibrix_reference` re-states what its S3
downloader does for a folder URI (python/aibrix/aibrix/downloader/s3.py, base.py,
entity.py and utils.py in vllm-project/aibrix): list every key under the prefix, HEAD
each, skip it when the file has the object's size and
``.cache/<source>/download/<path>.metadata`` holds its ETag, otherwise hold
``<path>.lock`` there while ``download_file`` writes ``<path>.part``, rename it into
place and write the ETag (as boto3 reports it: quoted) to the metadata file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock, Timeout

from modelpull import AccessDeniedError
from modelpull.aibrix import download_model, download_with_report
from modelpull.compat import CompatWarning
from modelpull.events import BytesTransferred, Event, FileDone, FileQueued
from tests.faults.proxy import FaultProxy
from tests.helpers import S3Store, isolated_env, rclone_slow, run_cli, start_cli, tree, wait_until

MiB = 1 << 20
FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "generation_config.json": b'{"temperature": 0.6}',
    "model-00001-of-00002.safetensors": os.urandom(3 * MiB + 11),
    "model-00002-of-00002.safetensors": os.urandom(MiB // 2),
    "tokenizer/tokenizer.model": os.urandom(4096),
    "README.md": b"# llama",
}
WEIGHTS = "model-00001-of-00002.safetensors"


def aibrix_reference(
    store: S3Store, bucket: str, prefix: str, local_dir: Path, model_name: str, source: str = "s3"
) -> int:
    """AIBrix's S3 downloader for a folder URI, re-stated; returns the files it downloaded."""
    client = store.client()
    model_path = local_dir / model_name
    cache = model_path / ".cache" / source / "download"
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    downloaded = 0
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        etag, size = head["ETag"], head["ContentLength"]
        relative = key[len(prefix) :]
        local = model_path / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        metadata = cache / f"{relative}.metadata"
        if (
            size > 0
            and local.exists()
            and local.stat().st_size == size
            and metadata.exists()
            and metadata.read_text() == etag
        ):
            continue
        part = Path(f"{local}.part")
        with FileLock(cache / f"{relative}.lock"):
            client.download_file(bucket, key, str(part))
            part.replace(local)
            metadata.parent.mkdir(parents=True, exist_ok=True)
            metadata.write_text(etag)
        downloaded += 1
    return downloaded


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "models/llama-3/", FILES)
    store.put(name, "models/llama-3-old/config.json", b"old")  # a sibling, never pulled
    return name


@pytest.fixture
def aibrix_env(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The variables an AIBrix deployment sets for S3, pointed at the local server."""
    env = {k: v for k, v in store.env().items() if k.startswith(("AWS_", "MODELPULL_"))}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run_dropin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(args, isolated_env(env), module="modelpull.aibrix")


@pytest.mark.slow
def test_same_layout_as_aibrix(
    store: S3Store, bucket: str, aibrix_env: dict[str, str], tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/models/llama-3/"
    aibrix_reference(store, bucket, "models/llama-3/", tmp_path / "aibrix", "llama-3")
    done = run_dropin(aibrix_env, "--model-uri", uri, "--local-dir", str(tmp_path / "modelpull"))
    assert done.returncode == 0, done.stderr
    assert "6 files fetched" in done.stderr
    # As AIBrix prints it: the model's folder is the one line on stdout, for scripts.
    assert done.stdout.splitlines() == [str(tmp_path / "modelpull" / "llama-3")]
    ours, theirs = tree(tmp_path / "modelpull"), tree(tmp_path / "aibrix")
    assert ours == theirs
    # What that layout is, spelled out: the files, then a lock and the ETag for each.
    assert {k: v for k, v in ours.items() if "/.cache/" not in k} == {
        f"llama-3/{name}": data for name, data in FILES.items()
    }
    metadata = ours[f"llama-3/.cache/s3/download/{WEIGHTS}.metadata"].decode()
    assert metadata.startswith('"') and metadata.endswith('"')
    assert "llama-3/.cache/s3/download/tokenizer/tokenizer.model.lock" in ours


@pytest.mark.slow
def test_switch_then_roll_back_fetches_nothing_again(
    store: S3Store, bucket: str, aibrix_env: dict[str, str], tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/models/llama-3/"
    # Switch: a model AIBrix downloaded is taken as it is.
    aibrix_reference(store, bucket, "models/llama-3/", tmp_path, "llama-3")
    report = download_with_report(uri, tmp_path, "llama-3")
    assert report.already_present == len(FILES)
    assert (report.result.files_fetched, report.result.bytes_downloaded) == (0, 0)
    # Roll back: a model modelpull downloaded is taken by AIBrix as it is.
    download_model(uri, tmp_path / "fresh", "llama-3")
    assert aibrix_reference(store, bucket, "models/llama-3/", tmp_path / "fresh", "llama-3") == 0
    # A file AIBrix's metadata no longer vouches for is checked against the store: kept
    # (adopted, its metadata written again) while its bytes are the store's ...
    metadata = tmp_path / "llama-3" / ".cache/s3/download/config.json.metadata"
    metadata.write_text('"stale"')
    checked = download_with_report(uri, tmp_path, "llama-3").result
    assert (checked.files_fetched, checked.files_adopted) == (0, 1)
    assert metadata.read_text() != '"stale"'
    # ... and fetched again once they are not.
    metadata.write_text('"stale"')
    (tmp_path / "llama-3" / "config.json").write_bytes(b"x" * len(FILES["config.json"]))
    assert download_with_report(uri, tmp_path, "llama-3").result.files_fetched == 1
    assert (tmp_path / "llama-3" / "config.json").read_bytes() == FILES["config.json"]


@rclone_slow
def test_aibrix_locks_are_held_while_pulling(
    bucket: str, aibrix_env: dict[str, str], tmp_path: Path
) -> None:
    held: list[bool] = []
    lock = tmp_path / "llama-3/.cache/s3/download" / f"{WEIGHTS}.lock"

    def observe(event: Event) -> None:
        if isinstance(event, FileQueued) and event.path == WEIGHTS:
            try:
                FileLock(lock, timeout=0).acquire()
            except Timeout:
                held.append(True)  # AIBrix would report the model as "downloading"
            else:
                held.append(False)

    download_model(f"s3://{bucket}/models/llama-3/", tmp_path, observers=[observe])
    assert held == [True]
    with FileLock(lock, timeout=0):
        pass  # released afterwards


def test_each_file_becomes_aibrix_s_as_it_completes(
    bucket: str, aibrix_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOADER_NUM_THREADS", "1")  # files complete one after another
    cache = tmp_path / "llama-3/.cache/s3/download"
    done: list[str] = []
    seen: dict[str, tuple[bool, bool]] = {}

    def observe(event: Event) -> None:
        if not isinstance(event, FileDone):
            return
        # Every file done before this one: its metadata is written, its lock released.
        for path in done:
            try:
                FileLock(cache / f"{path}.lock", timeout=0).acquire()
            except Timeout:
                free = False
            else:
                free = True
            seen[path] = ((cache / f"{path}.metadata").is_file(), free)
        done.append(event.path)

    download_model(f"s3://{bucket}/models/llama-3/", tmp_path, observers=[observe])
    assert set(seen) == set(done[:-1]) and len(done) == len(FILES)
    assert all(metadata and free for metadata, free in seen.values()), seen


@pytest.mark.slow
def test_an_interrupted_pull_leaves_aibrix_state_for_every_finished_file(
    store: S3Store, aibrix_env: dict[str, str], tmp_path: Path
) -> None:
    name = store.new_bucket()
    small = {"config.json": b"{}", "tokenizer/tokenizer.json": b'{"v": 1}'}
    store.put_tree(name, "models/m/", {**small, WEIGHTS: os.urandom(6 * MiB)})
    env = aibrix_env | {"MODELPULL_MAX_BANDWIDTH": "1MiB"}  # the weights take 6 s
    uri = f"s3://{name}/models/m/"
    proc = start_cli(
        ["--model-uri", uri, "--local-dir", str(tmp_path)],
        isolated_env(env),
        module="modelpull.aibrix",
    )
    cache = tmp_path / "m/.cache/s3/download"
    wait_until(
        "the small files are AIBrix's",
        lambda: all((cache / f"{path}.metadata").is_file() for path in small),
        [proc],
    )
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert not (tmp_path / "m" / WEIGHTS).exists()
    # Rolled back to AIBrix: it takes the finished files as they are, fetches the rest.
    assert aibrix_reference(store, name, "models/m/", tmp_path, "m") == 1


@rclone_slow
def test_model_name_and_local_dir_defaults(
    bucket: str, aibrix_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOADER_LOCAL_DIR", str(tmp_path / "models"))
    path = download_model(f"s3://{bucket}/models/llama-3")
    # What AIBrix's download_model returns: the model's folder, a Path.
    assert isinstance(path, Path)
    assert path == tmp_path / "models" / "llama-3"
    assert tree(path).keys() >= {f"{name}" for name in FILES}


def test_allow_file_suffix(
    bucket: str, aibrix_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOADER_ALLOW_FILE_SUFFIX", "json, safetensors")
    report = download_with_report(f"s3://{bucket}/models/llama-3/", tmp_path, "m")
    kept = {n for n in FILES if n.endswith(("json", "safetensors"))}
    assert {o.path for o in report.result.files} == kept
    assert not (tmp_path / "m" / "README.md").exists()
    # --download-extra-config wins over the variable.
    extra = {"allow_file_suffix": ["md"]}
    report = download_with_report(f"s3://{bucket}/models/llama-3/", tmp_path, "n", extra)
    assert {o.path for o in report.result.files} == {"README.md"}


@rclone_slow
def test_allow_file_suffix_does_not_filter_a_single_file(
    bucket: str, aibrix_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOADER_ALLOW_FILE_SUFFIX", "safetensors")
    path = download_model(f"s3://{bucket}/models/llama-3/config.json", tmp_path)
    assert path == tmp_path / "config.json"
    assert (path / "config.json").read_bytes() == FILES["config.json"]


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["DOWNLOADER_FORCE_DOWNLOAD", "DOWNLOADER_CHECK_FILE_EXIST"])
def test_force_download(
    bucket: str,
    aibrix_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    uri = f"s3://{bucket}/models/llama-3/"
    download_model(uri, tmp_path)
    again = download_with_report(uri, tmp_path)
    assert again.result.files_fetched == 0
    monkeypatch.setenv(variable, "1" if variable == "DOWNLOADER_FORCE_DOWNLOAD" else "0")
    forced = download_with_report(uri, tmp_path)
    assert forced.result.files_fetched == len(FILES)
    assert forced.already_present == 0


@rclone_slow
def test_num_threads_and_io_chunksize(
    bucket: str, aibrix_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOWNLOADER_NUM_THREADS", "3")
    monkeypatch.setenv("DOWNLOADER_S3_IO_CHUNKSIZE", "65536")
    pieces: list[int] = []

    def observe(event: Event) -> None:
        if isinstance(event, BytesTransferred):
            pieces.append(event.bytes)

    report = download_with_report(f"s3://{bucket}/models/llama-3/", tmp_path, observers=[observe])
    assert report.result.config["concurrency"] == 3
    assert report.result.config["io_chunk_size"] == 65536
    assert 0 < max(pieces) <= 65536  # each read fills at most one 64KiB buffer
    extra = download_with_report(
        f"s3://{bucket}/models/llama-3/", tmp_path, "x", {"num_threads": 2}
    ).result.config
    assert extra["concurrency"] == 2


def test_part_chunksize_sets_the_ranged_gets(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(store.endpoint_url) as proxy:
        env = {k: v for k, v in store.env().items() if k.startswith(("AWS_", "MODELPULL_"))}
        for name, value in (env | {"AWS_ENDPOINT_URL": proxy.url}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DOWNLOADER_PART_CHUNKSIZE", str(MiB))
        download_model(f"s3://{bucket}/models/llama-3/", tmp_path)
        weights = [r for r in proxy.log if r.method == "GET" and r.path.endswith(WEIGHTS)]
    assert len(weights) == 4  # 3MiB + 11 bytes in 1MiB parts
    assert all(r.range is not None for r in weights)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value"),
    [("DOWNLOADER_PART_THRESHOLD", "1048576"), ("DOWNLOADER_S3_MAX_IO_QUEUE", "100")],
)
def test_settings_without_equivalent_warn_once(
    bucket: str,
    aibrix_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.warns(CompatWarning, match=variable):
        download_model(f"s3://{bucket}/models/llama-3/", tmp_path)
    done = run_dropin(
        aibrix_env | {variable: value},
        "--model-uri",
        f"s3://{bucket}/models/llama-3/",
        "--local-dir",
        str(tmp_path / "cli"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(variable) == 1
    assert "WARNING" in done.stderr


@pytest.mark.slow
def test_tos_uri_with_tos_variables(store: S3Store, bucket: str, tmp_path: Path) -> None:
    env = {
        "TOS_ACCESS_KEY": store.credentials.access_key,
        "TOS_SECRET_KEY": store.credentials.secret_key,
        "TOS_ENDPOINT": store.endpoint_url,
        "TOS_REGION": "cn-beijing",
        "MODELPULL_ADDRESSING_STYLE": "path",
    }
    uri = f"tos://{bucket}/models/llama-3/"
    done = run_dropin(env, "--model-uri", uri, "--local-dir", str(tmp_path), "--model-name", "m")
    assert done.returncode == 0, done.stderr
    files = tree(tmp_path / "m")
    assert files[f".cache/tos/download/{WEIGHTS}.metadata"].startswith(b'"')
    assert files[WEIGHTS] == FILES[WEIGHTS]
    # TOS v1 (the TOS SDK) wrote bare ETags; so does the drop-in when told it replaces v1.
    v1 = env | {"DOWNLOADER_TOS_VERSION": "v1", "DOWNLOADER_FORCE_DOWNLOAD": "1"}
    done = run_dropin(v1, "--model-uri", uri, "--local-dir", str(tmp_path), "--model-name", "m")
    assert done.returncode == 0, done.stderr
    assert not tree(tmp_path / "m")[f".cache/tos/download/{WEIGHTS}.metadata"].startswith(b'"')


@pytest.mark.slow
def test_progress_bar_flag(bucket: str, aibrix_env: dict[str, str], tmp_path: Path) -> None:
    uri = f"s3://{bucket}/models/llama-3/"
    # A terminal on stderr, as in `kubectl logs -f` of an interactive pod: a bar is drawn.
    controller, terminal = pty.openpty()
    try:
        done = run_cli(
            ["--model-uri", uri, "--local-dir", str(tmp_path), "--enable-progress-bar"],
            isolated_env(aibrix_env),
            module="modelpull.aibrix",
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        terminal = -1
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(controller, 65536):
                drawn += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0
    assert b"pull" in drawn and b"B/s" in drawn
    quiet = run_dropin(aibrix_env, "--model-uri", uri, "--local-dir", str(tmp_path / "q"))
    assert quiet.returncode == 0
    # No bar: the summary line alone.
    assert [line.split(":")[0] for line in quiet.stderr.splitlines()] == ["modelpull.aibrix"]
    assert "files fetched" in quiet.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model-uri", "deepseek-ai/deepseek-coder-6.7b-instruct"], 2, "Hugging Face"),
        (["--model-uri", "s3://b/m/", "--download-extra-config", "{not json"], 2, "JSON"),
        (
            ["--model-uri", "s3://b/m/", "--download-extra-config", '{"num_thread": 2}'],
            2,
            "num_thread",
        ),
        ([], 2, "--model-uri"),
    ],
)
@rclone_slow
def test_usage_errors(
    aibrix_env: dict[str, str], tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    done = run_dropin(aibrix_env, *args, "--local-dir", str(tmp_path))
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_wrong_keys_in_extra_config_are_refused(
    rclone_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/config.json", b"{}")
    env = {k: v for k, v in rclone_store.env().items() if k.startswith(("AWS_", "MODELPULL_"))}
    extra: dict[str, Any] = {"ak": rclone_store.credentials.access_key, "sk": "wrong"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AccessDeniedError):
        download_model(f"s3://{bucket}/m/", tmp_path, None, extra)
    done = run_dropin(
        env,
        "--model-uri",
        f"s3://{bucket}/m/",
        "--local-dir",
        str(tmp_path),
        "--download-extra-config",
        json.dumps(extra),
    )
    assert done.returncode == 4
    assert "access denied" in done.stderr
