"""Retries and end-to-end integrity, with faults injected at the HTTP level by FaultProxy."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import modelpull
from modelpull.checksums import CRC_KINDS
from modelpull.config import PullConfig
from modelpull.events import Event, FileVerified
from tests.helpers import S3Store, rclone_slow, run_cli

from .proxy import (
    FaultProxy,
    Rule,
    delay,
    flip_byte,
    reset_after,
    set_headers,
    status,
    truncate_after,
)

MiB = 1 << 20
# The last part is shorter than a MiB but longer than the faults' 300,000 bytes.
DATA = os.urandom(3 * MiB + 400_000)
SMALL = b'{"hidden_size": 4096}'


@pytest.fixture
def proxy(store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(store.endpoint_url) as p:
        yield p


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "m/", {"w.bin": DATA, "config.json": SMALL})
    return name


def config(proxy: FaultProxy, **overrides: object) -> PullConfig:
    base = PullConfig(
        endpoint_url=proxy.url,
        addressing_style="path",
        part_size=1 * MiB,
        io_chunk_size=256 * 1024,
        concurrency=4,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def pull(
    store: S3Store, proxy: FaultProxy, bucket: str, dest: Path, **overrides: object
) -> tuple[modelpull.PullResult, list[Event]]:
    events: list[Event] = []
    result = modelpull.pull(
        f"s3://{bucket}/m/",
        dest,
        config=config(proxy, **overrides),
        credentials=store.credentials,
        observers=[events.append],
    )
    return result, events


def assert_intact(dest: Path) -> None:
    assert (dest / "w.bin").read_bytes() == DATA
    assert (dest / "config.json").read_bytes() == SMALL


def _retried_range(proxy: FaultProxy, fault: str) -> tuple[int, int, str]:
    """The broken request's range, and the range of the one request that retried it."""
    broken = next(r for r in proxy.log if fault in r.faults)
    assert broken.range is not None
    start_text, end_text = broken.range.split("=")[1].split("-")
    start, end = int(start_text), int(end_text)
    retried = [
        r for r in proxy.log if r.range and r.range.endswith(f"-{end}") and fault not in r.faults
    ]
    assert len(retried) == 1
    assert retried[0].range is not None
    return start, end, retried[0].range


