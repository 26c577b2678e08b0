"""Integrity you can stake a model on: resumed parts re-checked, journals distrusted,
multipart ETags and composite checksums verified, damaged parts refetched alone."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.checksums import CRC_KINDS
from modelpull.config import PullConfig
from modelpull.resolve import resolve
from modelpull.state import StateDir
from modelpull.transfer import transfer
from tests.helpers import S3Store, rclone_slow, run_cli, upload_in_parts

from .proxy import FaultProxy, Rule, flip_byte, set_headers

MiB = 1 << 20
DATA = os.urandom(4 * MiB + 1000)  # five 1 MiB parts, the last short
BIG = os.urandom(20 * MiB + 123)  # uploaded in 8 or 16 MiB parts


@pytest.fixture
def proxy(store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(store.endpoint_url) as p:
        yield p


def config(proxy: FaultProxy, **overrides: Any) -> PullConfig:
    values: dict[str, Any] = {
        "endpoint_url": proxy.url,
        "addressing_style": "path",
        "part_size": 1 * MiB,
        "io_chunk_size": 256 * 1024,
        "concurrency": 4,
    }
    return PullConfig(**(values | overrides))


def pull(store: S3Store, proxy: FaultProxy, uri: str, dest: Path, **kw: Any) -> Any:
    return modelpull.pull(uri, dest, config=config(proxy, **kw), credentials=store.credentials)


def partial(store: S3Store, proxy: FaultProxy, uri: str, dest: Path, parts: set[int]) -> None:
    """What a pull killed midway leaves: some parts in the temp file and the journal."""
    with resolve(uri, config(proxy), store.credentials) as target:
        listed = modelpull.list_objects(target)
        only = {f.path: parts for f in listed}
        transfer(target, listed, dest, lambda event: None, only=only)


def zero_part(dest: Path, path: str, index: int) -> None:
    temp = StateDir(dest).temp_path(path)
    with temp.open("r+b") as f:
        f.seek(index * MiB)
        f.write(bytes(MiB))


def tos_crc(data: bytes) -> str:
    return str(CRC_KINDS["crc64ecma"].compute(data))


# --- resume trusts nothing unchecked -----------------------------------------------------


@pytest.fixture(
    params=[
        ("moto", "crc64nvme"),
        ("moto", "crc64ecma"),
        # The proxy adds the TOS header whatever the server: crc64ecma-moto is the same path.
        pytest.param(("rclone", "crc64ecma"), marks=pytest.mark.slow),
    ],
    ids=["crc64nvme-moto", "crc64ecma-moto", "crc64ecma-rclone"],
)
def checked(request: pytest.FixtureRequest) -> Iterator[tuple[S3Store, FaultProxy, str, str]]:
    """An object with a whole-object CRC: S3's CRC-64/NVME (moto keeps it; rclone keeps an
    uploaded checksum in memory only) or TOS's CRC-64 header, added by the proxy as a TOS
    endpoint sends it."""
    server, kind = request.param
    store: S3Store = request.getfixturevalue(f"{server}_store")
    bucket = store.new_bucket()
    with FaultProxy(store.endpoint_url) as proxy:
        if kind == "crc64nvme":
            store.client().put_object(
                Bucket=bucket, Key="m/w.bin", Body=DATA, ChecksumAlgorithm="CRC64NVME"
            )
        else:
            store.put(bucket, "m/w.bin", DATA)
            header = {"x-tos-hash-crc64ecma": tos_crc(DATA)}
            proxy.add_rule(Rule(set_headers(header), path="w.bin", times=None))
        yield store, proxy, f"s3://{bucket}/m/", kind


def test_a_resumed_part_damaged_on_disk_is_fetched_again(
    checked: tuple[S3Store, FaultProxy, str, str], tmp_path: Path
) -> None:
    store, proxy, uri, kind = checked
    partial(store, proxy, uri, tmp_path, {0, 1, 2})
    zero_part(tmp_path, "w.bin", 1)  # a power loss with fsync off, a disk error, anyone
    proxy.reset_counters()
    result = pull(store, proxy, uri, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    (outcome,) = result.files
    assert outcome.parts_repaired == 1 and result.parts_repaired == 1
    assert kind in outcome.verified
    # Part 1 again, and the two never fetched: nothing the journal rightly held.
    assert result.bytes_downloaded == 2 * MiB + 1000
    assert result.to_dict()["parts_repaired"] == 1


@pytest.mark.parametrize(
    "journal",
    [
        # written by modelpull 1 (and with --verify off: no CRCs at all)
        lambda j: j | {"version": 1, "done": {"0": {}, "1": {}}},
        lambda j: j | {"part_size": 2 * MiB},  # another part size
        lambda j: j | {"done": {"0": j["done"]["0"], "99": 5}},  # a part out of range
        lambda j: j | {"done": {"0": "x", "1": -1}},  # values that are no CRC
        lambda j: j | {"done": {"0": 1 << 40}},  # a CRC wider than its kind
        lambda j: "not json {",
        lambda j: [1, 2, 3],
    ],
    ids=["old-version", "part-size", "out-of-range", "garbage", "too-wide", "not-json", "list"],
)
@rclone_slow
def test_an_unusable_journal_is_discarded_with_one_warning(
    store: S3Store,
    proxy: FaultProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    journal: Any,
) -> None:
    bucket = store.new_bucket()
    store.put(bucket, "m/w.bin", DATA)
    uri = f"s3://{bucket}/m/"
    partial(store, proxy, uri, tmp_path, {0, 1})
    path = StateDir(tmp_path).journal_path("w.bin")
    made = journal(json.loads(path.read_text()))
    path.write_text(made if isinstance(made, str) else json.dumps(made))
    with caplog.at_level(logging.WARNING, logger="modelpull"):
        result = pull(store, proxy, uri, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    warnings = [r.getMessage() for r in caplog.records if "resume journal" in r.getMessage()]
    assert len(warnings) == 1 and "fetched again" in warnings[0]
    assert result.bytes_downloaded == len(DATA)  # nothing trusted from it


@pytest.mark.slow
def test_an_unusable_journal_never_breaks_the_cli(
    store: S3Store, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = store.new_bucket()
    store.put(bucket, "m/w.bin", DATA)
    uri = f"s3://{bucket}/m/"
    partial(store, proxy, uri, tmp_path, {0, 1})
    StateDir(tmp_path).journal_path("w.bin").write_text('{"version": 2, "done": {"0": []}}')
    env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    for extra in ([], ["--force"]):
        done = run_cli(["pull", uri, str(tmp_path), "--part-size", "1MiB", *extra], env)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert (tmp_path / "w.bin").read_bytes() == DATA


# --- multipart ETags and composite checksums -----------------------------------------


def multipart_etag(data: bytes, part: int) -> str:
    digests = b"".join(hashlib.md5(data[o : o + part]).digest() for o in range(0, len(data), part))
    return f"{hashlib.md5(digests).hexdigest()}-{-(-len(data) // part)}"


def crc32c_composite(data: bytes, part: int) -> str:
    kind = CRC_KINDS["crc32c"]
    raw = b"".join(
        kind.compute(data[o : o + part]).to_bytes(4, "big") for o in range(0, len(data), part)
    )
    return f"{kind.encode(kind.compute(raw))}-{-(-len(data) // part)}"


@pytest.fixture
def moto_proxy(moto_store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(moto_store.endpoint_url) as p:
        yield p


# 16 MiB parts (two, 16 + 4) take the same path as 8 MiB (three, 8 + 8 + 4).
@pytest.mark.parametrize("part", [8 * MiB, pytest.param(16 * MiB, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    ("algorithm", "check"),
    [(None, "multipart-etag"), ("SHA256", "sha256-composite"), ("CRC32C", "crc32c-composite")],
)
def test_multipart_uploads_are_verified_by_default(
    moto_store: S3Store,
    moto_proxy: FaultProxy,
    tmp_path: Path,
    part: int,
    algorithm: str | None,
    check: str,
) -> None:
    bucket = moto_store.new_bucket()
    upload_in_parts(moto_store, bucket, "m/w.bin", BIG, part, algorithm)
    if algorithm == "CRC32C":
        # moto 5.2 computes a CRC32C composite with CRC-32: serve what S3 would.
        value = {"x-amz-checksum-crc32c": crc32c_composite(BIG, part)}
        moto_proxy.add_rule(Rule(set_headers(value), path="w.bin", times=None))
    uri = f"s3://{bucket}/m/"
    for mode, dest in (("auto", tmp_path / "a"), ("strict", tmp_path / "s")):
        result = pull(moto_store, moto_proxy, uri, dest, verify=mode, part_size=4 * MiB)
        assert (dest / "w.bin").read_bytes() == BIG
        (outcome,) = result.files
        assert check in outcome.verified, outcome.verified
        assert outcome.unverifiable is None


@pytest.mark.parametrize("algorithm", [None, "SHA256"])
def test_a_flipped_byte_in_a_multipart_object_costs_one_part(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path, algorithm: str | None
) -> None:
    bucket = moto_store.new_bucket()
    upload_in_parts(moto_store, bucket, "m/w.bin", BIG, 8 * MiB, algorithm)
    flip = moto_proxy.add_rule(
        Rule(flip_byte(1234), method="GET", path="w.bin", ranged_only=True, skip=1)
    )
    result = pull(
        moto_store, moto_proxy, f"s3://{bucket}/m/", tmp_path, part_size=8 * MiB, concurrency=2
    )
    assert moto_proxy.fired(flip) == 1
    assert (tmp_path / "w.bin").read_bytes() == BIG
    (outcome,) = result.files
    assert outcome.parts_repaired == 1
    # The model once, and the one 8 MiB part that came back damaged.
    assert result.bytes_downloaded == len(BIG) + 8 * MiB


@pytest.mark.slow
def test_a_store_that_ignores_part_numbers_falls_back_to_standard_part_sizes(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    # rclone ignores ?partNumber= and never makes multipart ETags: the proxy gives it the
    # ETag an 8 MiB multipart upload has on S3.
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/w.bin", BIG)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        etag = {"ETag": f'"{multipart_etag(BIG, 8 * MiB)}"'}
        proxy.add_rule(Rule(set_headers(etag), path="w.bin", times=None))
        result = pull(rclone_store, proxy, f"s3://{bucket}/m/", tmp_path / "a")
        assert (tmp_path / "a" / "w.bin").read_bytes() == BIG
        assert "multipart-etag" in result.files[0].verified

        # A part size no standard guess fits is reported, not failed; strict fails it.
        proxy.clear_rules()
        odd = {"ETag": f'"{multipart_etag(BIG, 7 * MiB)}"'}
        proxy.add_rule(Rule(set_headers(odd), path="w.bin", times=None))
        result = pull(rclone_store, proxy, f"s3://{bucket}/m/", tmp_path / "b")
        (outcome,) = result.files
        assert outcome.unverifiable == "multipart-etag, part size unknown"
        assert result.to_dict()["files"][0]["unverifiable"] == outcome.unverifiable
        with pytest.raises(modelpull.IntegrityError, match="cannot be checked"):
            pull(rclone_store, proxy, f"s3://{bucket}/m/", tmp_path / "c", verify="strict")
        assert not (tmp_path / "c" / "w.bin").exists()


def test_sha1_is_read_and_checked(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = moto_store.new_bucket()
    moto_store.client().put_object(
        Bucket=bucket, Key="m/w.bin", Body=DATA, ChecksumAlgorithm="SHA1"
    )
    result = pull(moto_store, moto_proxy, f"s3://{bucket}/m/", tmp_path)
    assert "sha1" in result.files[0].verified
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    moto_proxy.add_rule(Rule(set_headers({"x-amz-checksum-sha1": wrong}), path="w.bin", times=None))
    with pytest.raises(modelpull.IntegrityError, match="sha1"):
        pull(moto_store, moto_proxy, f"s3://{bucket}/m/", tmp_path / "again")


@pytest.mark.slow
def test_eight_percent_flipped_gets_cost_less_than_half_the_model_again(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(96 * MiB)
    bucket = moto_store.new_bucket()
    upload_in_parts(moto_store, bucket, "m/w.bin", data, 8 * MiB)
    flips = moto_proxy.add_rule(
        Rule(flip_byte(4321), method="GET", path="w.bin", times=None, p=0.08, seed=7)
    )
    result = pull(
        moto_store, moto_proxy, f"s3://{bucket}/m/", tmp_path, part_size=8 * MiB, concurrency=4
    )
    assert (tmp_path / "w.bin").read_bytes() == data
    assert moto_proxy.fired(flips) >= 2  # the seed makes it so; 8% of 12 GETs is 1
    assert result.files[0].parts_repaired == moto_proxy.fired(flips)
    assert result.bytes_downloaded < 1.5 * len(data)
