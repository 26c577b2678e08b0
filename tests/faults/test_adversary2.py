"""The second adversary's findings against the boto3 backend: a store (or a proxy in
front of it) that garbles headers. moto behind the fault proxy; nothing mocked."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import S3Store, run_cli

from .proxy import FaultProxy, Rule, set_headers

MiB = 1 << 20


def test_a_part_count_that_is_not_a_number_is_ignored_not_exit_10(
    moto_store: S3Store, tmp_path: Path
) -> None:
    """modelpull reads ``x-amz-mp-parts-count`` leniently (a number that does not parse
    is no count; a lying one is not believed), yet a non-number on every HEAD failed the
    pull: exit 10, 'unexpected ValueError: invalid literal for int() with base 10'."""
    bucket = moto_store.new_bucket()
    data = os.urandom(3 * MiB)
    moto_store.put(bucket, "m/w.bin", data)
    with FaultProxy(moto_store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers({"x-amz-mp-parts-count": "zz"}), times=None))
        env = moto_store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        done = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "1MiB"], env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.bin").read_bytes() == data


def test_a_head_without_a_usable_content_length_is_a_bad_response(
    moto_store: S3Store, tmp_path: Path
) -> None:
    """A HEAD whose Content-Length is no number was 'unexpected ValueError' (exit 10 with
    no hint); it is the store's fault, retried as one, then one line naming it."""
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/w.bin", os.urandom(3 * MiB))
    with FaultProxy(moto_store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers({"Content-Length": "zz"}), method="HEAD", times=None))
        env = moto_store.env() | {"AWS_ENDPOINT_URL": proxy.url, "MODELPULL_MAX_ATTEMPTS": "2"}
        done = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "1MiB"], env)
        heads = [r for r in proxy.log if r.method == "HEAD"]
    assert done.returncode == 10, done.stderr
    assert "no usable Content-Length" in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
    assert len(heads) == 2  # retried, within the budget
    assert not (tmp_path / "w.bin").exists()
