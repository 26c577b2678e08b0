"""The ``modelpull`` command in a subprocess against real local S3 servers."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import S3Store, cli_command, rclone_slow, run_cli

MiB = 1 << 20


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelpull: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "m/", {"config.json": b"{}", "w.safetensors": os.urandom(3 * MiB)})
    return name


@pytest.mark.slow
def test_pull_and_json_summary(store: S3Store, bucket: str, tmp_path: Path) -> None:
    proc = run_cli(
        [
            "pull",
            f"s3://{bucket}/m/",
            str(tmp_path),
            "--json",
            "--part-size",
            "1MiB",
            "--concurrency",
            "3",
        ],
        store.env(),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True
    assert summary["files_fetched"] == 2
    assert summary["bytes_downloaded"] == 3 * MiB + 2
    assert summary["config"]["part_size"] == MiB
    assert summary["config"]["concurrency"] == 3
    assert (tmp_path / "w.safetensors").stat().st_size == 3 * MiB
    # Nothing in the report that could be a credential.
    assert store.credentials.secret_key not in proc.stdout + proc.stderr

    again = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path), "--json"], store.env())
    assert json.loads(again.stdout)["files_skipped"] == 2
    assert json.loads(again.stdout)["bytes_downloaded"] == 0


@pytest.mark.slow
def test_plain_summary_and_ls(store: S3Store, bucket: str, tmp_path: Path) -> None:
    proc = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path / "d")], store.env())
    assert proc.returncode == 0, proc.stderr
    assert "pulled 2 files" in proc.stdout
    listing = run_cli(["ls", f"s3://{bucket}/m/", "--bytes"], store.env())
    assert listing.returncode == 0
    assert listing.stdout.split() == [
        "2",
        "config.json",
        str(3 * MiB),
        "w.safetensors",
        str(3 * MiB + 2),
        "total,",
        "2",
        "files",
    ]
    rows = [
        json.loads(line)
        for line in run_cli(["ls", f"s3://{bucket}/m", "--json"], store.env()).stdout.splitlines()
    ]
    assert [r["path"] for r in rows] == ["config.json", "w.safetensors"]


@rclone_slow
def test_env_configures_the_pull(store: S3Store, bucket: str, tmp_path: Path) -> None:
    env = store.env() | {"MODELPULL_PART_SIZE": "1MiB", "MODELPULL_CONCURRENCY": "2"}
    proc = run_cli(
        ["pull", f"s3://{bucket}/m/", str(tmp_path), "--json", "--concurrency", "5"], env
    )
    config = json.loads(proc.stdout)["config"]
    assert (config["part_size"], config["concurrency"]) == (MiB, 5)


# -- bad input: one line, a documented code, nothing under a final name --------------


def test_malformed_uri(store: S3Store, tmp_path: Path) -> None:
    assert_clean_failure(
        run_cli(["pull", "models/llama", str(tmp_path / "d")], store.env()), 2, "s3://BUCKET"
    )
    assert not (tmp_path / "d").exists()


def test_unknown_bucket(store: S3Store, tmp_path: Path) -> None:
    proc = run_cli(["pull", "s3://no-such-bucket-here/m/", str(tmp_path / "d")], store.env())
    assert_clean_failure(proc, 3, "no-such-bucket-here")
    assert not (tmp_path / "d").exists()


def test_missing_key_or_empty_prefix(store: S3Store, bucket: str, tmp_path: Path) -> None:
    assert_clean_failure(
        run_cli(["pull", f"s3://{bucket}/nothing/", str(tmp_path / "d")], store.env()),
        3,
        "nothing at",
    )
    assert_clean_failure(
        run_cli(["pull", f"s3://{bucket}/m/missing.json", str(tmp_path / "d")], store.env()), 3
    )
    assert not (tmp_path / "d").exists()


def test_bad_credentials(rclone_store: S3Store, tmp_path: Path) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/a", b"a")
    env = rclone_store.env() | {"AWS_SECRET_ACCESS_KEY": "wrong-secret-value-123"}
    proc = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path / "d"), "--json"], env)
    assert_clean_failure(proc, 4, "access denied", "credentials")
    assert "wrong-secret-value-123" not in proc.stderr + proc.stdout
    assert json.loads(proc.stdout)["error"]["status"] == 403
    assert not (tmp_path / "d" / "a").exists()


def test_no_credentials(rclone_store: S3Store, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in rclone_store.env().items()
        if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")
    }
    assert_clean_failure(
        run_cli(["pull", "s3://whatever/m/", str(tmp_path / "d")], env), 4, "credentials"
    )


@rclone_slow
def test_unreachable_endpoint(store: S3Store, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        env = store.env() | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        proc = run_cli(["pull", "s3://bucket/m/", str(tmp_path / "d"), "--max-attempts", "2"], env)
    assert_clean_failure(proc, 5, "cannot reach", "--endpoint-url")


@pytest.mark.slow
def test_endpoint_without_scheme_gets_https(store: S3Store, bucket: str, tmp_path: Path) -> None:
    # An http server reached with https: a TLS failure, not botocore's "Invalid endpoint".
    host = store.endpoint_url.removeprefix("http://")
    proc = run_cli(
        [
            "pull",
            f"s3://{bucket}/m/",
            str(tmp_path / "d"),
            "--endpoint-url",
            host,
            "--max-attempts",
            "1",
        ],
        store.env(),
    )
    assert proc.returncode == 5, proc.stderr
    assert "Invalid endpoint" not in proc.stderr
    assert "Traceback" not in proc.stderr


@rclone_slow
def test_dest_is_a_file(store: S3Store, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "file"
    dest.write_text("x")
    assert_clean_failure(
        run_cli(["pull", f"s3://{bucket}/m/", str(dest)], store.env()), 6, "not a folder"
    )
    assert_clean_failure(
        run_cli(["pull", f"s3://{bucket}/m/", str(dest / "sub")], store.env()), 6, "not a folder"
    )


@rclone_slow
def test_dest_not_writable(store: S3Store, bucket: str, tmp_path: Path) -> None:
    dest = tmp_path / "ro"
    dest.mkdir()
    args = ["pull", f"s3://{bucket}/m/", str(dest / "model")]
    if os.geteuid() == 0:
        # root writes through permission bits: make the folder a read-only mount in a
        # private mount namespace instead.
        script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
        proc = run_cli(
            args,
            store.env(),
            prefix=["unshare", "-m", "sh", "-c", script, str(dest)],
        )
    else:
        dest.chmod(0o555)
        proc = run_cli(args, store.env())
    assert_clean_failure(proc, 6, "not writable")
    assert not (dest / "model").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--concurrency", "0"], "concurrency"),
        (["--concurrency", "lots"], "--concurrency"),
        (["--part-size", "abc"], "--part-size"),
        (["--part-size", "1KiB"], "part size"),
        (["--addressing-style", "sideways"], "addressing style"),
    ],
)
@rclone_slow
def test_invalid_flag_values(store: S3Store, tmp_path: Path, flags: list[str], needle: str) -> None:
    proc = run_cli(["pull", "s3://bucket/m/", str(tmp_path / "d"), *flags], store.env())
    assert_clean_failure(proc, 2, needle)


def test_invalid_env_value(store: S3Store, tmp_path: Path) -> None:
    env = store.env() | {"MODELPULL_PART_SIZE": "huge"}
    assert_clean_failure(
        run_cli(["pull", "s3://bucket/m/", str(tmp_path / "d")], env), 2, "MODELPULL_PART_SIZE"
    )


@rclone_slow
def test_progress_on_a_terminal(store: S3Store, bucket: str, tmp_path: Path) -> None:
    """On a terminal the progress bar shows bytes, rate and ETA."""
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the pty
        os.execve(
            sys.executable, cli_command("pull", f"s3://{bucket}/m/", str(tmp_path)), store.env()
        )
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "100%" in text and "3.00M" in text and "B/s" in text, text


@rclone_slow
def test_no_progress_on_a_pipe(store: S3Store, bucket: str, tmp_path: Path) -> None:
    proc = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path)], store.env())
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_json_report_is_complete(store: S3Store, bucket: str, tmp_path: Path) -> None:
    proc = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path), "--json"], store.env())
    report = json.loads(proc.stdout)
    for key in (
        "files",
        "bytes_downloaded",
        "seconds",
        "mb_per_s",
        "retries",
        "checksums_verified",
        "backend",
        "config",
    ):
        assert key in report
    assert report["backend"] == "boto3"
    # Both servers publish plain MD5 ETags and no CRC: MD5 is what auto verifies.
    assert report["checksums_verified"] == {"size": 2, "md5": 2}
    assert {f["path"]: f["verified"] for f in report["files"]} == {
        "config.json": ["size", "md5"],
        "w.safetensors": ["size", "md5"],
    }
    assert all(f["seconds"] >= 0 for f in report["files"])
