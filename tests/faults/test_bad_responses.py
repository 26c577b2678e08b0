"""Answers that do not fit their request: server faults, retried; and what "changed" means.

A ranged GET whose status, ``Content-Range`` or length is wrong is the server's fault
(``bad_response``), not a replaced object; a ranged GET answered with the whole object is
``range_ignored``; only a well-formed answer with a new ETag says the object changed. The
boto3 backend runs against moto and rclone, the tos-sdk backend against an anonymous
rclone (the only server the TOS SDK can talk to; see tests/functional/test_tos.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.backends.base import Backend
from modelpull.backends.boto3 import Boto3Backend
from modelpull.backends.tos_sdk import TosSdkBackend
from modelpull.config import PullConfig
from modelpull.demo.rclone import RcloneS3Server
from modelpull.errors import RangeIgnoredError, RetriesExhaustedError
from modelpull.objects import ObjectInfo
from modelpull.retry import RetryPolicy
from tests.helpers import S3Store, rclone_slow

from .proxy import (
    FaultProxy,
    Rule,
    drop_headers,
    ignore_range,
    set_headers,
    set_status,
)

MiB = 1 << 20
DATA = os.urandom(3 * MiB + 400_000)
SIZE = len(DATA)
OTHER_ETAG = '"0123456789abcdef0123456789abcdef"'


@pytest.fixture
def proxy(store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(store.endpoint_url) as p:
        yield p


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put(name, "m/w.bin", DATA)
    return name


def pull(store: S3Store, proxy: FaultProxy, bucket: str, dest: Path) -> modelpull.PullResult:
    config = PullConfig(
        endpoint_url=proxy.url,
        addressing_style="path",
        part_size=1 * MiB,
        io_chunk_size=256 * 1024,
        concurrency=1,  # parts in order: "the second ranged GET" is the second part
    )
    return modelpull.pull(f"s3://{bucket}/m/", dest, config=config, credentials=store.credentials)


def on_second_part(action: Any, times: int | None = 1) -> Rule:
    # The first ranged GET passes, so the fault hits a part in the middle of the file.
    return Rule(action, method="GET", path="w.bin", ranged_only=True, skip=1, times=times)


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes 0-99/12345",  # disagrees with its own Content-Length
        f"bytes 0-{MiB - 1}/{SIZE}",  # well formed, but another range than asked for
        f"bytes {MiB}-{2 * MiB - 1}/{SIZE + 1}",  # another total size, same ETag
        "bytes */12345",
    ],
)
@rclone_slow
def test_wrong_content_range_is_a_server_fault(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path, content_range: str
) -> None:
    proxy.add_rule(on_second_part(set_headers({"Content-Range": content_range})))
    result = pull(store, proxy, bucket, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert result.retries == {"bad_response": 1}


def test_missing_content_range_is_retried(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    # moto then answers 206 without a range, rclone 200 with the part's length: neither
    # is the whole object, so neither is "range ignored".
    proxy.add_rule(on_second_part(drop_headers(["Content-Range"])))
    result = pull(store, proxy, bucket, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert result.retries == {"bad_response": 1}


@rclone_slow
def test_unexpected_status_is_retried(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(on_second_part(set_status(203)))
    result = pull(store, proxy, bucket, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert result.retries == {"bad_response": 1}


@rclone_slow
def test_a_range_ignored_once_is_retried_and_named(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(on_second_part(ignore_range()))
    result = pull(store, proxy, bucket, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert result.retries == {"range_ignored": 1}


def test_a_new_etag_means_the_object_changed(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    proxy.add_rule(on_second_part(set_headers({"ETag": OTHER_ETAG}), times=None))
    with pytest.raises(modelpull.ObjectChangedError) as info:
        pull(store, proxy, bucket, tmp_path)
    assert info.value.code == "ETagMismatch"
    assert not (tmp_path / "w.bin").exists()


@rclone_slow
def test_a_new_etag_on_a_broken_answer_is_a_server_fault(
    store: S3Store, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    broken = {"ETag": OTHER_ETAG, "Content-Range": "bytes 0-99/12345"}
    proxy.add_rule(on_second_part(set_headers(broken)))
    result = pull(store, proxy, bucket, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert result.retries == {"bad_response": 1}


# --- what a store that never honours Range looks like to the engine ----------------------


def read(backend: Backend, obj: ObjectInfo, bucket: str, start: int, end: int) -> bytes:
    got = bytearray()
    backend.read_range(obj, bucket, start, end, memoryview(bytearray(256 * 1024)), got.extend)
    return bytes(got)


def assert_range_ignored_is_recognisable(
    backend: Backend, bucket: str, key: str, proxy: FaultProxy
) -> None:
    obj = backend.head(bucket, key)
    proxy.add_rule(Rule(ignore_range(), method="GET", ranged_only=True, times=None))
    with pytest.raises(RangeIgnoredError) as info:
        read(backend, obj, bucket, MiB, 2 * MiB)
    assert info.value.reason == "range_ignored"
    # Retried, then given up on: the reason and the cause say why.
    policy = RetryPolicy(max_attempts=2, base_delay=0.0)
    with pytest.raises(RetriesExhaustedError) as exhausted:
        policy.call(lambda: read(backend, obj, bucket, MiB, 2 * MiB))
    assert exhausted.value.reason == "range_ignored"
    assert isinstance(exhausted.value.__cause__, RangeIgnoredError)
    # The fallback: the whole object in one GET, which carries no Range.
    assert read(backend, obj, bucket, 0, obj.size) == DATA


def test_boto3_range_ignored_is_recognisable(
    store: S3Store, proxy: FaultProxy, bucket: str
) -> None:
    config = PullConfig(endpoint_url=proxy.url, addressing_style="path")
    backend = Boto3Backend(config, store.credentials)
    try:
        assert_range_ignored_is_recognisable(backend, bucket, "m/w.bin", proxy)
    finally:
        backend.close()


# --- the same through the TOS SDK --------------------------------------------------------


@pytest.fixture(scope="module")
def tos_upstream(
    rclone_server: RcloneS3Server, rclone_store: S3Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An anonymous rclone rooted at one bucket's folder, serving ``m/w.bin``."""
    bucket = rclone_store.new_bucket("tosfaults")
    rclone_store.put(bucket, "m/w.bin", DATA)
    with RcloneS3Server(rclone_server.root / bucket, anonymous=True) as anon:
        yield anon.endpoint_url


