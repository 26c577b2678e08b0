"""The adversary's findings against the store: a store (or a race with it) that lies.

Each test shows one way a hostile or broken server, or a change of the object at the
worst moment, could make modelpull break a promise: wrong bytes under a final name, a
traceback, an unbounded wait. Real servers (moto) behind the fault proxy; nothing mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.checksums import CRC_KINDS, DIGEST_KINDS, composite
from modelpull.config import PullConfig
from modelpull.events import Event, PartHedged
from tests.helpers import S3Store, run_cli, upload_in_parts

from .proxy import (
    FaultProxy,
    Rule,
    delay,
    flip_byte,
    hook,
    if_match,
    reset_after,
    set_headers,
    set_status,
)

KiB = 1 << 10
MiB = 1 << 20


def config(proxy: FaultProxy, **overrides: Any) -> PullConfig:
    values: dict[str, Any] = {"endpoint_url": proxy.url, "addressing_style": "path"}
    return PullConfig(**(values | overrides))


@pytest.fixture
def moto_proxy(moto_store: S3Store) -> Iterator[FaultProxy]:
    # 16 KiB chunks: a delay per chunk paces a body finely.
    with FaultProxy(moto_store.endpoint_url, chunk_size=16 * KiB) as proxy:
        yield proxy


# --- a hedge still writing when its object changes ----------------------------------


@pytest.mark.slow
def test_a_hedge_still_in_flight_when_its_object_changes_never_lands_old_bytes(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Part 0 of slow.bin crawls and is hedged (its tail fetched by a second request);
    then the object is replaced and part 0's own request breaks: its retry sees the new
    ETag, so the file starts over for the new version. The hedge of the old version is
    still streaming: none of its bytes may reach the new file."""
    store, proxy = moto_store, moto_proxy
    bucket = store.new_bucket()
    client = store.client()
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="CRC64NVME")

    put("m/slow.bin", old)
    for i in range(3):  # peers that finish at once: part 0 is far slower than them
        put(f"m/fast-{i}.bin", os.urandom(MiB))
    slow: dict[str, Any] = {"method": "GET", "path": "slow.bin"}
    # Part 0's first request: 16 KiB every 0.4 s, reset after 80 KiB (about 2 s in).
    proxy.add_rule(Rule(delay(seconds_per_chunk=0.4), range="^bytes=0-", **slow))
    proxy.add_rule(Rule(reset_after(80 * KiB), range="^bytes=0-", **slow))
    # The hedge of its tail (from inside the part, to its end) streams the old version.
    tail = proxy.add_rule(
        Rule(delay(seconds_per_chunk=0.3), range=r"^bytes=[1-9][0-9]*-1048575$", **slow)
    )
    # Part 0's retry finds the object replaced; the new version's part 0 takes ~3 s.
    proxy.add_rule(Rule(hook(lambda: put("m/slow.bin", new)), range="^bytes=81920-", **slow))
    proxy.add_rule(Rule(delay(seconds_per_chunk=0.05), range="^bytes=0-", skip=1, **slow))
    proxy.add_rule(Rule(if_match(), method="GET", times=None))
    events: list[Event] = []
    modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=config(proxy, part_size=MiB, io_chunk_size=64 * KiB, concurrency=4),
        credentials=store.credentials,
        observers=[events.append],
    )
    assert [e.path for e in events if isinstance(e, PartHedged)] == ["slow.bin"]
    assert proxy.fired(tail) == 1
    got = (tmp_path / "slow.bin").read_bytes()
    stale = [
        o for o in range(0, len(new), 64 * KiB) if got[o : o + 64 * KiB] != new[o : o + 64 * KiB]
    ]
    assert not stale, f"old bytes at offsets {stale} of the new version"


# --- composite checksums whose part counts disagree ------------------------------------


