"""Checksum kinds, combining parts, composite values and ordered hashing."""

from __future__ import annotations

import array
import base64
import hashlib
import itertools
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore import httpchecksum
from tos.utils import Crc64

from modelpull.checksums import (
    CRC_KINDS,
    DIGEST_KINDS,
    KINDS,
    CrcKind,
    composite,
    get_kind,
    split_composite,
    verify,
    verify_composite,
)
from modelpull.errors import IntegrityError, UsageError
from modelpull.hashing import CrcAccumulator, PartHasher, PrefixHasher, ReadInto

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # not in every environment; the seeded tests below cover the same
    given = None

CHECK = b"123456789"
DATA = random.Random(1).randbytes(100_003)


def crc(name: str) -> CrcKind:
    return CRC_KINDS[name]


# --- kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("crc64ecma", 0x995DC9BBDF1939FA),  # CRC-64/XZ
        ("crc64nvme", 0xAE8B14860A799888),
        ("crc32c", 0xE3069283),
        ("crc32", 0xCBF43926),
    ],
)
def test_check_values(name: str, check: int) -> None:
    kind = crc(name)
    assert kind.compute(CHECK) == check
    assert kind.update(0, CHECK) == check
    assert kind.update(kind.update(0, CHECK[:4]), CHECK[4:]) == check
    assert kind.compute(b"") == 0


@pytest.mark.parametrize("name", sorted(CRC_KINDS))
def test_buffers_of_any_kind_are_read_in_place(name: str) -> None:
    kind = crc(name)
    expected = kind.compute(DATA)
    assert kind.compute(bytearray(DATA)) == expected
    assert kind.compute(memoryview(DATA)) == expected
    assert kind.compute(memoryview(DATA)[10:500]) == kind.compute(DATA[10:500])
    words = array.array("I", DATA[:4000])
    assert kind.compute(memoryview(words)) == kind.compute(DATA[:4000])


BOTOCORE = {
    "crc32": httpchecksum.Crc32Checksum,
    "crc32c": httpchecksum.CrtCrc32cChecksum,
    "crc64nvme": httpchecksum.CrtCrc64NvmeChecksum,
    "sha256": httpchecksum.Sha256Checksum,
    "sha1": httpchecksum.Sha1Checksum,
}


@pytest.mark.parametrize("name", sorted(BOTOCORE))
@pytest.mark.parametrize("data", [b"", CHECK, DATA])
def test_encoding_matches_botocore(name: str, data: bytes) -> None:
    reference = BOTOCORE[name]()
    reference.update(data)
    published: str = reference.b64digest()
    kind = get_kind(name)
    value = kind.compute(data)
    assert kind.encode(value) == published  # type: ignore[arg-type]
    assert kind.decode(published) == value
    verify(name, published, value, path="f")


def test_crc64ecma_matches_the_tos_sdk() -> None:
    reference = Crc64()
    reference.update(DATA)
    kind = crc("crc64ecma")
    assert kind.compute(DATA) == reference.crc
    assert kind.encode(reference.crc) == str(reference.crc)
    assert kind.decode(f" {reference.crc}\n") == reference.crc
    a, b = DATA[:777], DATA[777:]
    assert reference.combine(kind.compute(a), kind.compute(b), len(b)) == reference.crc


def test_md5_is_the_hex_of_a_plain_etag() -> None:
    kind = DIGEST_KINDS["md5"]
    digest = hashlib.md5(DATA).digest()
    etag = f'"{digest.hex()}"'
    assert kind.decode(etag) == digest
    assert kind.decode(etag.upper()) == digest
    assert kind.encode(digest) == digest.hex()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("crc64ecma", "-1"),
        ("crc64ecma", "12a"),
        ("crc64ecma", str(1 << 64)),
        ("crc64ecma", ""),
        ("crc32c", "not base64!"),
        ("crc32c", base64.b64encode(b"12345").decode()),  # 5 bytes, not 4
        ("crc64nvme", base64.b64encode(b"1234").decode()),
        ("sha256", base64.b64encode(b"short").decode()),
        ("md5", "xyz"),
        ("md5", "ab" * 15),
    ],
)
def test_malformed_published_values(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=name):
        get_kind(name).decode(text)


