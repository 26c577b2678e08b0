"""``modelpull bench`` with its defaults on a plain S3 store, and its argument errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelpull.cli import main
from tests.helpers import S3Store, run_cli

MiB = 1 << 20

pytestmark = pytest.mark.usefixtures("restore_logger")


@pytest.mark.slow
def test_defaults_on_an_s3_store_leave_out_the_tos_sdk_with_a_note(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(bucket, "m/", {"w.bin": os.urandom(2 * MiB), "config.json": b"{}"})
    out = tmp_path / "out"
    # --backends left at its default (boto3,tos-sdk): the TOS SDK cannot sign for a plain
    # S3 endpoint with no TOS region, so it is left out, said once, and boto3 runs.
    proc = run_cli(
        [
            *("bench", f"s3://{bucket}/m/", "--rounds", "1", "--part-size", "1MiB"),
            *("--output", str(out), "--work-dir", str(tmp_path)),
        ],
        rclone_store.env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "leaving out" in line]
    assert len(notes) == 1 and "tos-sdk" in notes[0]
    assert "| boto3 | 16 | 1.00 MiB |" in proc.stdout
    assert "tos-sdk" not in proc.stdout
    assert [r["backend"] for r in json.loads((out / "bench.json").read_text())["rows"]] == ["boto3"]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--work-dir", "/nonexistent/modelpull"], 2, "--work-dir"),
        (["--rounds", "0"], 2, "--rounds"),
        (["--backends", "boto4"], 2, "boto4"),
        # Named explicitly, the TOS SDK is not left out: its failure is the bench's.
        (["--backends", "tos-sdk"], 2, "region"),
    ],
)
def test_bad_arguments_are_one_line(
    rclone_store: S3Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    needle: str,
) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/a.bin", b"a")
    for name, value in rclone_store.env().items():
        if name.startswith(("AWS_", "MODELPULL_")):
            monkeypatch.setenv(name, value)
    status = main(["bench", f"s3://{bucket}/m/", "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert status == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelpull: error: "), err
    assert needle in lines[0]


def test_an_output_folder_that_cannot_be_made(
    rclone_store: S3Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in rclone_store.env().items():
        if name.startswith(("AWS_", "MODELPULL_")):
            monkeypatch.setenv(name, value)
    (tmp_path / "file").write_text("x")
    status = main(["bench", "s3://bucket/m/", "--output", str(tmp_path / "file" / "out")])
    assert status == 6
    assert "--output" in capsys.readouterr().err
