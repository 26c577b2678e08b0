"""The local S3 servers the suite runs against: do they answer as S3 does where we rely on it?"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelpull.api import pull as real_pull
from modelpull.credentials import Credentials
from modelpull.demo import run as demo_run
from modelpull.demo import run_demo
from modelpull.demo.rclone import RcloneS3Server
from modelpull.errors import EndpointError
from modelpull.results import PullResult
from tests.helpers import S3Store

SMALL_SHARDS = (256 * 1024, 128 * 1024)


def test_put_head_get(store: S3Store) -> None:
    bucket = store.new_bucket()
    data = os.urandom(3000)
    store.put(bucket, "models/m/w.bin", data)
    client = store.client()

    head = client.head_object(Bucket=bucket, Key="models/m/w.bin")
    assert head["ContentLength"] == len(data)
    # Both give a single-part object's ETag as the MD5 of its bytes, quoted.
    assert head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert client.get_object(Bucket=bucket, Key="models/m/w.bin")["Body"].read() == data


def test_list_pages_with_small_max_keys(store: S3Store) -> None:
    bucket = store.new_bucket()
    keys = store.put_tree(bucket, "p/", {f"{i:02d}/f{i}.txt": b"x" * i for i in range(7)})
    store.put(bucket, "other/not-listed.txt", b"-")
    client = store.client()

    seen: list[str] = []
    pages = 0
    kwargs: dict[str, str] = {}
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix="p/", MaxKeys=2, **kwargs)
        pages += 1
        assert page["KeyCount"] <= 2
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        kwargs = {"ContinuationToken": page["NextContinuationToken"]}
    assert seen == sorted(keys)
    assert pages == 4
    sizes = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sizes["p/03/f3.txt"] == 3


def test_ranged_get(store: S3Store) -> None:
    bucket = store.new_bucket()
    data = os.urandom(1000)
    store.put(bucket, "blob", data)
    client = store.client()

    part = client.get_object(Bucket=bucket, Key="blob", Range="bytes=100-199")
    assert part["Body"].read() == data[100:200]
    assert part["ContentRange"] == "bytes 100-199/1000"
    assert part["ContentLength"] == 100
    # rclone answers a range with 200 (and the right Content-Range), moto with 206.
    assert part["ResponseMetadata"]["HTTPStatusCode"] in (200, 206)
    tail = client.get_object(Bucket=bucket, Key="blob", Range="bytes=990-")
    assert tail["Body"].read() == data[990:]


def test_missing_key_and_bucket(store: S3Store) -> None:
    bucket = store.new_bucket()
    client = store.client()
    with pytest.raises(ClientError) as head:
        client.head_object(Bucket=bucket, Key="nope")
    assert head.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as get:
        client.get_object(Bucket=bucket, Key="nope")
    assert get.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as listing:
        client.list_objects_v2(Bucket="no-such-bucket-here")
    assert listing.value.response["Error"]["Code"] == "NoSuchBucket"


def test_rclone_buckets_are_folders(rclone_server: RcloneS3Server, rclone_store: S3Store) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "a/b.txt", b"hello")
    assert (rclone_server.root / bucket / "a" / "b.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        (Credentials("modelpull-demo", "not-the-secret"), "SignatureDoesNotMatch"),
        (Credentials("someone-else", "modelpull-demo-secret-key"), "InvalidAccessKeyId"),
    ],
    ids=["wrong-secret", "unknown-key"],
)
def test_rclone_checks_credentials(
    rclone_store: S3Store, credentials: Credentials, code: str
) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "k", b"v")
    client = rclone_store.client_with(credentials)
    with pytest.raises(ClientError) as listing:
        client.list_objects_v2(Bucket=bucket)
    with pytest.raises(ClientError) as get:
        client.get_object(Bucket=bucket, Key="k")
    for refused in (listing.value, get.value):
        assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert refused.response["Error"]["Code"] == code


def test_env_and_config_point_at_the_store(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "from-the-shell")
    env = store.env()
    assert env["AWS_ENDPOINT_URL"] == store.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == store.credentials.access_key
    assert env["MODELPULL_ADDRESSING_STYLE"] == "path"
    assert "AWS_PROFILE" not in env
    assert not Path(env["AWS_CONFIG_FILE"]).exists()
    config = store.config(concurrency=3)
    assert (config.endpoint_url, config.addressing_style, config.concurrency) == (
        store.endpoint_url,
        "path",
        3,
    )


def test_rclone_failure_to_start_shows_its_output(tmp_path: Path) -> None:
    server = RcloneS3Server(tmp_path / "root", extra_args=["--no-such-flag"])
    with pytest.raises(EndpointError, match="no-such-flag"):
        server.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.endpoint_url
    server.stop()  # stopping a server that is not running is harmless


def test_rclone_port_in_use(rclone_server: RcloneS3Server, tmp_path: Path) -> None:
    port = int(rclone_server.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(EndpointError, match=r"(?i)address already in use"):
        RcloneS3Server(tmp_path / "root", port=port).start()


def test_run_demo_pulls_and_verifies(tmp_path: Path) -> None:
    out = io.StringIO()
    keep = tmp_path / "model"
    assert run_demo(shard_sizes=SMALL_SHARDS, keep=keep, progress=False, out=out) == 0
    text = out.getvalue()
    assert "8 files fetched, 0 skipped" in text
    assert "verified 8 files byte for byte" in text
    assert len(list(keep.glob("*.safetensors"))) == 2

    again = io.StringIO()
    assert run_demo(shard_sizes=SMALL_SHARDS, keep=keep, progress=False, out=again) == 0
    assert "0 files fetched, 8 skipped" in again.getvalue()


def test_run_demo_reports_a_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corrupting_pull(uri: str, dest: Path, **kwargs: Any) -> PullResult:
        result = real_pull(uri, dest, **kwargs)
        (Path(dest) / "config.json").write_text("{}")
        return result

    monkeypatch.setattr(demo_run, "pull", corrupting_pull)
    out = io.StringIO()
    assert run_demo(shard_sizes=SMALL_SHARDS, keep=tmp_path, progress=False, out=out) == 1
    assert "MISMATCH in 1 of 8 files: config.json" in out.getvalue()