def test_encode_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        crc("crc32c").encode(1 << 32)
    with pytest.raises(ValueError):
        crc("crc64ecma").encode(-1)
    with pytest.raises(ValueError):
        DIGEST_KINDS["sha256"].encode(b"short")


def test_unknown_kind() -> None:
    with pytest.raises(UsageError, match="known"):
        get_kind("xxhash")
    assert set(KINDS) == set(CRC_KINDS) | set(DIGEST_KINDS)


# --- combine ---------------------------------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def assert_combines(name: str, pieces: list[bytes]) -> None:
    kind = crc(name)
    whole = kind.compute(b"".join(pieces))
    total = 0
    for piece in pieces:
        total = kind.combine(total, kind.compute(piece), len(piece))
    assert total == whole


@pytest.mark.parametrize("name", sorted(CRC_KINDS))
def test_combine_equals_whole_for_random_splits(name: str) -> None:
    rng = random.Random(name)
    for _ in range(200):
        data = DATA[: rng.randrange(0, 5000)]
        cuts = [rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 6))]
        assert_combines(name, split_at(data, cuts))


@pytest.mark.parametrize("name", sorted(CRC_KINDS))
def test_combine_with_empty_pieces_and_huge_lengths(name: str) -> None:
    kind = crc(name)
    assert kind.combine(kind.compute(CHECK), 0, 0) == kind.compute(CHECK)
    assert kind.combine(0, kind.compute(CHECK), len(CHECK)) == kind.compute(CHECK)
    assert 0 <= kind.combine(12345, 678, 1 << 40) < 1 << kind.width  # a 1 TiB part
    with pytest.raises(ValueError):
        kind.combine(1, 2, -1)


if given is not None:

    @given(
        name=st.sampled_from(sorted(CRC_KINDS)),
        data=st.binary(max_size=3000),
        cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    )
    def test_combine_property(name: str, data: bytes, cuts: list[int]) -> None:
        assert_combines(name, split_at(data, [c % (len(data) + 1) for c in cuts]))


# --- the accumulator -------------------------------------------------------------------


def parts_of(size: int, rng: random.Random, max_part: int = 9000) -> list[tuple[int, int]]:
    parts, offset = [], 0
    while offset < size:
        length = min(size - offset, rng.randrange(1, max_part))
        parts.append((offset, length))
        offset += length
    return parts