def test_reset_mid_body_is_retried(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    # Reset the second part of w.bin after 300,000 of its bytes.
    rule = proxy.add_rule(
        Rule(reset_after(300_000), method="GET", path="w.bin", ranged_only=True, skip=1)
    )
    result, _events = pull(store, proxy, bucket, tmp_path)
    assert_intact(tmp_path)
    assert proxy.fired(rule) == 1
    assert result.retries == {"reset": 1}
    # A reset discards what the kernel had not handed over yet, so the retry starts at
    # the last byte read before it: between the part's start and 300,000 bytes in.
    start, end, retried = _retried_range(proxy, "ResetAfter")
    resumed = int(retried.split("=")[1].split("-")[0])
    assert start <= resumed <= start + 300_000
    assert retried == f"bytes={resumed}-{end}"


@rclone_slow
def test_broken_part_resumes_from_the_byte_reached(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(
        Rule(truncate_after(300_000), method="GET", path="w.bin", ranged_only=True, skip=1)
    )
    result, _ = pull(store, proxy, bucket, tmp_path)
    assert_intact(tmp_path)
    assert result.retries == {"short_body": 1}
    # Every byte that arrived was kept: the retry asks for the rest of the part only.
    start, end, retried = _retried_range(proxy, "TruncateAfter")
    assert retried == f"bytes={start + 300_000}-{end}"


def test_truncated_body_is_retried(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(truncate_after(5), method="GET", path="config.json"))
    result, _events = pull(store, proxy, bucket, tmp_path)
    assert_intact(tmp_path)
    assert result.retries == {"short_body": 1}


@pytest.mark.parametrize(
    ("code", "s3_code"), [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable")]
)
@rclone_slow
def test_server_errors_are_retried(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path, code: int, s3_code: str
) -> None:
    proxy.add_rule(Rule(status(code, s3_code), method="GET", path="w.bin", times=2))
    result, _events = pull(store, proxy, bucket, tmp_path)
    assert_intact(tmp_path)
    assert result.retries == {s3_code: 2}


@pytest.mark.slow
def test_retry_after_is_honoured(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(status(503, "SlowDown", retry_after=1), method="GET", path="config.json"))
    started = time.monotonic()
    pull(store, proxy, bucket, tmp_path)
    assert time.monotonic() - started >= 1.0
    assert_intact(tmp_path)


@pytest.mark.slow
def test_slow_response_times_out_and_is_retried(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(delay(seconds_before_headers=3), method="GET", path="config.json"))
    result, _ = pull(store, proxy, bucket, tmp_path, read_timeout=0.5)
    assert_intact(tmp_path)
    assert result.retries == {"timeout": 1}


@pytest.mark.slow
def test_retry_budget_is_bounded(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    rule = proxy.add_rule(
        Rule(status(503, "SlowDown"), method="GET", path="config.json", times=None)
    )
    with pytest.raises(modelpull.RetriesExhaustedError, match="3 attempts") as info:
        pull(store, proxy, bucket, tmp_path, max_attempts=3)
    assert proxy.fired(rule) == 3
    assert info.value.code == "SlowDown"
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    ("code", "s3_code", "error"),
    [
        (403, "AccessDenied", modelpull.AccessDeniedError),
        (404, "NoSuchKey", modelpull.ObjectNotFoundError),
    ],
)
@rclone_slow
def test_permanent_errors_are_not_retried(
    store: S3Store,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    code: int,
    s3_code: str,
    error: type[Exception],
) -> None:
    rule = proxy.add_rule(Rule(status(code, s3_code), method="GET", path="w.bin", times=None))
    with pytest.raises(error):
        pull(store, proxy, bucket, tmp_path, concurrency=1)
    assert proxy.fired(rule) == 1
    assert not (tmp_path / "w.bin").exists()


# -- integrity --------------------------------------------------------------------------


def test_flipped_byte_is_caught_and_refetched(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    # Both servers publish a plain MD5 ETag for a single-part upload: it catches the flip.
    proxy.add_rule(Rule(flip_byte(1234), method="GET", path="w.bin", ranged_only=True))
    _result, events = pull(store, proxy, bucket, tmp_path)
    assert_intact(tmp_path)
    verified = {(e.path, e.kind) for e in events if isinstance(e, FileVerified)}
    assert ("w.bin", "md5") in verified


def test_persistent_corruption_fails_and_never_lands(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(flip_byte(10), method="GET", path="w.bin", times=None))
    with pytest.raises(modelpull.IntegrityError) as info:
        pull(store, proxy, bucket, tmp_path)
    err = info.value
    assert err.path == "w.bin"
    assert err.algorithm == "md5"
    assert err.expected != err.actual
    assert err.expected in str(err) and err.actual in str(err)
    assert not (tmp_path / "w.bin").exists()


def _crc64(data: bytes) -> str:
    kind = CRC_KINDS["crc64ecma"]
    return kind.encode(kind.compute(data))


@rclone_slow
def test_tos_crc64_header_is_verified(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(
        Rule(
            set_headers({"x-tos-hash-crc64ecma": _crc64(DATA)}),
            method="HEAD",
            path="w.bin",
            times=None,
        )
    )
    _result, events = pull(store, proxy, bucket, tmp_path)
    assert_intact(tmp_path)
    kinds = {e.kind for e in events if isinstance(e, FileVerified) and e.path == "w.bin"}
    # The CRC is checked; MD5 is not also paid for when a CRC is offered.
    assert kinds == {"size", "crc64ecma"}


def test_wrong_crc64_header_is_caught(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    wrong = _crc64(DATA + b"x")
    proxy.add_rule(
        Rule(set_headers({"x-tos-hash-crc64ecma": wrong}), method="HEAD", path="w.bin", times=None)
    )
    with pytest.raises(modelpull.IntegrityError) as info:
        pull(store, proxy, bucket, tmp_path)
    assert (info.value.algorithm, info.value.expected, info.value.actual) == (
        "crc64ecma",
        wrong,
        _crc64(DATA),
    )
    assert not (tmp_path / "w.bin").exists()


@pytest.mark.parametrize("kind", ["crc32c", "crc64nvme", "crc32"])
@rclone_slow
def test_s3_additional_checksums(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path, kind: str
) -> None:
    crc = CRC_KINDS[kind]
    right = crc.encode(crc.compute(DATA))
    rule = proxy.add_rule(
        Rule(
            set_headers({f"x-amz-checksum-{kind}": right}), method="HEAD", path="w.bin", times=None
        )
    )
    _result, events = pull(store, proxy, bucket, tmp_path / "ok")
    assert ("w.bin", kind) in {(e.path, e.kind) for e in events if isinstance(e, FileVerified)}
    proxy.remove_rule(rule)
    proxy.add_rule(
        Rule(
            set_headers({f"x-amz-checksum-{kind}": crc.encode(crc.compute(b"other"))}),
            method="HEAD",
            path="w.bin",
            times=None,
        )
    )
    with pytest.raises(modelpull.IntegrityError, match=kind):
        pull(store, proxy, bucket, tmp_path / "bad")
    assert not (tmp_path / "bad" / "w.bin").exists()


def test_verify_off_skips_checksums(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(set_headers({"x-tos-hash-crc64ecma": "12345"}), method="HEAD", times=None))
    _result, events = pull(store, proxy, bucket, tmp_path, verify="off")
    assert_intact(tmp_path)
    assert {e.kind for e in events if isinstance(e, FileVerified)} == {"size"}


def test_verify_strict_fails_without_a_checksum(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    # A multipart-looking ETag is not an MD5 of the content, and nothing else is offered.
    proxy.add_rule(
        Rule(
            set_headers({"ETag": '"0123456789abcdef0123456789abcdef-3"'}),
            method="HEAD",
            path="w.bin",
            times=None,
        )
    )
    proxy.add_rule(
        Rule(
            set_headers({"ETag": '"0123456789abcdef0123456789abcdef-3"'}),
            method="GET",
            path="w.bin",
            times=None,
        )
    )
    with pytest.raises(modelpull.IntegrityError, match="strict"):
        pull(store, proxy, bucket, tmp_path, verify="strict")
    assert not (tmp_path / "w.bin").exists()


@pytest.mark.slow
def test_cli_reports_retries_and_integrity(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(status(503, "SlowDown"), method="GET", path="config.json", times=1))
    env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    args = ["pull", f"s3://{bucket}/m/", str(tmp_path / "a"), "--json"]
    proc = run_cli(args, env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["retries"] == {"SlowDown": 1}

    proxy.add_rule(Rule(flip_byte(0), method="GET", path="config.json", times=None))
    args[2] = str(tmp_path / "b")
    proc = run_cli(args, env)
    assert proc.returncode == 7
    assert "config.json" in proc.stderr and "md5" in proc.stderr
    assert json.loads(proc.stdout)["error"]["type"] == "IntegrityError"
    assert not (tmp_path / "b" / "config.json").exists()