def b64_crc32c_composite(data: bytes, part: int) -> str:
    kind = CRC_KINDS["crc32c"]
    return composite(
        "crc32c", [kind.compute(data[o : o + part]) for o in range(0, len(data), part)]
    )


@pytest.mark.slow
@pytest.mark.parametrize("part_size", [32 * MiB, 4 * MiB], ids=["one-get", "parts"])
def test_composite_checksums_that_disagree_on_the_part_count_are_one_clean_error(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path, part_size: int
) -> None:
    """The store says crc32c is the checksum of 2 upload parts and sha256 of 3: both
    cannot be true. A correct crc32c-composite (8 MiB parts, the first standard size)
    passes; the sha256 cannot be checked against that layout. That is no reason for a
    traceback: the file is pulled, and the sha256 reported unverifiable."""
    store, proxy = moto_store, moto_proxy
    bucket = store.new_bucket()
    data = os.urandom(9 * MiB)
    store.put(bucket, "m/w.bin", data)
    sha = DIGEST_KINDS["sha256"].encode(os.urandom(32))
    headers = {
        "x-amz-checksum-crc32c": b64_crc32c_composite(data, 8 * MiB),
        "x-amz-checksum-sha256": f"{sha}-3",
        "x-amz-checksum-type": "COMPOSITE",
    }
    proxy.add_rule(Rule(set_headers(headers), path="w.bin", times=None))
    env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    args = ["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", str(part_size), "--json"]
    done = run_cli(args, env)
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.bin").read_bytes() == data
    assert "crc32c-composite" in done.stdout and "unverifiable" in done.stdout
    # --verify strict refuses what it cannot check, as one line with exit 7.
    strict = run_cli([*args[:2], str(tmp_path / "strict"), *args[3:], "--verify", "strict"], env)
    assert "Traceback" not in strict.stderr
    assert strict.returncode == 7, strict.stderr
    assert strict.stderr.strip().splitlines()[-1].startswith("modelpull: error: "), strict.stderr
    assert not (tmp_path / "strict" / "w.bin").exists()


# --- a folder where a file must land ------------------------------------------------------


def test_a_folder_at_a_final_name_is_refused_before_any_byte_is_fetched(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path
) -> None:
    """The pull could only fail at the rename, once every byte of the file was in: it is
    refused at planning, as a too-long name or a symlinked folder is."""
    store, proxy = moto_store, moto_proxy
    bucket = store.new_bucket()
    store.put_tree(bucket, "m/", {"a.json": b"{}", "w.bin": os.urandom(3 * MiB)})
    (tmp_path / "w.bin").mkdir()
    (tmp_path / "w.bin" / "mine.txt").write_text("kept")
    env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
    done = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "1MiB"], env)
    assert done.returncode == 6, done.stderr
    assert "Traceback" not in done.stderr and "w.bin" in done.stderr
    assert [r.path for r in proxy.log if r.method == "GET" and "w.bin" in r.path] == []
    assert (tmp_path / "w.bin" / "mine.txt").read_text() == "kept"


# --- x-amz-mp-parts-count that lies ------------------------------------------------------