@pytest.fixture
def tos_backend(tos_upstream: str) -> Iterator[tuple[TosSdkBackend, FaultProxy]]:
    with FaultProxy(tos_upstream) as p:
        config = PullConfig(endpoint_url=p.url, region="cn-beijing", addressing_style="path")
        backend = TosSdkBackend(config)
        try:
            yield backend, p
        finally:
            backend.close()


def test_tos_wrong_content_range_is_a_server_fault(
    tos_backend: tuple[TosSdkBackend, FaultProxy],
) -> None:
    backend, proxy = tos_backend
    obj = backend.head("bucket", "m/w.bin")
    proxy.add_rule(Rule(set_headers({"Content-Range": f"bytes 0-{MiB - 1}/{SIZE}"}), times=1))
    with pytest.raises(modelpull.TransientStoreError) as info:
        read(backend, obj, "bucket", MiB, 2 * MiB)
    assert info.value.reason == "bad_response"
    assert not isinstance(info.value, modelpull.ObjectChangedError)
    assert read(backend, obj, "bucket", MiB, 2 * MiB) == DATA[MiB : 2 * MiB]


def test_tos_new_etag_means_the_object_changed(
    tos_backend: tuple[TosSdkBackend, FaultProxy],
) -> None:
    backend, proxy = tos_backend
    obj = backend.head("bucket", "m/w.bin")
    proxy.add_rule(Rule(set_headers({"ETag": OTHER_ETAG}), method="GET"))
    with pytest.raises(modelpull.ObjectChangedError):
        read(backend, obj, "bucket", MiB, 2 * MiB)


def test_tos_range_ignored_is_recognisable(tos_backend: tuple[TosSdkBackend, FaultProxy]) -> None:
    backend, proxy = tos_backend
    assert_range_ignored_is_recognisable(backend, "bucket", "m/w.bin", proxy)