def test_accumulator_out_of_order_from_threads() -> None:
    names = list(CRC_KINDS)
    parts = parts_of(len(DATA), random.Random(3))
    random.Random(4).shuffle(parts)
    acc = CrcAccumulator(names)

    def worker(mine: list[tuple[int, int]]) -> None:
        for offset, length in mine:
            piece = memoryview(DATA)[offset : offset + length]
            acc.add_part(offset, length, {n: CRC_KINDS[n].compute(piece) for n in names})

    threads = [threading.Thread(target=worker, args=(parts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert acc.finish(len(DATA)) == {n: CRC_KINDS[n].compute(DATA) for n in names}
    assert acc.kinds == tuple(names)


def test_empty_object() -> None:
    assert CrcAccumulator(["crc32c", "crc64ecma"]).finish(0) == {"crc32c": 0, "crc64ecma": 0}


def add(acc: CrcAccumulator, offset: int, length: int) -> None:
    acc.add_part(offset, length, {"crc32c": crc("crc32c").compute(DATA[offset : offset + length])})


@pytest.mark.parametrize(
    ("parts", "size", "message"),
    [
        ([(0, 10), (20, 10)], 30, "a gap at offset 10"),
        ([(10, 10)], 20, "a gap at offset 0"),
        ([(0, 10), (5, 10)], 15, "an overlap at offset 10"),
        ([(0, 10), (10, 10)], 30, r"cover \[0, 20\), not the object's \[0, 30\)"),
        ([(0, 10), (10, 10)], 15, r"cover \[0, 20\)"),
    ],
)
def test_tiling_errors(parts: list[tuple[int, int]], size: int, message: str) -> None:
    acc = CrcAccumulator(["crc32c"])
    for offset, length in parts:
        add(acc, offset, length)
    with pytest.raises(ValueError, match=message):
        acc.finish(size)


def test_bad_parts_are_refused_when_added() -> None:
    acc = CrcAccumulator(["crc32c", "crc32"])
    with pytest.raises(ValueError, match="lacks its crc32 value"):
        acc.add_part(0, 10, {"crc32c": 1})
    acc.add_part(0, 10, {"crc32c": 1, "crc32": 2})
    with pytest.raises(ValueError, match="twice"):
        acc.add_part(0, 10, {"crc32c": 1, "crc32": 2})
    with pytest.raises(ValueError, match="bad part"):
        acc.add_part(10, 0, {"crc32c": 1, "crc32": 2})
    with pytest.raises(ValueError, match="bad part"):
        acc.add_part(-1, 5, {"crc32c": 1, "crc32": 2})
    with pytest.raises(UsageError, match="cannot be combined"):
        CrcAccumulator(["sha256"])


# --- composite values ------------------------------------------------------------------


def test_split_composite() -> None:
    assert split_composite("AAAAAA==-3") == ("AAAAAA==", 3)
    assert split_composite(' "abc-12" ') == ("abc", 12)
    assert split_composite("AAAAAA==") == ("AAAAAA==", None)
    for bad in ("abc-", "abc-0", "-3", "abc-x1"):
        with pytest.raises(ValueError, match="malformed"):
            split_composite(bad)


def test_composite_crc_from_parts_aligned_to_the_upload() -> None:
    # Upload parts of 40,000, 40,000 and 20,003 bytes.
    # The engine's parts: the first upload part is in two pieces, the others whole.
    ours = [(0, 15_000), (15_000, 25_000), (40_000, 40_000), (80_000, len(DATA) - 80_000)]
    pieces = [
        [(0, 15_000, False)],
        [(0, 25_000, False)],
        [(1, 40_000, True)],
        [(2, len(DATA) - 80_000, True)],
    ]
    kind = crc("crc32c")
    per_part = [0, 0, 0]
    for (offset, length), laid in zip(ours, pieces, strict=True):
        hasher = PartHasher([kind], [kind], laid)
        hasher.update(memoryview(DATA[offset : offset + length]))
        values = hasher.values()
        for index, seg in values.segments.items():
            per_part[index] = int(seg["crc32c"])
        for index, (piece_length, crcs) in values.pieces.items():
            per_part[index] = kind.combine(per_part[index], crcs["crc32c"], piece_length)
    edges = [0, 40_000, 80_000, len(DATA)]
    assert per_part == [crc("crc32c").compute(DATA[a:b]) for a, b in itertools.pairwise(edges)]

    # What S3 publishes: CRC32C over the parts' big-endian CRC32Cs, then "-N".
    raw = b"".join(v.to_bytes(4, "big") for v in per_part)
    reference = httpchecksum.CrtCrc32cChecksum()
    reference.update(raw)
    expected = f"{reference.b64digest()}-3"
    assert composite("crc32c", per_part) == expected
    verify_composite("crc32c", expected, per_part, path="model.bin")
    with pytest.raises(IntegrityError):
        verify_composite("crc32c", expected, [per_part[0], per_part[2], per_part[1]], path="m")
    with pytest.raises(ValueError, match="has 3 parts, not 2"):
        verify_composite("crc32c", expected, per_part[:2], path="m")
    with pytest.raises(ValueError, match="composite"):
        verify("crc32c", expected, 0, path="m")
    # moto publishes composite values without their "-N".
    verify_composite("crc32c", reference.b64digest(), per_part, path="m")


def test_composite_digest_like_a_multipart_etag() -> None:
    parts = [DATA[:50_000], DATA[50_000:]]
    digests = [hashlib.md5(p).digest() for p in parts]
    etag = hashlib.md5(b"".join(digests)).hexdigest() + "-2"
    assert composite("md5", digests) == etag
    verify_composite("md5", f'"{etag}"', digests, path="m")
    with pytest.raises(TypeError):
        composite("md5", [1, 2])
    with pytest.raises(TypeError):
        composite("crc32c", [b"1234"])
    with pytest.raises(ValueError, match="at least one"):
        composite("crc32c", [])


# --- verify ----------------------------------------------------------------------------


def test_verify_mismatch_raises_integrity_error() -> None:
    kind = crc("crc64ecma")
    good = kind.compute(DATA)
    verify("crc64ecma", str(good), good, path="w.safetensors")
    with pytest.raises(IntegrityError) as info:
        verify("crc64ecma", str(good), good ^ 1, path="w.safetensors")
    error = info.value
    assert (error.path, error.algorithm, error.expected) == (
        "w.safetensors",
        "crc64ecma",
        str(good),
    )
    assert error.actual == str(good ^ 1)
    assert "w.safetensors" in str(error)
    with pytest.raises(TypeError):
        verify("crc64ecma", str(good), b"bytes", path="x")
    sha = DIGEST_KINDS["sha256"]
    with pytest.raises(IntegrityError):
        verify("sha256", sha.encode(sha.compute(DATA)), sha.compute(b"other"), path="x")


# --- ordered hashing -------------------------------------------------------------------


def reader(data: bytes, log: list[tuple[int, int]] | None = None) -> ReadInto:
    def read_into(offset: int, buffer: memoryview) -> int:
        chunk = data[offset : offset + len(buffer)]
        buffer[: len(chunk)] = chunk
        if log is not None:
            log.append((offset, len(chunk)))
        return len(chunk)

    return read_into


def expected_digests(data: bytes) -> dict[str, bytes]:
    return {
        "sha256": hashlib.sha256(data).digest(),
        "md5": hashlib.md5(data).digest(),
    }


def test_prefix_hasher_hashes_each_prefix_once_as_it_grows() -> None:
    log: list[tuple[int, int]] = []
    read = reader(DATA, log)
    hasher = PrefixHasher(["sha256", "md5"], len(DATA), buffer_size=16_384)
    hasher.mark_done(60_000, 40_003)
    assert hasher.hash_ready(read) == 0  # nothing contiguous from 0 yet
    hasher.mark_done(0, 30_000)
    assert hasher.hash_ready(read) == 30_000
    assert (hasher.ready, hasher.hashed) == (30_000, 30_000)
    hasher.mark_done(30_000, 30_000)
    assert hasher.ready == len(DATA)
    assert hasher.finish(read) == expected_digests(DATA)
    assert sum(length for _, length in log) == len(DATA)  # every byte read once
    assert max(length for _, length in log) <= 16_384


def test_prefix_hasher_with_workers_in_parallel() -> None:
    parts = parts_of(len(DATA), random.Random(5), max_part=3000)
    random.Random(6).shuffle(parts)
    read = reader(DATA)
    hasher = PrefixHasher(["sha256", "md5", "sha1"], len(DATA), buffer_size=4096)

    def worker(mine: list[tuple[int, int]]) -> None:
        for offset, length in mine:
            hasher.mark_done(offset, length)
            hasher.hash_ready(read)  # whoever gets the lock hashes; the others go on

    threads = [threading.Thread(target=worker, args=(parts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    digests = hasher.finish(read)
    assert digests == {**expected_digests(DATA), "sha1": hashlib.sha1(DATA).digest()}
    sha = DIGEST_KINDS["sha256"]
    verify("sha256", sha.encode(hashlib.sha256(DATA).digest()), digests["sha256"], path="f")


def test_prefix_hasher_errors() -> None:
    hasher = PrefixHasher(["sha256"], 100)
    hasher.mark_done(0, 10)
    hasher.mark_done(50, 10)
    for offset, length in [(5, 10), (45, 10), (55, 1), (90, 20), (-1, 1), (70, 0)]:
        with pytest.raises(ValueError):
            hasher.mark_done(offset, length)
    with pytest.raises(ValueError, match=r"\[0, 10\) is done of 100"):
        hasher.finish(reader(bytes(100)))
    with pytest.raises(UsageError):
        PrefixHasher(["crc32c"], 10)

    short = PrefixHasher(["md5"], 10)
    short.mark_done(0, 10)
    with pytest.raises(OSError, match="short read"):
        short.finish(reader(b"12345"))


def test_prefix_hasher_empty_file() -> None:
    empty: Callable[[int, memoryview], int] = reader(b"")
    assert PrefixHasher(["md5"], 0).finish(empty) == {"md5": hashlib.md5(b"").digest()}


def test_prefix_hasher_reads_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = PrefixHasher(["sha256"], len(DATA))
        hasher.mark_done(0, len(DATA))
        digests = hasher.finish(lambda offset, buf: os.preadv(fd, [buf], offset))
    finally:
        os.close(fd)
    assert digests["sha256"] == hashlib.sha256(DATA).digest()