def test_a_part_count_no_upload_could_have_is_not_believed(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A 6 MiB object uploaded in 2 parts (a multipart ETag, nothing else to check it
    by): its layout is asked with ``HEAD ?partNumber=1``. A store that says 100,000 parts
    there, and answers every part number, must not be asked 100,000 times: no upload of
    6 MiB has that many parts (S3 allows 10,000 at most)."""
    store, proxy = moto_store, moto_proxy
    bucket = store.new_bucket()
    data = os.urandom(6 * MiB)
    upload_in_parts(store, bucket, "m/w.bin", data, 5 * MiB)
    numbered: dict[str, Any] = {"method": "HEAD", "query": "partNumber", "times": None}
    lie = {"x-amz-mp-parts-count": "100000", "Content-Length": str(5 * MiB)}
    proxy.add_rule(Rule(set_headers(lie), **numbered))
    proxy.add_rule(Rule(set_status(206), **numbered))
    result = modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=config(proxy, part_size=MiB, deadline=30),
        credentials=store.credentials,
    )
    asked = [r for r in proxy.log if r.method == "HEAD" and "partNumber" in r.query]
    assert len(asked) <= 10, f"{len(asked)} HEAD ?partNumber= requests"
    assert (tmp_path / "w.bin").read_bytes() == data
    assert result.files[0].status == "fetched"


# --- an ETag that is no MD5: SSE-KMS ----------------------------------------------------


def test_an_sse_kms_etag_is_not_taken_for_the_md5_of_the_bytes(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    """S3 says so itself: the ETag of an object encrypted with SSE-KMS (or SSE-C) is not
    the MD5 of its bytes, though it looks like one, and every HEAD and GET of it carries
    ``x-amz-server-side-encryption: aws:kms``. An object without additional checksums
    (any uploaded before 2025) then has nothing to be checked by but its size: it must
    not fail every pull as 'corrupt' after fetching it four times. (rclone, which
    ignores If-Match, stands for S3 here: the proxy gives the object an SSE-KMS ETag.)"""
    store = rclone_store
    bucket = store.new_bucket()
    data = os.urandom(3 * MiB)
    store.put(bucket, "m/w.bin", data)
    kms = {
        "ETag": '"0123456789abcdef0123456789abcdef"',
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:us-east-1:1:key/k",
    }
    with FaultProxy(store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers(kms), path="w.bin", times=None))
        env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        args = ["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "1MiB", "--json"]
        done = run_cli(args, env)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "w.bin").read_bytes() == data
        gets = [r for r in proxy.log if r.method == "GET" and "w.bin" in r.path]
        assert len(gets) == 3  # fetched once


def test_a_small_sse_kms_object_fetched_in_one_get_is_not_taken_for_corrupt(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    """The same for a file of one part named exactly (its HEAD says SSE-KMS), fetched in
    one GET. (A folder's small files are fetched without a HEAD: their GET's headers say
    it then, PartFile.learn; the proxy cannot change the listing's ETags to test it.)"""
    store = rclone_store
    bucket = store.new_bucket()
    data = os.urandom(100 * KiB)
    store.put(bucket, "m/config.json", data)
    kms = {"ETag": '"0123456789abcdef0123456789abcdef"', "x-amz-server-side-encryption": "aws:kms"}
    with FaultProxy(store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers(kms), path="config.json", times=None))
        env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        done = run_cli(["pull", f"s3://{bucket}/m/config.json", str(tmp_path)], env)
        assert done.returncode == 0, done.stderr
        assert "WARNING" not in done.stderr, done.stderr
        assert (tmp_path / "config.json").read_bytes() == data
        assert [r.method for r in proxy.log if "config.json" in r.path] == ["HEAD", "GET"]


# --- a hedged file of one GET -------------------------------------------------------------


@pytest.mark.slow
def test_a_hedged_file_of_one_get_still_checks_the_checksums_its_get_brings(
    moto_store: S3Store, moto_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A file of one part is fetched without a HEAD: its GET's headers are the only
    place its checksums come from. A slow one hedged (its request ended early, the tail
    fetched by another) must not lose them: crc64nvme is checked, not the ETag alone."""
    store, proxy = moto_store, moto_proxy
    bucket = store.new_bucket()
    client = store.client()
    data = os.urandom(MiB)
    client.put_object(Bucket=bucket, Key="m/slow.bin", Body=data, ChecksumAlgorithm="CRC64NVME")
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"m/fast-{i}.bin", Body=os.urandom(MiB))
    # The file's one GET (no Range) crawls; a hedge of its tail would not.
    proxy.add_rule(Rule(delay(seconds_per_chunk=0.05), method="GET", path="slow.bin", times=1))
    events: list[Event] = []
    result = modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=config(proxy, part_size=4 * MiB, io_chunk_size=64 * KiB, concurrency=4),
        credentials=store.credentials,
        observers=[events.append],
    )
    assert (tmp_path / "slow.bin").read_bytes() == data
    slow = next(f for f in result.files if f.path == "slow.bin")
    assert "crc64nvme" in slow.verified, slow.verified
    # Fetched whole by its one GET, or split: either way its checksums were checked.
    hedged = [e.path for e in events if isinstance(e, PartHedged)]
    assert hedged in ([], ["slow.bin"])


# --- a multipart ETag checked against a guessed layout -----------------------------------


def multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[o : o + part]).digest() for o in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@pytest.mark.slow
def test_damaged_bytes_checked_by_a_guessed_multipart_layout_never_reach_the_final_name(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    """An object uploaded in the AWS CLI's 8 MiB parts, whose store publishes only its
    multipart ETag and will not say the layout (no ``HEAD ?partNumber=``): the check
    guesses the standard part sizes, and the first guess is right (the control pull
    verifies 'multipart-etag'). One flipped byte then fails every guess, which was read
    as 'the layout is unknown' rather than 'the bytes are wrong': the damaged file was
    placed under its final name, exit 0, with a warning. Now the file is fetched again,
    and the clean second download fits the guess."""
    store = rclone_store
    bucket = store.new_bucket()
    data = os.urandom(20 * MiB)
    store.put(bucket, "m/w.bin", data)
    etag = {"ETag": f'"{multipart_etag(data, 8 * MiB)}"'}
    args = ["--part-size", "4MiB", "--json"]
    with FaultProxy(store.endpoint_url) as proxy:
        proxy.add_rule(Rule(set_headers(etag), path="w.bin", times=None))
        env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        control = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path / "a"), *args], env)
        assert control.returncode == 0, control.stderr
        assert '"multipart-etag"' in control.stdout, control.stdout  # the guess is right
        proxy.add_rule(Rule(flip_byte(12345), method="GET", path="w.bin", range="^bytes=0-"))
        done = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path / "b"), *args], env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b" / "w.bin").read_bytes() == data
    assert '"multipart-etag"' in done.stdout  # the second download fitted the guess
    assert "fetching it again, to tell damaged bytes" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("downloads_agree", [True, False])
def test_a_part_size_no_guess_knows_is_told_from_damage_by_a_second_download(
    rclone_store: S3Store, tmp_path: Path, downloads_agree: bool
) -> None:
    """7 MiB upload parts: the 8 MiB guess fits the size and the part count but not the
    bytes. Two downloads that agree are placed, reported unverifiable; downloads that
    differ every time (a byte flipped at another offset in each) fail with exit 7."""
    store = rclone_store
    bucket = store.new_bucket()
    data = os.urandom(20 * MiB)
    store.put(bucket, "m/w.bin", data)
    with FaultProxy(store.endpoint_url) as proxy:
        etag = {"ETag": f'"{multipart_etag(data, 7 * MiB)}"'}
        proxy.add_rule(Rule(set_headers(etag), path="w.bin", times=None))
        if not downloads_agree:
            for k in range(3):
                first = "^bytes=0-"
                proxy.add_rule(Rule(flip_byte(100 * (k + 1)), method="GET", range=first, skip=k))
        env = store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        done = run_cli(
            ["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "4MiB", "--json"], env
        )
    final = tmp_path / "w.bin"
    if downloads_agree:
        assert done.returncode == 0, done.stderr
        assert final.read_bytes() == data
        report = json.loads(done.stdout)
        assert report["files"][0]["unverifiable"] == "multipart-etag, part size unknown"
        assert report["bytes_downloaded"] == 2 * len(data)  # fetched twice, then trusted
    else:
        assert done.returncode == 7, done.stderr
        assert "3 downloads differed" in done.stderr
        assert not final.exists()
