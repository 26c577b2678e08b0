"""Whole-file digests hashed from the workers' buffers where they can be, read back
where they cannot: the same digest whichever path each byte takes."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from modelpull.config import PullConfig
from modelpull.errors import IntegrityError
from modelpull.files import split_parts
from modelpull.hashing import PrefixHasher, ReadInto
from modelpull.integrity import Verifier
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.partfile import PartFile
from modelpull.state import StateDir

DATA = random.Random(11).randbytes(300_007)
KiB = 1024


def file_reader(fd: int, log: list[tuple[int, int]] | None = None) -> ReadInto:
    def read_into(offset: int, view: memoryview) -> int:
        got = os.preadv(fd, [view], offset)
        if log is not None:
            log.append((offset, got))
        return got

    return read_into


def write_piece(fd: int, hasher: PrefixHasher, data: bytes, offset: int, length: int) -> None:
    """What a worker does with each piece: write it, then report it."""
    view = memoryview(bytearray(data[offset : offset + length]))
    os.pwrite(fd, view, offset)
    hasher.feed(offset, view)
    view[:] = bytes(length)  # the worker's buffer is reused: the hasher kept no reference


def pieces(start: int, end: int, size: int) -> list[tuple[int, int]]:
    return [(o, min(size, end - o)) for o in range(start, end, size)]


@pytest.fixture
def fd(tmp_path: Path) -> int:
    handle = os.open(tmp_path / "temp", os.O_RDWR | os.O_CREAT)
    os.ftruncate(handle, len(DATA))
    return handle


def test_pieces_in_order_are_hashed_from_memory_and_never_read_back(fd: int) -> None:
    log: list[tuple[int, int]] = []
    hasher = PrefixHasher(["md5", "sha256"], len(DATA))
    for offset, length in pieces(0, len(DATA), 16 * KiB):
        write_piece(fd, hasher, DATA, offset, length)
        assert hasher.hashed == offset + length  # hashed as it was fed
    digests = hasher.finish(file_reader(fd, log))
    assert digests == {"md5": hashlib.md5(DATA).digest(), "sha256": hashlib.sha256(DATA).digest()}
    assert (hasher.read_back, log) == (0, [])


def test_parts_ahead_are_read_back_once_and_the_front_part_streams(fd: int) -> None:
    """Part 0 streams while parts 1 and 2 land ahead: they are read back when part 0
    completes, and part 0's later pieces (and part 3's) come from memory."""
    log: list[tuple[int, int]] = []
    read = file_reader(fd, log)
    hasher = PrefixHasher(["md5"], len(DATA), buffer_size=8 * KiB)
    bounds = split_parts(len(DATA), 80_000)  # 4 parts
    front = pieces(*bounds[0], 10 * KiB)
    write_piece(fd, hasher, DATA, *front[0])
    for start, end in bounds[1:3]:
        for offset, length in pieces(start, end, 10 * KiB):
            write_piece(fd, hasher, DATA, offset, length)
        assert hasher.hash_ready(read) == 0  # nothing contiguous beyond part 0's piece
    for offset, length in front[1:]:
        write_piece(fd, hasher, DATA, offset, length)
    assert hasher.hashed == bounds[0][1] and hasher.read_back == 0
    assert hasher.hash_ready(read) == bounds[2][1] - bounds[1][0]  # part 0 done: 1 and 2
    for offset, length in pieces(*bounds[3], 10 * KiB):
        write_piece(fd, hasher, DATA, offset, length)
    assert hasher.finish(read) == {"md5": hashlib.md5(DATA).digest()}
    assert hasher.read_back == bounds[2][1] - bounds[1][0]
    assert sum(n for _, n in log) == hasher.read_back  # each byte read back at most once
    assert max(n for _, n in log) <= 8 * KiB


@pytest.mark.parametrize("seed", range(4))
def test_inline_and_read_back_mixed_under_threads(fd: int, seed: int) -> None:
    """Workers write parts piece by piece, in order within a part, parts in any order,
    feeding each piece and reading back on each part's end, as the engine does."""
    rng = random.Random(seed)
    read = file_reader(fd)
    hasher = PrefixHasher(["md5", "sha1"], len(DATA), buffer_size=rng.choice([4, 32]) * KiB)
    parts = split_parts(len(DATA), rng.choice([7_000, 20_000, 64 * KiB]))
    queue = list(parts)
    rng.shuffle(queue)
    lock = threading.Lock()
    piece_size = rng.choice([1_000, 4 * KiB, 9_999])

    def worker(pause: float) -> None:
        while True:
            with lock:
                if not queue:
                    return
                start, end = queue.pop()
            for offset, length in pieces(start, end, piece_size):
                write_piece(fd, hasher, DATA, offset, length)
                time.sleep(pause)
            hasher.hash_ready(read)

    threads = [threading.Thread(target=worker, args=(rng.random() / 2000,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert hasher.finish(read) == {
        "md5": hashlib.md5(DATA).digest(),
        "sha1": hashlib.sha1(DATA).digest(),
    }
    assert hasher.hashed == len(DATA) and hasher.read_back <= len(DATA)


def test_a_piece_reported_twice_is_refused(fd: int) -> None:
    hasher = PrefixHasher(["md5"], len(DATA))
    write_piece(fd, hasher, DATA, 0, 1000)
    with pytest.raises(ValueError, match="overlaps"):
        hasher.feed(500, memoryview(DATA[500:1500]))
    with pytest.raises(ValueError, match="bad part"):
        hasher.feed(len(DATA) - 10, memoryview(DATA[:20]))


def test_adjacent_pieces_merge_while_waiting_for_the_prefix() -> None:
    hasher = PrefixHasher(["md5"], 100)
    for offset in (90, 50, 60, 80, 70):  # five pieces past a gap at [0, 50)
        hasher.mark_done(offset, 10)
    assert hasher.ready == 0
    hasher.mark_done(0, 50)
    assert hasher.ready == 100
    hasher.mark_all_done()

    def zeros(offset: int, view: memoryview) -> int:
        return len(view)  # a fresh buffer holds zeros

    assert hasher.finish(zeros) == {"md5": hashlib.md5(bytes(100)).digest()}


# -- through PartFile: what the engine and the cluster exchange use ----------------------


def part_file(tmp_path: Path, data: bytes, **config: object) -> PartFile:
    """A file of the pull whose only checksum is the plain-MD5 ETag of ``data``."""
    obj = ObjectInfo(key="m/w.bin", size=len(data), etag=hashlib.md5(data).hexdigest())
    state = StateDir(tmp_path / "dest")
    state.create()
    settings = PullConfig(part_size=5 << 20, io_chunk_size=4096, verify="strict", **config)
    pf = PartFile(state, RemoteFile(obj=obj, path="w.bin"), settings)
    assert pf.acquire(timeout=0)
    pf.open()
    return pf


def fetch(pf: PartFile, data: bytes, start: int, end: int, chunk: int = 16 * KiB) -> None:
    """What the fetcher does: write each piece of part 0, as it arrives."""
    for offset, length in pieces(start, end, chunk):
        pf.write(memoryview(data[offset : offset + length]), offset)


def finish_part(pf: PartFile, data: bytes) -> None:
    """Part 0 is in: read back what the digests miss, record it with its values."""
    pf.written(0)
    hasher = pf.hasher(0)
    hasher.update(memoryview(data))
    pf.record(0, hasher.values(), save=False)


def test_a_stream_started_over_is_hashed_once_as_its_final_bytes(tmp_path: Path) -> None:
    """A whole-object stream breaks off and starts over (a store that ignores Range):
    the first attempt's bytes, hashed inline, do not count; the final bytes do."""
    pf = part_file(tmp_path, DATA)
    try:
        wrong = bytes(len(DATA))
        fetch(pf, wrong, 0, 100_000)  # an attempt whose bytes will not stay
        first = pf.verifier.in_order
        assert first is not None and first.hashed == 100_000  # they were hashed inline
        pf.truncate(0)  # what the fetcher does before starting over
        fetch(pf, DATA, 0, len(DATA))
        finish_part(pf, DATA)
        again = pf.verifier.in_order
        assert again is not None and again is not first
        assert (again.hashed, again.read_back) == (len(DATA), 0)
        assert "md5" in pf.verify()
    finally:
        pf.close()
        pf.release()


def test_bytes_written_again_without_a_reset_start_the_digests_over(tmp_path: Path) -> None:
    """Should a caller ever write bytes twice, what the digests hold of the first write
    is dropped, and the final bytes are read back: never a digest of bytes not on disk."""
    pf = part_file(tmp_path, DATA)
    try:
        fetch(pf, bytes(len(DATA)), 0, 50_000)  # hashed inline, then overwritten
        first = pf.verifier.in_order
        assert first is not None and first.hashed == 50_000
        fetch(pf, DATA, 0, len(DATA))
        finish_part(pf, DATA)
        again = pf.verifier.in_order
        assert again is not None and again is not first
        assert "md5" in pf.verify()
        assert again.read_back == len(DATA)  # all of it from disk, as it is now
    finally:
        pf.close()
        pf.release()


def test_wrong_bytes_fed_inline_fail_verification(tmp_path: Path) -> None:
    pf = part_file(tmp_path, DATA)
    try:
        bad = bytearray(DATA)
        bad[123_456] ^= 0xFF
        fetch(pf, bytes(bad), 0, len(DATA))
        finish_part(pf, bytes(bad))
        hashed = pf.verifier.in_order
        assert hashed is not None and (hashed.hashed, hashed.read_back) == (len(DATA), 0)
        with pytest.raises(IntegrityError, match="md5"):
            pf.verify()
    finally:
        pf.close()
        pf.release()


def test_checking_a_file_in_dest_reads_it_once(tmp_path: Path) -> None:
    """``modelpull verify`` and adoption: the CRC pass in file order feeds the digests,
    so a file with an MD5 or SHA is not read a second time."""
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)
    obj = ObjectInfo(key="w.bin", size=len(DATA), etag=hashlib.md5(DATA).hexdigest())
    verifier = Verifier("w.bin", obj, "strict")
    verifier.split(64 * KiB)  # 5 parts
    handle = os.open(path, os.O_RDONLY)
    try:
        verified, _ = verifier.check_file(handle)
        digests = verifier.in_order
        assert digests is not None and (digests.hashed, digests.read_back) == (len(DATA), 0)
        assert "md5" in verified
        path.write_bytes(DATA[:-1] + b"!")
        with pytest.raises(IntegrityError, match="md5"):
            Verifier("w.bin", obj, "strict").check_file(handle)
    finally:
        os.close(handle)
