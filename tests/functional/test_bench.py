"""``modelpull bench`` end to end on a small object."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import S3Store, run_cli

MiB = 1 << 20


@pytest.mark.slow
def test_bench_compares_settings_and_writes_json_and_png(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(bucket, "m/", {"w.bin": os.urandom(3 * MiB), "config.json": b"{}"})
    out = tmp_path / "out"
    proc = run_cli(
        [
            "bench",
            f"s3://{bucket}/m/",
            "--backends",
            "boto3",
            "--concurrency",
            "2,4",
            "--part-size",
            "1MiB",
            "--rounds",
            "2",
            "--output",
            str(out),
            "--work-dir",
            str(tmp_path),
        ],
        rclone_store.env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| boto3 | 2 | 1.00 MiB |" in proc.stdout
    assert "| boto3 | 4 | 1.00 MiB |" in proc.stdout
    report = json.loads((out / "bench.json").read_text())
    assert [(r["concurrency"], r["rounds"]) for r in report["rows"]] == [(2, 2), (4, 2)]
    for row in report["rows"]:
        assert row["median_mb_per_s"] > 0
        assert row["peak_rss_mb"] > 10
        assert row["p95_request_ms"] >= row["p50_request_ms"] > 0
    assert len(report["trials"]) == 4
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Trials download into the work dir and clean up after themselves.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("modelpull-bench")] == []


def test_bench_rejects_bad_lists(rclone_store: S3Store, tmp_path: Path) -> None:
    proc = run_cli(["bench", "s3://bucket/m/", "--concurrency", "a,b"], rclone_store.env())
    assert proc.returncode == 2
    assert "--concurrency" in proc.stderr
